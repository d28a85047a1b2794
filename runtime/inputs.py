"""Turn what the user typed (files, folders, globs) into a sorted list of image paths.

Paths stay `str` as the OS gave them (on POSIX, undecodable bytes survive as
surrogate escapes), so a file with a non-UTF-8 name can still be opened and
reported.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from capgen.runtime.preprocess import is_image_path

_GLOB_CHARS = frozenset("*?[")


def _folder_images(folder: str) -> list[str]:
    """The images directly inside a folder (not recursive), sorted by name."""
    entries = sorted(os.listdir(folder))
    return [
        os.path.join(folder, name)
        for name in entries
        if is_image_path(Path(name)) and os.path.isfile(os.path.join(folder, name))
    ]


def expand_inputs(arguments: list[str]) -> tuple[list[str], list[str]]:
    """(images, folders without images): folders become their images, globs their sorted matches.

    A missing path or a glob with no match is kept as is, so the caller reports
    it as that input's failure instead of silently captioning fewer images;
    folders with no image in them are returned apart for the same reason.
    """
    expanded: list[str] = []
    empty_folders: list[str] = []
    for argument in arguments:
        if os.path.isdir(argument):
            images = _folder_images(argument)
            expanded.extend(images)
            if not images:
                empty_folders.append(argument)
        elif not os.path.exists(argument) and _GLOB_CHARS & set(argument):
            matches = sorted(m for m in glob.glob(argument) if os.path.isfile(m))
            expanded.extend(matches or [argument])
        else:
            expanded.append(argument)
    return expanded, empty_folders

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


def _folder_images(folder: str) -> list[str] | str:
    """The images directly inside a folder (not recursive), sorted by name; or why it cannot be read."""
    try:
        entries = sorted(os.listdir(folder))
    except OSError as exc:  # e.g. a folder without read permission
        return f"cannot list this folder ({exc.strerror or exc})"
    return [
        os.path.join(folder, name)
        for name in entries
        if is_image_path(Path(name)) and os.path.isfile(os.path.join(folder, name))
    ]


def expand_inputs(arguments: list[str]) -> tuple[list[str], dict[str, str]]:
    """(images, {folder: why it gave no images}): folders become their images, globs their sorted matches.

    A missing path or a glob with no match is kept as is, so the caller reports
    it as that input's failure instead of silently captioning fewer images;
    folders that give no image (empty or unreadable) are returned apart for the same reason.
    """
    expanded: list[str] = []
    empty_folders: dict[str, str] = {}
    for argument in arguments:
        if os.path.isdir(argument):
            images = _folder_images(argument)
            if isinstance(images, str):
                empty_folders[argument] = images
                continue
            expanded.extend(images)
            if not images:
                empty_folders[argument] = "no images in this folder (not searched recursively)"
        elif not os.path.exists(argument) and _GLOB_CHARS & set(argument):
            matches = sorted(m for m in glob.glob(argument) if os.path.isfile(m))
            expanded.extend(matches or [argument])
        else:
            expanded.append(argument)
    return expanded, empty_folders

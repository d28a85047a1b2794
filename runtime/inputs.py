"""Turn what the user typed (files, folders, globs) into a sorted list of image paths.

Paths stay `str` as the OS gave them (on POSIX, undecodable bytes survive as
surrogate escapes), so a file with a non-UTF-8 name can still be opened and
reported.
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

from capgen.runtime.errors import InputError
from capgen.runtime.preprocess import is_image_path

_GLOB_CHARS = frozenset("*?[")
# `https://…`, `s3://…`, `gs://…`: a scheme, then `://`. Not a local path unless one exists by that name.
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def check_local(arguments: list[str]) -> None:
    """Refuse a URL argument in words: capgen opens local files, and "no such file" would mislead."""
    for argument in arguments:
        if _URL.match(argument) and not os.path.exists(argument):
            raise InputError(
                f"{argument}: capgen reads only local files, not URLs; download it first "
                "(e.g. curl -O URL) and caption the file"
            )


def _is_image_file(folder: str, name: str) -> bool:
    return is_image_path(Path(name)) and os.path.isfile(os.path.join(folder, name))


def _folder_images(folder: str) -> list[str] | str:
    """The images directly inside a folder (not recursive), sorted by name; or why it cannot be read."""
    try:
        entries = sorted(os.listdir(folder))
    except OSError as exc:  # e.g. a folder without read permission
        return f"cannot list this folder ({exc.strerror or exc})"
    return [os.path.join(folder, name) for name in entries if _is_image_file(folder, name)]


def _tree_images(folder: str, unreadable: dict[str, str]) -> list[str] | str:
    """The images in a folder and every subfolder, sorted by path; or why the folder cannot be read.

    Links to folders are not followed (a link to a parent would never end);
    a subfolder that cannot be listed is added to `unreadable`, so its images
    are reported missing instead of silently skipped.
    """
    problems: dict[str, str] = {}

    def remember(exc: OSError) -> None:
        problems[str(exc.filename)] = f"cannot list this folder ({exc.strerror or exc})"

    images = [
        os.path.join(root, name)
        for root, _, names in os.walk(folder, onerror=remember)
        for name in names
        if _is_image_file(root, name)
    ]
    if folder in problems:
        return problems.pop(folder)
    unreadable.update(problems)
    return sorted(images)


def expand_inputs(
    arguments: list[str], recursive: bool = False
) -> tuple[list[str], dict[str, str]]:
    """(images, {folder: why it gave no images}): folders become their images, globs their sorted matches.

    A missing path or a glob with no match is kept as is, so the caller reports
    it as that input's failure instead of silently captioning fewer images;
    folders that give no image (empty or unreadable) are returned apart for the same reason.
    `recursive` also takes the images in every subfolder of a folder.
    """
    expanded: list[str] = []
    empty_folders: dict[str, str] = {}
    for argument in arguments:
        if os.path.isdir(argument):
            images = (
                _tree_images(argument, empty_folders) if recursive else _folder_images(argument)
            )
            if isinstance(images, str):
                empty_folders[argument] = images
                continue
            expanded.extend(images)
            if not images:
                empty_folders[argument] = (
                    "no images in this folder or its subfolders"
                    if recursive
                    else "no images in this folder (not searched recursively)"
                )
        elif not os.path.exists(argument) and _GLOB_CHARS & set(argument):
            matches = sorted(m for m in glob.glob(argument) if os.path.isfile(m))
            expanded.extend(matches or [argument])
        else:
            expanded.append(argument)
    return expanded, empty_folders

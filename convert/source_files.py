"""Checks every user-given source file gets before a parser sees it.

A repository that keeps its model in Git LFS, cloned without LFS, leaves a
133-byte text file named `model_9.h5`; h5py or pickle would report something
cryptic about it. Recognising the pointer first lets capgen say what happened
and how to fix it.
"""

from __future__ import annotations

from pathlib import Path

from capgen.runtime.errors import CapgenError, GitLfsPointerError, InputError
from capgen.runtime.git_lfs import POINTER_PREFIX, is_pointer

LFS_FIX = "fetch the real file with `git lfs install && git lfs pull` in that repository"


def check_source_file(
    path: Path,
    what: str,
    empty_error: type[CapgenError] = InputError,
    max_bytes: int | None = None,
) -> Path:
    """Fail with one clear line unless `path` is a non-empty regular file that is not an LFS pointer.

    `empty_error` lets each caller keep its own error family (a 0-byte tokenizer
    is a TokenizerError, a 0-byte model a ModelError); so does a file larger
    than `max_bytes`, which is refused before it is read into memory.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} not found: {path}")
    if not path.is_file():
        raise InputError(f"{what} is not a file: {path}")
    if max_bytes is not None and path.stat().st_size > max_bytes:
        raise empty_error(
            f"{what} {path} is {path.stat().st_size:,} bytes, more than the {max_bytes:,} "
            f"any real {what} needs; refusing to read it"
        )
    try:
        with path.open("rb") as handle:
            head = handle.read(len(POINTER_PREFIX))
    except OSError as error:
        raise InputError(f"cannot read {what} {path}: {error.strerror or error}") from error
    if not head:
        raise empty_error(f"{what} is empty (0 bytes): {path}")
    if is_pointer(head):
        raise GitLfsPointerError(
            f"{what} {path} is a Git LFS pointer, not the file itself; {LFS_FIX}"
        )
    return path

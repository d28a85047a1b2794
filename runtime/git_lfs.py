"""The Git LFS pointer prefix, defined once.

A repository that keeps models in Git LFS, cloned without LFS, leaves small
text files ("version https://git-lfs.github.com/spec/v1 …") where the model
files should be; capgen recognises them by this prefix and says how to fix it.
The prefix stops before the host so pointers written by older LFS versions
are recognised too.
"""

from __future__ import annotations

POINTER_PREFIX = b"version https://git-lfs"


def is_pointer(head: bytes) -> bool:
    """Whether a file starting with `head` is a Git LFS pointer."""
    return head.startswith(POINTER_PREFIX)

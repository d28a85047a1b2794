"""The one exception hierarchy of capgen.

Every problem a user can cause (a bad image, a broken model folder, a hostile
pickle, a missing conversion stack) is raised as a subclass of `CapgenError`,
so callers catch one type and the CLI can map each family to a one-line
message and a documented exit code instead of a traceback.
"""

from __future__ import annotations


class CapgenError(Exception):
    """Base class: a problem with something the user gave capgen."""

    exit_code: int = 1


class InputError(CapgenError):
    """A file or argument the user passed cannot be used (missing, unreadable, wrong kind)."""

    exit_code = 2


class ImageError(InputError):
    """An image cannot be decoded or is unsafe to decode."""

    exit_code = 5


class ImageTooLargeError(ImageError):
    """The image declares more pixels than capgen agrees to decode (decompression bomb)."""


class ModelError(CapgenError):
    """A model file or model folder is missing, corrupt, or not something capgen can run."""

    exit_code = 3


class GitLfsPointerError(ModelError):
    """A file is a Git LFS pointer, not the content it stands for."""


class ModelIntegrityError(ModelError):
    """A model folder's file is missing or does not match the manifest's size or sha256."""


class UnsupportedModelError(ModelError):
    """The model is readable but outside the tutorial family capgen converts."""


class TokenizerError(CapgenError):
    """A tokenizer file cannot be read safely or does not fit the model."""

    exit_code = 4


class UnsafePickleError(TokenizerError):
    """A pickle asked to build something other than a Keras Tokenizer's plain state."""


class ConversionError(CapgenError):
    """The conversion stack is missing or a conversion step failed."""

    exit_code = 6


__all__ = [
    "CapgenError",
    "ConversionError",
    "GitLfsPointerError",
    "ImageError",
    "ImageTooLargeError",
    "InputError",
    "ModelError",
    "ModelIntegrityError",
    "TokenizerError",
    "UnsafePickleError",
    "UnsupportedModelError",
]

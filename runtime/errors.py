"""The one exception hierarchy of capgen.

Every problem a user can cause (a bad image, a broken model folder, a hostile
pickle, a missing conversion stack) is raised as a subclass of `CapgenError`,
so callers catch one type. Each family carries a `category` (`ErrorCategory`):
what kind of problem it is, in the library's own terms. The library has no
exit codes; the command line maps categories to its documented exit codes
(capgen.cli_support.exit_codes), the HTTP service to its statuses.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar


class ErrorCategory(StrEnum):
    """What kind of problem an error is; each front end (CLI, service) decides how to show it."""

    FAILED = "failed"  # a problem with no more precise family
    USAGE = "usage"  # a file or argument the caller gave cannot be used
    IMAGE = "image"  # an image cannot be decoded or is too large
    MODEL = "model"  # a model folder or model file is missing, corrupt or unsupported
    TOKENIZER = "tokenizer"  # a tokenizer is unsafe, unreadable or does not fit the model
    CONVERSION = "conversion"  # the conversion stack is missing or a conversion step failed


class CapgenError(Exception):
    """Base class: a problem with something the user gave capgen."""

    category: ClassVar[ErrorCategory] = ErrorCategory.FAILED


class InputError(CapgenError):
    """A file or argument the user passed cannot be used (missing, unreadable, wrong kind)."""

    category = ErrorCategory.USAGE


class ImageError(InputError):
    """An image cannot be decoded or is unsafe to decode."""

    category = ErrorCategory.IMAGE


class ImageTooLargeError(ImageError):
    """The image declares more pixels than capgen agrees to decode (decompression bomb)."""


class ModelError(CapgenError):
    """A model file or model folder is missing, corrupt, or not something capgen can run."""

    category = ErrorCategory.MODEL


class GitLfsPointerError(ModelError):
    """A file is a Git LFS pointer, not the content it stands for."""


class ModelIntegrityError(ModelError):
    """A model folder's file is missing or does not match the manifest's size or sha256."""


class UnsupportedModelError(ModelError):
    """The model is readable but outside the tutorial family capgen converts."""


class TokenizerError(CapgenError):
    """A tokenizer file cannot be read safely or does not fit the model."""

    category = ErrorCategory.TOKENIZER


class UnsafePickleError(TokenizerError):
    """A pickle asked to build something other than a Keras Tokenizer's plain state."""


class ConversionError(CapgenError):
    """The conversion stack is missing or a conversion step failed."""

    category = ErrorCategory.CONVERSION


__all__ = [
    "CapgenError",
    "ConversionError",
    "ErrorCategory",
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

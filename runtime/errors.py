"""The one exception hierarchy of capgen.

Every problem a user can cause (a bad image, a broken model folder, a hostile
pickle, a missing conversion stack) is raised as a subclass of `CapgenError`,
so callers catch one type and the CLI can map each family to a one-line
message and a documented exit code instead of a traceback.

`ExitCode` is the one table of the process's exit codes: each error family
takes its code from it, the CLI exits with its members, and a test checks
README.md's table against it row by row.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Every exit status of `capgen`, with the meaning README.md's table gives it."""

    meaning: str

    def __new__(cls, code: int, meaning: str) -> ExitCode:
        member = int.__new__(cls, code)
        member._value_ = code
        member.meaning = meaning
        return member

    OK = 0, "every image captioned / command succeeded"
    SOME_FAILED = (
        1,
        "some images of several failed; each is reported as `capgen: <path>: <reason>` "
        "and the rest were captioned",
    )
    USAGE = (
        2,
        "usage or input problem (missing path, bad option, existing output folder, "
        "an --output that is not capgen's); also one image given alone that is missing or unreadable",
    )
    MODEL = (
        3,
        "model problem: missing/corrupt folder, checksum mismatch, a Git LFS pointer "
        "(model or tokenizer), unsupported layer (a Lambda or custom layer in a Keras file "
        "included), infinite or NaN weights, unknown manifest version or field value",
    )
    TOKENIZER = (
        4,
        "tokenizer problem: unsafe or unreadable pickle, vocabulary that does not fit the model",
    )
    IMAGE = (
        5,
        "an image could not be decoded or is too large (pixels, a side, or bytes): the API, "
        "and one image file given alone",
    )
    CONVERSION = 6, "the conversion stack is missing or a conversion step failed"
    INTERRUPTED = 130, "interrupted (Ctrl-C); every caption finished so far is already written"
    BROKEN_PIPE = 141, "stdout closed early (e.g. piped into `head`)"


class CapgenError(Exception):
    """Base class: a problem with something the user gave capgen."""

    exit_code: int = ExitCode.SOME_FAILED


class InputError(CapgenError):
    """A file or argument the user passed cannot be used (missing, unreadable, wrong kind)."""

    exit_code = ExitCode.USAGE


class ImageError(InputError):
    """An image cannot be decoded or is unsafe to decode."""

    exit_code = ExitCode.IMAGE


class ImageTooLargeError(ImageError):
    """The image declares more pixels than capgen agrees to decode (decompression bomb)."""


class ModelError(CapgenError):
    """A model file or model folder is missing, corrupt, or not something capgen can run."""

    exit_code = ExitCode.MODEL


class GitLfsPointerError(ModelError):
    """A file is a Git LFS pointer, not the content it stands for."""


class ModelIntegrityError(ModelError):
    """A model folder's file is missing or does not match the manifest's size or sha256."""


class UnsupportedModelError(ModelError):
    """The model is readable but outside the tutorial family capgen converts."""


class TokenizerError(CapgenError):
    """A tokenizer file cannot be read safely or does not fit the model."""

    exit_code = ExitCode.TOKENIZER


class UnsafePickleError(TokenizerError):
    """A pickle asked to build something other than a Keras Tokenizer's plain state."""


class ConversionError(CapgenError):
    """The conversion stack is missing or a conversion step failed."""

    exit_code = ExitCode.CONVERSION


__all__ = [
    "CapgenError",
    "ConversionError",
    "ExitCode",
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

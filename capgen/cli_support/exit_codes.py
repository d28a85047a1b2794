"""The one table of `capgen`'s exit codes, and which code each error category ends a command with.

The library's errors carry an `ErrorCategory` (capgen.runtime.errors), not an
exit code: exit codes belong to the command line. docs/errors.md's table is
checked against `ExitCode` row by row, and every row against what the console
script really returns (tests/hardening/test_output_files_and_interrupts.py).
"""

from __future__ import annotations

from enum import IntEnum

from capgen.runtime.errors import CapgenError, ErrorCategory


class ExitCode(IntEnum):
    """Every exit status of `capgen`, with the meaning docs/errors.md's table gives it."""

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


# Every category has its code; a test checks that none is missing.
CATEGORY_EXIT_CODES: dict[ErrorCategory, ExitCode] = {
    ErrorCategory.FAILED: ExitCode.SOME_FAILED,
    ErrorCategory.USAGE: ExitCode.USAGE,
    ErrorCategory.IMAGE: ExitCode.IMAGE,
    ErrorCategory.MODEL: ExitCode.MODEL,
    ErrorCategory.TOKENIZER: ExitCode.TOKENIZER,
    ErrorCategory.CONVERSION: ExitCode.CONVERSION,
}


def exit_code_for(error: CapgenError) -> ExitCode:
    """The exit code a command ends with when `error` stops it (its category's)."""
    return CATEGORY_EXIT_CODES[error.category]

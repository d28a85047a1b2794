"""Printing file names, captions and messages safely on any terminal; imports nothing heavy.

A file name or a vocabulary word may hold any character: a newline or tab
would split the `path<TAB>caption` lines and the one-line stderr reports,
and an escape sequence would reach the terminal raw (it can retitle the
window, clear the screen or hide text). Line output and messages therefore
show control characters as `\\xNN` / `\\uNNNN` escapes; `--json` output is exact.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from capgen.runtime.errors import InputError

# C0 and C1 controls and DEL, line/paragraph separators, and the bidirectional
# overrides that can make text display in another order than it reads.
_UNSAFE = {
    *range(0x00, 0x20),
    *range(0x7F, 0xA0),
    0x2028,
    0x2029,
    0x200E,
    0x200F,
    *range(0x202A, 0x202F),
    *range(0x2066, 0x206A),
}
_ESCAPES = {code: (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}") for code in _UNSAFE}


def escape_controls(text: str) -> str:
    """`text` with every control character written as an escape, so it stays one harmless line."""
    return text.translate(_ESCAPES)


def printable(path: str) -> str:
    """A path safe to print: undecodable bytes become U+FFFD, control characters escapes."""
    return escape_controls(os.fsencode(path).decode("utf-8", errors="replace"))


def say(message: str) -> None:
    """One line on stderr, whatever bytes or control characters the message holds."""
    safe = message.encode("utf-8", errors="replace").decode("utf-8")
    sys.stderr.write(escape_controls(safe) + "\n")
    sys.stderr.flush()


class StdoutUnwritable(InputError):
    """Standard output refused a line (a full disk behind `> file`); a closed pipe is not this."""


def write_stdout(text: str, then: str = "") -> None:
    """Write and flush; a closed pipe propagates (the presenter exits 141), other failures are one line.

    `then` ends that line, e.g. "; stopped" when a batch ends there.
    """
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise StdoutUnwritable(
            f"cannot write to standard output ({exc.strerror or exc}){then}"
        ) from None


def tolerate_any_terminal() -> None:
    """Replace what the terminal's encoding cannot show instead of failing on it.

    A caption or file name with characters an ASCII or Latin-1 terminal lacks
    (PYTHONIOENCODING=ascii, an old locale, a Windows console) would otherwise
    end the batch with a UnicodeEncodeError traceback.
    """
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="replace")


# How much beyond results and errors a command says on stderr: -1 quiet (no
# notes, no progress bar), 0 normal, 1 verbose (also timings and details).
# Errors and the results themselves are never silenced.
_verbosity = 0


def set_verbosity(quiet: bool, verbose: bool) -> None:
    """Apply -q/--quiet or -v/--verbose; both at once is a usage error, not a silent pick."""
    global _verbosity
    if quiet and verbose:
        raise InputError("--quiet and --verbose contradict each other; give one of them")
    _verbosity = -1 if quiet else 1 if verbose else 0


def is_quiet() -> bool:
    return _verbosity < 0


def is_verbose() -> bool:
    return _verbosity > 0


def note(message: str) -> None:
    """A note or progress line: shown unless -q/--quiet."""
    if _verbosity >= 0:
        say(message)


def detail(message: str) -> None:
    """A timing or detail line: shown only with -v/--verbose."""
    if _verbosity > 0:
        say(message)


def terminal_progress(command: str) -> Callable[[str], None]:
    """The `progress` callback a CLI hands to a long library step (setup, quantize).

    Each stage message becomes one `capgen COMMAND: message` line on stderr, but
    only while stderr is a terminal and not -q: someone watching a minute-long
    step should see it move, while a log or CI run (stderr redirected) keeps only
    the command's own output and summary. The library itself never prints; it
    only calls this. Whether stderr is a terminal is asked at each message, so a
    stream swapped in later (tests, redirection) is honoured.
    """

    def show(message: str) -> None:
        isatty = getattr(sys.stderr, "isatty", None)
        if isatty is not None and isatty():
            note(f"capgen {command}: {message}")

    return show

"""Ctrl-C outside a command's own work: leave at once with one line, never a traceback.

Python turns SIGINT into KeyboardInterrupt wherever the main thread happens
to be: inside an import (the first ~50 ms of `capgen`), or in the
interpreter's shutdown, which joins worker threads and prints an ignored
exception. While nothing can be lost (before a command starts, after it has
finished and flushed) a Ctrl-C instead ends the process with its exit code.
Standard library only: this is imported before anything else.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from types import FrameType

INTERRUPTED_EXIT = 130  # = ExitCode.INTERRUPTED; this module may not import the table's module


def leave_on_interrupt(exit_code: int = INTERRUPTED_EXIT, message: str | None = None) -> None:
    """From now on, Ctrl-C prints `message` (if any) and exits with `exit_code` immediately."""

    def leave(signum: int, frame: FrameType | None) -> None:
        if message:
            os.write(2, f"{message}\n".encode())
        os._exit(exit_code)

    signal.signal(signal.SIGINT, leave)


def interrupt_with_keyboard_interrupt() -> None:
    """Python's own behaviour (KeyboardInterrupt), for a command that keeps its finished work."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


def leave_quietly_at_exit(exit_code: int) -> None:
    """Flush what is printed, then let a Ctrl-C during shutdown end the process with `exit_code`."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe was already reported
            stream.flush()
    leave_on_interrupt(exit_code)

"""Printing file names and messages safely; imports nothing heavy, so every CLI path can use it."""

from __future__ import annotations

import os
import sys


def printable(path: str) -> str:
    """A path safe to print on any terminal: undecodable bytes become U+FFFD."""
    return os.fsencode(path).decode("utf-8", errors="replace")


def say(message: str) -> None:
    """One line on stderr, whatever bytes a file name holds."""
    sys.stderr.write(message.encode("utf-8", errors="replace").decode("utf-8") + "\n")
    sys.stderr.flush()


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

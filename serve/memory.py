"""Giving the memory of a burst back to the system once it is answered (glibc's `malloc_trim`).

A burst of large uploads leaves the freed bodies and decoded images in
glibc's malloc arenas: the process keeps them (60 x 19 MB uploads left
1.4 GB held after every answer, measured in docs/serve.md), so one burst
sets the service's footprint for good. `malloc_trim(0)` hands free arena
memory back to the kernel; the service calls it when its last caption
request in flight finishes, on a worker thread (it walks every arena, so it
must not hold up the event loop), at most one at a time.

Only glibc has `malloc_trim`: elsewhere (musl, macOS) `trimmer()` is None
and nothing is done.
"""

from __future__ import annotations

import asyncio
import ctypes
import sys
from collections.abc import Callable


def trimmer() -> Callable[[], None] | None:
    """glibc's `malloc_trim(0)` as a call, or None where the C library has none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)  # the C library this process already runs on
        libc.gnu_get_libc_version  # noqa: B018 - present in glibc only
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int

    def trim_all() -> None:
        trim(0)

    return trim_all


class Trimmer:
    """Runs `malloc_trim(0)` off the event loop when asked, never two at once."""

    def __init__(self, trim: Callable[[], None] | None = None) -> None:
        self.trim = trimmer() if trim is None else trim
        self.running: asyncio.Future[None] | None = None
        self.runs = 0

    def request(self) -> None:
        """Start a trim on a worker thread unless one is running (called on the event loop)."""
        if self.trim is None or (self.running is not None and not self.running.done()):
            return
        self.runs += 1
        self.running = asyncio.get_running_loop().run_in_executor(None, self.trim)

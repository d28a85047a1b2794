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
    """Runs `malloc_trim(0)` off the event loop when asked, never two at once.

    A request that arrives while a trim runs is not dropped: the memory of the
    requests that finished meanwhile would stay held until the next burst (seen
    in CI under load). One more trim follows the running one instead, and each
    request schedules a follow-up a moment later, for buffers the last request
    released only after the service went idle.
    """

    FOLLOW_UP_S = 1.0

    def __init__(self, trim: Callable[[], None] | None = None) -> None:
        self.trim = trimmer() if trim is None else trim
        self.running: asyncio.Future[None] | None = None
        self.again = False
        self.runs = 0

    def request(self, follow_up: bool = True) -> None:
        """Trim on a worker thread now, or right after the running one (called on the event loop)."""
        if self.trim is None:
            return
        loop = asyncio.get_running_loop()
        if follow_up:
            loop.call_later(self.FOLLOW_UP_S, self.request, False)
        if self.running is not None and not self.running.done():
            self.again = True
            return
        self._start(loop)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.again = False
        self.runs += 1
        self.running = loop.run_in_executor(None, self.trim)  # type: ignore[arg-type]
        self.running.add_done_callback(lambda _: self._finished(loop))

    def _finished(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.again and not loop.is_closed():
            self._start(loop)

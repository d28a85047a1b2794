"""serve/memory.Trimmer: a trim asked for while one runs is not lost (issue 24 finding 18)."""

from __future__ import annotations

import asyncio
import threading

from capgen.serve.memory import Trimmer


def test_a_request_during_a_running_trim_gets_a_trim_after_it() -> None:
    release = threading.Event()
    calls: list[int] = []

    def slow_trim() -> None:
        calls.append(len(calls))
        release.wait(5)

    async def scenario() -> int:
        trimmer = Trimmer(slow_trim)
        trimmer.FOLLOW_UP_S = 60.0  # only the queued trim, not the delayed follow-up
        trimmer.request()
        await asyncio.sleep(0.05)
        trimmer.request()  # the first is still running: memory freed since must be trimmed too
        release.set()
        for _ in range(200):
            if len(calls) == 2 and trimmer.running is not None and trimmer.running.done():
                break
            await asyncio.sleep(0.01)
        return trimmer.runs

    assert asyncio.run(scenario()) == 2 and len(calls) == 2


def test_each_request_is_followed_up_once_later() -> None:
    calls: list[int] = []

    async def scenario() -> None:
        trimmer = Trimmer(lambda: calls.append(1))
        trimmer.FOLLOW_UP_S = 0.05
        trimmer.request()
        for _ in range(200):
            if len(calls) == 2:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # a follow-up schedules no further follow-up

    asyncio.run(scenario())
    assert len(calls) == 2

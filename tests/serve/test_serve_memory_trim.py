"""serve/memory.Trimmer: a trim asked for while one runs is not lost (issue 24 finding 18)."""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref
from typing import Any

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


class _Upload:
    """Stands in for a request body: a weak reference tells whether anything still holds it."""


def test_an_idle_batcher_holds_no_image_of_the_batches_it_ran() -> None:
    """The collector once kept its last batch (up to --max-batch bodies) while it waited.

    Eight 19 MB uploads stayed in memory for good after a burst, so no trim could
    give them back (CI saw the burst test's RSS stay 150 MiB up). Reference
    counting alone must free them: the cycle collector is off here, as it is
    rarely run in an idle service.
    """
    from capgen.runtime.decoding import DecodingOptions
    from capgen.serve.batcher import MicroBatcher
    from capgen.serve.metrics import Metrics

    def run(images: list[Any], options: DecodingOptions, should_stop: Any) -> list[Any]:
        return ["a caption"] * len(images)

    async def scenario() -> list[weakref.ref[_Upload]]:
        batcher = MicroBatcher(run, max_batch=8, max_wait_s=0.5, max_queue=64, metrics=Metrics())
        batcher.start()
        uploads = [_Upload() for _ in range(8)]
        held = [weakref.ref(upload) for upload in uploads]
        futures = batcher.submit(uploads, DecodingOptions())
        del uploads
        assert await asyncio.gather(*futures) == ["a caption"] * 8
        del futures
        await asyncio.sleep(0.05)  # the collector is back waiting for work
        alive = [ref for ref in held if ref() is not None]
        await batcher.close()
        return alive

    gc.disable()
    try:
        alive = asyncio.run(scenario())
    finally:
        gc.enable()
    assert alive == [], f"{len(alive)} of 8 uploads still held by an idle batcher"

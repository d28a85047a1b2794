"""Dynamic micro-batching: requests that arrive together become ONE Captioner batch.

Each image is a job in the queue of its `DecodingOptions` (images with
different options cannot share a beam search). One collector task takes the
group of the oldest job, waits until that group holds `max_batch` images or
the oldest has waited `max_wait`, and runs the batch on the single model
thread, so the event loop never runs model code and batches grow while the
model is busy. A job whose future is cancelled (its client left, or timed
out) leaves the queue at once and costs nothing; a batch already running
stops between two decoder steps once every one of its jobs is cancelled
(`runtime.decoding.stop_when`), and so does whatever runs when the batcher
closes, so abandoned work never holds the model thread or a shutdown.

The queue is bounded by cost, not by images: an image at beam 100 and 1,000
words is hundreds of times the work of a greedy one, so each job carries
its cost (image-equivalents at the default options, computed by the app)
and `max_queue` bounds their sum. The seconds per unit of cost are measured
on every batch, which gives the expected queue wait behind Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from capgen.runtime.decoding import DecodingOptions, DecodingResult
from capgen.runtime.errors import CapgenError
from capgen.serve.errors import service_unavailable
from capgen.serve.metrics import Metrics

Outcome = DecodingResult | CapgenError
# (images, options, should_stop) -> one outcome per image, in order; runs on the model thread.
# `should_stop()` turns true once nobody waits for any image of the batch.
BatchRunner = Callable[[list[Any], DecodingOptions, Callable[[], bool]], list[Outcome]]
MAX_RETRY_AFTER_S = 300  # a wait estimate beyond this tells a client nothing useful
T = TypeVar("T")


@dataclass(eq=False)
class Job:
    image: Any
    options: DecodingOptions
    future: asyncio.Future[Outcome]
    enqueued: float  # time.perf_counter()
    cost: float = 1.0  # image-equivalents at the default options
    deadline: float = math.inf  # time.perf_counter() after which nobody waits for it


class DeadlinePassed(Exception):
    """A queued job's request ran out of time before its batch started; it is not captioned."""


class MicroBatcher:
    """The queue, its collector task and the one model thread."""

    def __init__(
        self,
        run_batch: BatchRunner,
        max_batch: int,
        max_wait_s: float,
        max_queue: int,
        metrics: Metrics,
    ) -> None:
        self._run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._metrics = metrics
        self._groups: dict[DecodingOptions, deque[Job]] = {}
        self._depth = 0
        self._queued_cost = 0.0
        self._running_cost = 0.0
        self._running_stop: threading.Event | None = None
        self._seconds_per_cost: float | None = None  # measured, a moving average
        self._wakeup = asyncio.Event()
        self._flush = False  # draining: run what is queued without waiting for more
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="capgen-model")
        self._task: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        """Images waiting for a batch (not those already running)."""
        return self._depth

    @property
    def queued_cost(self) -> float:
        """The cost waiting for a batch (not what is already running)."""
        return self._queued_cost

    def expected_wait_s(self, extra_cost: float = 0.0) -> float | None:
        """Seconds until work of `extra_cost` queued now would be done; None before any batch ran."""
        if self._seconds_per_cost is None:
            return None
        return (self._queued_cost + self._running_cost + extra_cost) * self._seconds_per_cost

    def retry_after_s(self) -> int:
        """Retry-After for a refusal: the measured wait for what is queued, at least 1 s."""
        wait = self.expected_wait_s() or 0.0
        return max(1, min(MAX_RETRY_AFTER_S, math.ceil(wait)))

    async def on_model_thread(self, work: Callable[[], T]) -> T:
        """Run `work` on the model thread (loading and warming the model use it too)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._collect())

    def flush(self) -> None:
        """From now on run queued work at once (the server is draining)."""
        self._flush = True
        self._wakeup.set()

    async def close(self) -> None:
        """Stop collecting, cancel what is queued and stop what runs: nobody takes its answers."""
        if self._running_stop is not None:  # before the task, whose cancellation forgets it
            self._running_stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for group in self._groups.values():
            for job in group:
                job.future.cancel()
        self._executor.shutdown(wait=True, cancel_futures=True)

    def submit(
        self,
        images: list[Any],
        options: DecodingOptions,
        cost_each: float = 1.0,
        deadline: float = math.inf,
    ) -> list[asyncio.Future[Outcome]]:
        """Queue every image of one request, or none of them (503 queue_full) if they do not fit.

        `cost_each` is one image's cost; the queue holds at most `max_queue` of cost.
        """
        cost = cost_each * len(images)
        if self._queued_cost + cost > self.max_queue + 1e-9:
            raise service_unavailable(
                "queue_full",
                f"the queue is full ({self._queued_cost:g} of {self.max_queue} image-equivalents "
                "of work waiting); retry later",
                self.retry_after_s(),
            )
        loop = asyncio.get_running_loop()
        group = self._groups.setdefault(options, deque())
        futures = []
        now = time.perf_counter()
        for image in images:
            job = Job(image, options, loop.create_future(), now, cost_each, deadline)
            job.future.add_done_callback(functools.partial(self._forget, job))
            group.append(job)
            futures.append(job.future)
        self._queued_cost += cost
        self._set_depth(self._depth + len(images))
        self._wakeup.set()
        return futures

    def _set_depth(self, depth: int) -> None:
        self._depth = depth
        self._metrics.queue_depth.set(depth)

    def _forget(self, job: Job, future: asyncio.Future[Outcome]) -> None:
        """A cancelled job still in the queue leaves it now, before any work is spent on it."""
        if not future.cancelled():
            return
        group = self._groups.get(job.options)
        if group is None or job not in group:
            return
        group.remove(job)
        if not group:
            del self._groups[job.options]
        self._queued_cost = max(0.0, self._queued_cost - job.cost)
        self._set_depth(self._depth - 1)
        self._metrics.skipped.inc()

    async def _wait(self, timeout: float | None) -> None:
        self._wakeup.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout)

    def _oldest_group(self) -> DecodingOptions:
        return min(self._groups, key=lambda options: self._groups[options][0].enqueued)

    async def _collect(self) -> None:
        """Forever: gather the oldest group up to max_batch images or max_wait, then run it."""
        while True:
            if not self._groups:
                await self._wait(None)
                continue
            options = self._oldest_group()
            deadline = self._groups[options][0].enqueued + self.max_wait_s
            while not self._flush:
                group = self._groups.get(options)
                remaining = deadline - time.perf_counter()
                if group is None or len(group) >= self.max_batch or remaining <= 0:
                    break
                await self._wait(remaining)
            await self._run_next_batch(options)

    async def _run_next_batch(self, options: DecodingOptions) -> None:
        """Take up to max_batch jobs of `options`' group and run them.

        A method of its own so that the batch (every job's upload) is freed on
        return: a local of `_collect` lived on while the collector waited for
        the next request, and kept the last batch's bodies (8 x 19 MB in a
        burst) in memory, where no `malloc_trim` could give them back.
        """
        group = self._groups.get(options)
        if group is None:  # every job of it was cancelled while we waited
            return
        batch = [group.popleft() for _ in range(min(self.max_batch, len(group)))]
        if not group:
            del self._groups[options]
        self._queued_cost = max(0.0, self._queued_cost - sum(job.cost for job in batch))
        self._set_depth(self._depth - len(batch))
        batch = self._unexpired(batch)
        if batch:
            await self._execute(batch, options)

    def _unexpired(self, batch: list[Job]) -> list[Job]:
        """The jobs someone still waits for; those past their deadline fail without being run."""
        now = time.perf_counter()
        live = []
        for job in batch:
            if job.future.done():
                continue
            if job.deadline <= now:
                job.future.set_exception(DeadlinePassed())
                self._metrics.skipped.inc()
            else:
                live.append(job)
        return live

    async def _execute(self, batch: list[Job], options: DecodingOptions) -> None:
        started = time.perf_counter()
        for job in batch:
            self._metrics.stage_seconds.labels(stage="queue").observe(started - job.enqueued)
        self._metrics.batch_size.observe(len(batch))
        images = [job.image for job in batch]
        stop = threading.Event()  # set (on the loop) once every job of the batch is cancelled

        def abandoned(_: asyncio.Future[Outcome]) -> None:
            if all(job.future.cancelled() for job in batch):
                stop.set()

        for job in batch:
            job.future.add_done_callback(abandoned)
        cost = sum(job.cost for job in batch)
        self._running_cost, self._running_stop = cost, stop
        try:
            outcomes = await self.on_model_thread(
                lambda: self._run_batch(images, options, stop.is_set)
            )
        except Exception as exc:  # a model failure (or a stop) fails its batch, not the service
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        finally:
            self._running_cost, self._running_stop = 0.0, None
        self.observe_batch(time.perf_counter() - started, cost)
        for job, outcome in zip(batch, outcomes, strict=True):
            if not job.future.done():
                job.future.set_result(outcome)

    def observe_batch(self, seconds: float, cost: float) -> None:
        """Seconds per unit of cost, a moving average over the batches that ran to the end."""
        if cost <= 0:
            return
        rate = seconds / cost
        old = self._seconds_per_cost
        self._seconds_per_cost = rate if old is None else 0.8 * old + 0.2 * rate

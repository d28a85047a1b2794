"""The load generator's moving parts: a server process on loopback, N asyncio clients, a level's figures.

Every level is bounded twice: clients stop starting requests after
`seconds` (or `requests` started), and whatever is still in flight
`grace` seconds later is cancelled and counted as unfinished (the
tutorial baseline at 64 clients would otherwise take minutes to answer
everyone). Only loopback URLs are ever contacted; a server is always a
child process this module started, so its RSS can be sampled and it can
be stopped by its own pid.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IMAGE_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
}
LOOPBACK_URL = re.compile(r"http://127\.0\.0\.1:\d+")
START_TIMEOUT_S = 300.0  # TensorFlow's import and model load for the baseline fit well inside
REQUEST_TIMEOUT_S = 600.0  # the per-level grace bounds a level; this only bounds one request
CAPTIONS = "/v1/captions?beam_size=1"  # greedy: the tutorial's loop

Image = tuple[str, bytes, str]  # (file name, bytes, media type)


@dataclass
class Level:
    """One (server, clients) point."""

    clients: int
    ok: int
    refused_503: int
    failed: int
    unfinished: int
    seconds: float
    throughput_rps: float
    p50_ms: float | None  # None: no request was answered
    p95_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    p99_over_p50: float | None
    failures: dict[str, int]  # "status 500" / "ReadTimeout": count


def percentile(sorted_ms: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (nan when empty)."""
    if not sorted_ms:
        return float("nan")
    index = min(len(sorted_ms) - 1, max(0, round(q / 100.0 * (len(sorted_ms) - 1))))
    return float(sorted_ms[index])


def load_images(folder: Path, limit: int = 64) -> list[Image]:
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_TYPES)[:limit]
    if not paths:
        raise SystemExit(f"serve_load: no .jpg/.png/.webp images in {folder}")
    return [(p.name, p.read_bytes(), IMAGE_TYPES[p.suffix.lower()]) for p in paths]


class ServerProcess:
    """A server started as a child, its loopback URL read from its first stderr lines."""

    def __init__(self, command: list[str], started: re.Pattern[str], env: dict[str, str]) -> None:
        self.command = command
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.tail: list[str] = []
        found: list[str] = []
        ready = threading.Event()

        def read() -> None:  # keeps draining stderr (one log line per request) so it never blocks
            assert self.process.stderr is not None
            for line in self.process.stderr:
                if not found:
                    self.tail = [*self.tail[-20:], line.rstrip()]
                    match = started.search(line)
                    if match and LOOPBACK_URL.fullmatch(match.group(1)):
                        found.append(match.group(1))
                        ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(START_TIMEOUT_S) or not found:
            self.stop()
            raise SystemExit(
                f"serve_load: {' '.join(command[:2])} did not start: {' | '.join(self.tail[-3:])}"
            )
        self.url = found[0]

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_bytes(self) -> int:
        """The server's resident set size now (from /proc, as psutil reads it)."""
        import psutil

        return int(psutil.Process(self.pid).memory_info().rss)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=60)


async def wait_ready(url: str, deadline_s: float = START_TIMEOUT_S) -> None:
    import httpx

    deadline = time.monotonic() + deadline_s
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get("/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit(f"serve_load: {url} was not ready within {deadline_s:g} s")


async def post_image(client: Any, image: Image) -> Any:
    _, body, media = image
    return await client.post(CAPTIONS, content=body, headers={"Content-Type": media})


async def warm_up(url: str, images: list[Image], clients: int, requests: int) -> None:
    """Not counted: the first calls grow onnxruntime's arenas (and batches of every size)."""
    await run_level(url, clients, images, requests, seconds=600.0, grace=600.0)


async def run_level(
    url: str,
    clients: int,
    images: list[Image],
    requests: int,
    seconds: float,
    grace: float,
    on_answer: Any = None,
) -> Level:
    """`clients` loops posting images until `requests` are started or `seconds` pass."""
    import httpx

    latencies: list[float] = []
    failures: dict[str, int] = {}
    counts = {"issued": 0, "refused": 0}
    stop_at = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S, limits=limits) as client:

        async def one_client() -> None:
            while counts["issued"] < requests and time.monotonic() < stop_at:
                image = images[counts["issued"] % len(images)]
                counts["issued"] += 1
                started = time.perf_counter()
                try:
                    answer = await post_image(client, image)
                except httpx.HTTPError as error:
                    key = type(error).__name__
                    failures[key] = failures.get(key, 0) + 1
                    continue
                if answer.status_code == 200 and "caption" in answer.json()["results"][0]:
                    latencies.append((time.perf_counter() - started) * 1000.0)
                elif answer.status_code == 503:
                    counts["refused"] += 1
                else:
                    key = f"status {answer.status_code}"
                    failures[key] = failures.get(key, 0) + 1
                if on_answer is not None:
                    on_answer(len(latencies))

        began = time.perf_counter()
        tasks = [asyncio.ensure_future(one_client()) for _ in range(clients)]
        _, pending = await asyncio.wait(tasks, timeout=seconds + grace)
        for task in pending:  # each pending client has exactly one request in flight
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        elapsed = time.perf_counter() - began
    return summarize_level(clients, latencies, counts["refused"], failures, len(pending), elapsed)


def summarize_level(
    clients: int,
    latencies: list[float],
    refused: int,
    failures: dict[str, int],
    unfinished: int,
    elapsed: float,
) -> Level:
    latencies = sorted(latencies)
    if not latencies:  # JSON has no NaN: figures that do not exist are null
        p50 = p95 = p99 = mean = ratio = None
    else:
        p50, p95, p99 = (round(percentile(latencies, q), 2) for q in (50, 95, 99))
        mean = round(sum(latencies) / len(latencies), 2)
        ratio = round(p99 / p50, 3) if p50 > 0 else None
    return Level(
        clients=clients,
        ok=len(latencies),
        refused_503=refused,
        failed=sum(failures.values()),
        unfinished=unfinished,
        seconds=round(elapsed, 3),
        throughput_rps=round(len(latencies) / elapsed, 3) if elapsed > 0 else 0.0,
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
        mean_ms=mean,
        p99_over_p50=ratio,
        failures=failures,
    )

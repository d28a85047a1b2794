"""Load generator for `capgen serve`: throughput and p50/p95/p99 latency at 1, 4, 16, 64 clients.

Starts `capgen serve` itself on a free loopback port, once with batching on
(--max-batch 8 --max-wait-ms 5) and once off (--max-batch 1 --max-wait-ms 0),
and drives each with N concurrent asyncio + httpx clients posting images
as raw bodies. Every level is bounded in requests AND seconds; only loopback
is ever contacted. Nothing is written unless --json is given (figures from a
shared, busy machine are not to be committed as results).

    .venv/bin/python benchmarks/serve_load.py --model ~/.cache/capgen/models/default \\
        --images examples/ --requests 200 --seconds 20 [--int8] [--json out.json]

The default model and examples/ are used when --model and --images are not
given. Needs the serve extra (the server) and httpx (the dev extra).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CLIENTS = (1, 4, 16, 64)
WARMUP_REQUESTS = 8  # per server, not counted
MODES = {"batching on": ["--max-batch", "8", "--max-wait-ms", "5"], "batching off": ["--max-batch", "1", "--max-wait-ms", "0"]}  # fmt: skip
STARTED = re.compile(r"capgen: serving .* on (http://127\.0\.0\.1:\d+)")
IMAGE_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
}


@dataclass
class Level:
    mode: str
    clients: int
    requests: int
    failed: int
    refused_503: int
    seconds: float
    throughput_rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float


def percentile(sorted_ms: list[float], q: float) -> float:
    if not sorted_ms:
        return float("nan")
    index = min(len(sorted_ms) - 1, max(0, round(q / 100.0 * (len(sorted_ms) - 1))))
    return sorted_ms[index]


def load_images(folder: Path, limit: int = 64) -> list[tuple[bytes, str]]:
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_TYPES)[:limit]
    if not paths:
        raise SystemExit(f"serve_load: no .jpg/.png/.webp images in {folder}")
    return [(p.read_bytes(), IMAGE_TYPES[p.suffix.lower()]) for p in paths]


def start_server(
    capgen: Path, model: Path | None, extra: list[str]
) -> tuple[subprocess.Popen[str], str]:
    args = [
        str(capgen),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--max-queue",
        "1024",
        *extra,
    ]
    if model is not None:
        args += ["--model", str(model)]
    process = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert process.stderr is not None
    for line in process.stderr:
        found = STARTED.search(line)
        if found:
            # keep draining stderr (one log line per request) so the server never blocks on it
            subprocess.Popen(["cat"], stdin=process.stderr, stdout=subprocess.DEVNULL)
            return process, found.group(1)
    raise SystemExit(f"serve_load: capgen serve did not start (exit {process.wait()})")


async def wait_ready(client: Any, deadline: float) -> None:
    import httpx

    while time.monotonic() < deadline:
        try:
            if (await client.get("/readyz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit("serve_load: the server was not ready in time")


async def run_level(
    url: str,
    mode: str,
    clients: int,
    images: list[tuple[bytes, str]],
    requests: int,
    seconds: float,
) -> Level:
    import httpx

    latencies: list[float] = []
    failed = refused = 0
    issued = 0
    stop_at = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def one_client() -> None:
            nonlocal issued, failed, refused
            while issued < requests and time.monotonic() < stop_at:
                body, media = images[issued % len(images)]
                issued += 1
                started = time.perf_counter()
                try:
                    answer = await client.post(
                        "/v1/captions?beam_size=1", content=body, headers={"Content-Type": media}
                    )
                except httpx.HTTPError:
                    failed += 1
                    continue
                if answer.status_code == 200:
                    latencies.append((time.perf_counter() - started) * 1000.0)
                elif answer.status_code == 503:
                    refused += 1
                else:
                    failed += 1

        began = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    return Level(
        mode=mode, clients=clients, requests=len(latencies), failed=failed, refused_503=refused,
        seconds=round(elapsed, 3), throughput_rps=round(len(latencies) / elapsed, 2) if elapsed else 0.0,
        p50_ms=round(percentile(latencies, 50), 2), p95_ms=round(percentile(latencies, 95), 2),
        p99_ms=round(percentile(latencies, 99), 2),
    )  # fmt: skip


async def bench_mode(
    capgen: Path,
    model: Path | None,
    mode: str,
    extra: list[str],
    args: argparse.Namespace,
    images: list[tuple[bytes, str]],
) -> list[Level]:
    import httpx

    process, url = start_server(capgen, model, extra)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            await wait_ready(client, time.monotonic() + 300)
            for body, media in (
                images[:WARMUP_REQUESTS] * 2
            ):  # first calls grow onnxruntime's arenas
                await client.post(
                    "/v1/captions?beam_size=1", content=body, headers={"Content-Type": media}
                )
        levels = []
        for clients in args.clients:
            level = await run_level(url, mode, clients, images, args.requests, args.seconds)
            print(
                f"{mode:13} {clients:3} clients: {level.throughput_rps:8.2f} req/s  p50 {level.p50_ms:8.2f} ms  "
                f"p95 {level.p95_ms:8.2f} ms  p99 {level.p99_ms:8.2f} ms  ({level.requests} ok, "
                f"{level.refused_503} 503, {level.failed} failed)",
                flush=True,
            )
            levels.append(level)
        return levels
    finally:
        process.terminate()
        process.wait(timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", type=Path, default=None, help="model folder (default: capgen setup's)"
    )
    parser.add_argument(
        "--images", type=Path, default=Path(__file__).resolve().parents[1] / "examples"
    )
    parser.add_argument("--requests", type=int, default=200, help="most requests per level")
    parser.add_argument("--seconds", type=float, default=20.0, help="most seconds per level")
    parser.add_argument("--clients", type=int, nargs="+", default=list(CLIENTS))
    parser.add_argument("--int8", action="store_true", help="serve with the INT8 encoder")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    if not 1 <= args.requests <= 100_000 or not 0 < args.seconds <= 3600:
        raise SystemExit("serve_load: --requests 1-100000 and --seconds up to 3600")
    capgen = Path(sys.executable).parent / "capgen"
    images = load_images(args.images)
    extra = ["--int8"] if args.int8 else []
    results: list[Level] = []
    for mode, options in MODES.items():
        results += asyncio.run(
            bench_mode(capgen, args.model, mode, [*options, *extra], args, images)
        )
    if args.json is not None:
        report = {
            "int8": args.int8,
            "cpus": os.cpu_count(),
            "levels": [asdict(level) for level in results],
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

"""Load test of `capgen serve` against the tutorial's Keras code behind the same framework.

    .venv/bin/python benchmarks/serve_load.py [--out benchmarks/results] [--quick]

Starts every server itself on a free loopback port (only 127.0.0.1 is
contacted) and measures, with asyncio + httpx clients posting the Flickr8k
photos as raw bodies (greedy, `beam_size=1`):
- throughput and p50/p95/p99 at 1, 4, 16 and 64 clients for capgen serve
  with batching on (--max-batch 8 --max-wait-ms 5) and off (--max-batch 1
  --max-wait-ms 0), FP32 and INT8, on the 7,577-word tutorial decoder
  (benchmarks/fixtures.py), and for the baseline (benchmarks/tutorial/server.py);
- HTTP overhead: at 1 client, HTTP latency against the in-process
  `Captioner.caption` latency on the same photos, alternating;
- a soak (INT8, batching on, 16 clients, 10,000 requests) sampling the
  server's RSS.
Failures (anything but 200 and a deliberate 503) and p99/p50 are counted;
every section records how quiet the machine was (benchmarks/quiet.py).
Writes serve.json, SERVE.md (tables, goals met/not met, a docs/serve.md snippet)
and serve_throughput.png into --out. A full run takes about 12 minutes on
2 cores (every level is bounded, see Plan; the soak's bound follows from its
request count, so a slow machine takes up to 10.4 minutes for it alone); --quick checks the whole path
in 2-4 minutes, most of it the baseline's TensorFlow start.

`--model DIR --images DIR --no-baseline` runs it on any model folder
(the baseline needs the tutorial decoder's Keras files).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from capgen.benchmarks.quiet import measured_quietly
from capgen.benchmarks.serve_client import (
    CAPTIONS,
    Image,
    Level,
    ServerProcess,
    load_images,
    run_level,
    wait_ready,
    warm_up,
)
from capgen.runtime.errors import CapgenError

REPO = Path(__file__).resolve().parents[1]
CAPGEN_STARTED = re.compile(r"capgen: serving .* on (http://\S+?)(?:,|\s|$)")
BASELINE_STARTED = re.compile(r"capgen-baseline: serving on (http://\S+)")
MODES = {
    "on": ["--max-batch", "8", "--max-wait-ms", "5"],
    "off": ["--max-batch", "1", "--max-wait-ms", "0"],
}


@dataclass(frozen=True)
class Plan:
    """How much of everything: the full run fits about 12 minutes on 2 cores."""

    clients: tuple[int, ...] = (1, 4, 16, 64)
    requests: int = 4000  # most requests started per capgen level
    seconds: float = 6.0  # most seconds per capgen level
    grace: float = 30.0  # then in-flight requests are cancelled (counted unfinished)
    warmup: int = 64
    baseline_seconds: float = 10.0  # the baseline needs ~2 s a request
    baseline_grace: float = 90.0  # 64 clients: most of one round of 64 requests
    overhead_rounds: int = 5  # x the photos, alternating in-process and HTTP
    soak_requests: int = 10_000
    soak_clients: int = 16
    # The soak's time bound follows from its request count: requests ÷ the slowest
    # rate it should sustain (the last full run: 23.2 req/s INT8 at 16 clients, so 16
    # leaves room for a slower machine), and never less than soak_min_seconds. A fixed
    # 390 s stopped the last run at 9,040 of 10,000 requests.
    soak_slowest_rps: float = 16.0
    soak_min_seconds: float = 480.0
    soak_samples: int = 40
    quiet_max_wait: float = 10.0


QUICK = Plan(
    clients=(1, 4),
    requests=12,
    seconds=3.0,
    grace=30.0,
    warmup=8,
    baseline_seconds=3.0,
    baseline_grace=60.0,
    overhead_rounds=1,
    soak_requests=200,
    soak_clients=4,
    soak_min_seconds=60.0,
    soak_samples=5,
    quiet_max_wait=0.0,
)


def soak_limit_seconds(plan: Plan) -> float:
    """How long the soak may run: long enough for its requests at the slowest expected rate."""
    return max(plan.soak_min_seconds, plan.soak_requests / plan.soak_slowest_rps)


def capgen_server(model: Path, options: list[str]) -> ServerProcess:
    capgen = Path(sys.executable).parent / "capgen"
    command = [
        str(capgen),
        "serve",
        "--model",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--max-queue",
        "1024",
        *options,
    ]
    return ServerProcess(command, CAPGEN_STARTED, dict(os.environ))


def baseline_server(keras_file: Path, tokenizer: Path, weights: Path) -> ServerProcess:
    script = REPO / "benchmarks" / "tutorial" / "server.py"
    command = [
        sys.executable,
        str(script),
        "-m",
        str(keras_file),
        "-t",
        str(tokenizer),
        "--weights",
        str(weights),
        "--port",
        "0",
    ]
    return ServerProcess(command, BASELINE_STARTED, {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


def _ms(value: float | None) -> str:
    return "      –" if value is None else f"{value:9.1f}"


def echo_level(name: str, level: Level) -> None:
    print(
        f"  {name:26} {level.clients:3} clients: {level.throughput_rps:8.2f} req/s  p50 {_ms(level.p50_ms)}"
        f"  p95 {_ms(level.p95_ms)}  p99 {_ms(level.p99_ms)} ms  ({level.ok} ok, {level.refused_503} 503,"
        f" {level.failed} failed, {level.unfinished} unfinished)",
        flush=True,
    )


def run_levels(
    server: ServerProcess, name: str, images: list[Image], plan: Plan, baseline: bool
) -> list[Level]:
    async def go() -> list[Level]:
        await wait_ready(server.url)
        await warm_up(server.url, images, min(8, plan.warmup), plan.warmup if not baseline else 2)
        levels = []
        for clients in plan.clients:
            if baseline:
                level = await run_level(
                    server.url,
                    clients,
                    images,
                    plan.requests,
                    plan.baseline_seconds,
                    plan.baseline_grace,
                )
            else:
                level = await run_level(
                    server.url, clients, images, plan.requests, plan.seconds, plan.grace
                )
            echo_level(name, level)
            levels.append(level)
        return levels

    return asyncio.run(go())


def http_overhead(model: Path, images: list[Image], plan: Plan) -> dict[str, Any]:
    """Median latency per photo in-process and over HTTP (FP32, batching off, 1 client), alternating."""
    import httpx

    from capgen.runtime.captioner import Captioner

    captioner = Captioner(model)
    server = capgen_server(model, MODES["off"])
    try:
        asyncio.run(wait_ready(server.url))
        in_process: list[float] = []
        over_http: list[float] = []
        with httpx.Client(base_url=server.url, timeout=120) as client:
            for image in images[:4]:  # warm both
                captioner.caption(image[1], beam_size=1)
                client.post(CAPTIONS, content=image[1], headers={"Content-Type": image[2]})
            for _ in range(plan.overhead_rounds):
                for image in images:
                    started = time.perf_counter()
                    captioner.caption(image[1], beam_size=1)
                    in_process.append((time.perf_counter() - started) * 1000.0)
                    started = time.perf_counter()
                    answer = client.post(
                        CAPTIONS, content=image[1], headers={"Content-Type": image[2]}
                    )
                    over_http.append((time.perf_counter() - started) * 1000.0)
                    answer.raise_for_status()
    finally:
        server.stop()
    median_in, median_http = statistics.median(in_process), statistics.median(over_http)
    return {
        "photos": len(images),
        "samples": len(in_process),
        "in_process_median_ms": round(median_in, 2),
        "http_median_ms": round(median_http, 2),
        "in_process_min_ms": round(min(in_process), 2),
        "http_min_ms": round(min(over_http), 2),
        "added_median_ms": round(median_http - median_in, 2),
        "server": "capgen serve FP32, batching off (--max-batch 1 --max-wait-ms 0), 1 client",
    }


def soak(model: Path, images: list[Image], plan: Plan, int8: bool) -> dict[str, Any]:
    """`soak_requests` at `soak_clients`, the server's RSS sampled along the way."""
    options = [*MODES["on"], *(["--int8"] if int8 else [])]
    server = capgen_server(model, options)
    samples: list[tuple[int, float, int]] = []  # (answers, seconds, rss bytes)
    every = max(1, plan.soak_requests // plan.soak_samples)
    limit = soak_limit_seconds(plan)
    try:

        async def go() -> Level:
            await wait_ready(server.url)
            await warm_up(
                server.url, images, plan.soak_clients, max(plan.warmup, plan.soak_requests // 20)
            )
            began = time.perf_counter()
            samples.append((0, 0.0, server.rss_bytes()))

            def on_answer(ok: int) -> None:
                if ok and ok % every == 0 and ok != samples[-1][0]:
                    samples.append((ok, time.perf_counter() - began, server.rss_bytes()))

            return await run_level(
                server.url,
                plan.soak_clients,
                images,
                plan.soak_requests,
                limit,
                plan.grace,
                on_answer,
            )

        level = asyncio.run(go())
        samples.append((level.ok, level.seconds, server.rss_bytes()))
    finally:
        server.stop()
    first, last = samples[0][2], samples[-1][2]
    return {
        "server": f"capgen serve {'INT8' if int8 else 'FP32'}, batching on, {plan.soak_clients} clients",
        "level": asdict(level),
        "requests_planned": plan.soak_requests,
        "limit_seconds": limit,
        "stopped_short": level.ok < plan.soak_requests,
        "rss_start_mb": round(first / 2**20, 1),
        "rss_end_mb": round(last / 2**20, 1),
        "rss_max_mb": round(max(s[2] for s in samples) / 2**20, 1),
        "rss_growth_pct": round((last - first) / first * 100.0, 2),
        "samples": [
            {"answers": a, "seconds": round(t, 2), "rss_mb": round(r / 2**20, 1)}
            for a, t, r in samples
        ],
    }


def has_int8(model: Path) -> bool:
    from capgen.runtime.manifest import load_manifest

    return load_manifest(model).encoder.int8_file is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--quick", action="store_true", help="a small run that checks every path")
    parser.add_argument(
        "--model", type=Path, help="a model folder (default: the 7,577-word tutorial decoder)"
    )
    parser.add_argument("--images", type=Path, help="photos (default: the Flickr8k photos)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the tutorial server")
    parser.add_argument("--soak-requests", type=int, help="override the soak's 10,000 requests")
    args = parser.parse_args()
    plan = QUICK if args.quick else Plan()
    if args.soak_requests is not None:
        if not 1 <= args.soak_requests <= 1_000_000:
            raise SystemExit("serve_load: --soak-requests must be from 1 to 1000000")
        plan = replace(plan, soak_requests=args.soak_requests)
    from capgen.benchmarks.results_folder import ResultsFolder
    from capgen.benchmarks.serve_report import OUTPUT_FILES, write_outputs

    try:
        ResultsFolder(args.out).check(OUTPUT_FILES)  # before the run, not eleven minutes into it
    except CapgenError as error:
        raise SystemExit(f"serve_load: {error}") from None
    results = run(plan, args)

    for line in write_outputs(results, args.out):
        print(line)


def run(plan: Plan, args: argparse.Namespace) -> dict[str, Any]:
    from capgen.benchmarks.machine import machine_info

    baseline_files = None
    if args.model is None:
        from capgen.benchmarks.fixtures import prepare_tutorial7577
        from capgen.convert.weights import fetch_imagenet_weights

        bench = prepare_tutorial7577()
        model = bench.model_dir
        if not args.no_baseline:
            baseline_files = (bench.keras_file, bench.tokenizer, fetch_imagenet_weights())
        model_note = bench.note
    else:
        model, model_note = args.model, f"model folder {args.model}"
    if args.images is None:
        from capgen.benchmarks.fixtures import flickr_photos

        photos = flickr_photos()
        if not photos:
            raise SystemExit(
                "serve_load: no Flickr8k photos under /work/shared/data; give --images DIR"
            )
        images = load_images(photos[0].parent)
    else:
        images = load_images(args.images)
    precisions = ["fp32", *(["int8"] if has_int8(model) else [])]
    started = time.monotonic()
    results: dict[str, Any] = {
        "quick": bool(args.quick),
        "plan": asdict(plan),
        "machine": machine_info(),
        "model": model_note,
        "photos": len(images),
        "servers": {},
        "quietness": {},
    }

    def quietly(name: str, section: Any) -> Any:
        print(f"{name}:", flush=True)
        value, how = measured_quietly(section, print, name, plan.quiet_max_wait, retries=0)
        results["quietness"][name] = how.as_dict()
        return value

    for precision in precisions:
        for mode, options in MODES.items():
            name = f"capgen {precision.upper()} batching {mode}"
            extra = [*options, *(["--int8"] if precision == "int8" else [])]

            def section(extra: list[str] = extra, name: str = name) -> list[Level]:
                server = capgen_server(model, extra)
                try:
                    return run_levels(server, name, images, plan, baseline=False)
                finally:
                    server.stop()

            levels = quietly(name, section)
            results["servers"][name] = {
                "kind": "capgen",
                "precision": precision,
                "batching": mode,
                "options": extra,
                "levels": [asdict(x) for x in levels],
            }
    if baseline_files is not None:

        def baseline_section() -> list[Level]:
            server = baseline_server(*baseline_files)
            try:
                return run_levels(server, "tutorial baseline", images, plan, baseline=True)
            finally:
                server.stop()

        levels = quietly("tutorial baseline", baseline_section)
        results["servers"]["tutorial baseline"] = {
            "kind": "baseline",
            "precision": "fp32",
            "batching": "none",
            "options": [],
            "levels": [asdict(x) for x in levels],
        }
    else:
        print("tutorial baseline: skipped (--no-baseline or --model given)")
    results["http_overhead"] = quietly("HTTP overhead", lambda: http_overhead(model, images, plan))
    print(f"  {results['http_overhead']}")
    int8 = "int8" in precisions
    results["soak"] = quietly("soak", lambda: soak(model, images, plan, int8))
    soaked = results["soak"]
    print(
        f"  RSS {soaked['rss_start_mb']} -> {soaked['rss_end_mb']} MB ({soaked['rss_growth_pct']:+.2f}%) over {soaked['level']['ok']} requests"
        + (f", STOPPED SHORT of {plan.soak_requests}" if soaked["stopped_short"] else "")
    )
    results["noisy_sections"] = [n for n, q in results["quietness"].items() if not q["quiet"]]
    results["wall_seconds"] = round(time.monotonic() - started, 1)
    return json.loads(json.dumps(results, default=str))


if __name__ == "__main__":
    main()

"""Does capgen use every core? caption_batch and `capgen serve` on N = 1, 2, … cores, one table.

    python benchmarks/many_cores.py --model DIR --photos DIR [--cores 1,2,4] [--json OUT]

Needs nothing but an installed capgen (with the `serve` extra for the serve
rows), a model folder and a folder of photos: it imports only capgen's public
API and the standard library, so it runs from a wheel on a big machine.

For each N, every process of the measurement is pinned to the first N cores
(the affinity mask, which capgen's defaults follow):
- in-process: `Captioner(model, threads=N).caption_batch(photos, beam_size=1)`,
  images/s (median of the repetitions, after one warm-up pass);
- serve: `capgen serve` with its default settings (`--workers auto --threads
  auto`: what a user gets; the workers x threads it chose is the last
  column, from its start-up line), with `--clients` concurrent clients
  posting the photos (greedy) until `--requests` are answered: requests/s, p50
  and p99 latency. A 503 (the bounded queue refusing, by design) is retried
  after its Retry-After (at most 1 s), as a client would: the latency runs from
  the first try, and the 503s are counted in their own column. The clients run in this process, unpinned: on a machine with
  few cores they compete with the server for the same cores, which the table says.
Scaling = throughput on N cores ÷ (N × the 1-core throughput): 1.0 is perfect;
issue 25's goal is ≥ 0.8, with p99 ≤ 3 × p50 at 64 clients.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png"}
SERVING = re.compile(r"serving .* on http://([^\s:,]+):(\d+)")
PLAN = re.compile(r"capgen: (\d+) workers? x (\d+) threads? \(")
WORKER_READY = re.compile(r"capgen: worker \d+ ready")
_BATCH_CODE = """
import json, os, statistics, sys, time
cores = int(sys.argv[1]); repetitions = int(sys.argv[3]); photos = sys.argv[4:]
os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])
from capgen import Captioner
captioner = Captioner(sys.argv[2], threads=cores)
captioner.caption_batch(photos, beam_size=1)  # warm-up: first-call allocations
rates = []
for _ in range(repetitions):
    started = time.perf_counter()
    captioner.caption_batch(photos, beam_size=1)
    rates.append(len(photos) / (time.perf_counter() - started))
print(json.dumps({"images_per_second": statistics.median(rates), "repetitions": rates}))
"""


def _first_cores(count: int) -> list[int]:
    return sorted(os.sched_getaffinity(0))[:count]


def caption_batch_rate(
    model: Path, photos: list[Path], cores: int, repetitions: int
) -> dict[str, Any]:
    """Images/s of caption_batch in a fresh process pinned to `cores` cores."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _BATCH_CODE,
            str(cores),
            str(model),
            str(repetitions),
            *map(str, photos),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"caption_batch on {cores} cores failed: {done.stderr.strip()[-300:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _capgen() -> str:
    beside = Path(sys.executable).with_name("capgen")
    return str(beside) if beside.is_file() else "capgen"


def _plan(log: Path) -> str:
    """What `capgen serve`'s default settings chose, from its start-up line ("4 x 4")."""
    found = PLAN.search(log.read_text())
    return f"{found.group(1)} x {found.group(2)}" if found else "default (no plan line)"


def _ready(host: str, port: int) -> bool:
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request("GET", "/readyz")
        answer = connection.getresponse()
        answer.read()
        return answer.status == 200
    except OSError:
        return False
    finally:
        connection.close()


def _post(host: str, port: int, body: bytes) -> float | None:
    """Seconds until a 503 asks to come back (Retry-After, at most 1 s), or None once answered."""
    connection = http.client.HTTPConnection(host, port, timeout=120)
    try:
        connection.request("POST", "/v1/captions?beam_size=1", body, {"Content-Type": "image/jpeg"})
        answer = connection.getresponse()
        answer.read()
        if answer.status == 503:  # the bounded queue refusing, by design: a client retries
            try:
                return min(float(answer.getheader("Retry-After") or 0.1), 1.0)
            except ValueError:
                return 0.1
        if answer.status != 200:
            raise RuntimeError(f"HTTP {answer.status}")
        return None
    finally:
        connection.close()


def _caption(host: str, port: int, body: bytes) -> tuple[float, int]:
    """(seconds from the first try to the answer, 503s on the way): what a retrying client sees."""
    started, refused = time.perf_counter(), 0
    while (wait := _post(host, port, body)) is not None:
        refused += 1
        time.sleep(wait)
    return time.perf_counter() - started, refused


def serve_rate(
    model: Path, photos: list[Path], cores: int, clients: int, requests: int, log: Path
) -> dict[str, Any]:
    """Requests/s, p50 and p99 of `capgen serve` pinned to `cores` cores under `clients` clients."""
    mask = _first_cores(cores)
    command = [_capgen(), "serve", "--model", str(model), "--port", "0"]  # defaults: auto
    with log.open("w") as handle:
        server = subprocess.Popen(
            command,
            stdout=handle,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: os.sched_setaffinity(0, mask),
        )
    try:
        address = None
        deadline = time.monotonic() + 180
        while address is None and time.monotonic() < deadline:
            if server.poll() is not None:
                raise RuntimeError(f"capgen serve exited with {server.returncode}; see {log}")
            found = SERVING.search(log.read_text())
            address = (found.group(1), int(found.group(2))) if found else None
            time.sleep(0.2)
        while address is not None and not _ready(*address) and time.monotonic() < deadline:
            time.sleep(0.2)  # /readyz: the workers have loaded the model (503 "starting" before)
        if address is None or not _ready(*address):
            raise RuntimeError(f"capgen serve did not start in 180 s; see {log}")
        planned = PLAN.search(log.read_text())
        workers = int(planned.group(1)) if planned else 1
        while workers > 1 and len(WORKER_READY.findall(log.read_text())) < workers:
            if time.monotonic() > deadline:  # /readyz is 200 once any worker is: wait for all
                raise RuntimeError(f"not every capgen serve worker was ready in 180 s; see {log}")
            time.sleep(0.2)
        bodies = [photo.read_bytes() for photo in photos]
        for body in bodies[: max(1, min(len(bodies), 4))]:  # warm-up, not counted
            _caption(*address, body)
        latencies: list[float] = []
        refused = 0
        lock = threading.Lock()
        counter = iter(range(requests))

        def client() -> None:
            nonlocal refused
            for index in counter:  # shared: every request is taken once
                seconds, refusals = _caption(*address, bodies[index % len(bodies)])
                with lock:
                    refused += refusals
                    latencies.append(seconds)

        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            for future in [pool.submit(client) for _ in range(clients)]:
                future.result()
        wall = time.perf_counter() - started
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    ordered = sorted(latencies)
    return {
        "refused_503": refused,
        "requests_per_second": len(latencies) / wall,
        "p50_s": statistics.median(ordered),
        "p99_s": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))],
        "requests": len(latencies),
        "clients": clients,
        "workers": _plan(log),
    }


def measure(
    model: Path,
    photos: list[Path],
    cores: list[int],
    clients: int,
    requests: int,
    repetitions: int,
    serve: bool,
    scratch: Path,
) -> dict[str, Any]:
    """{"rows": {N: {...}}, ...}: each N's in-process and serve figures, with their scaling."""
    rows: dict[str, dict[str, Any]] = {}
    for count in cores:
        row: dict[str, Any] = {
            "caption_batch": caption_batch_rate(model, photos, count, repetitions)
        }
        if serve:
            row["serve"] = serve_rate(
                model, photos, count, clients, requests, scratch / f"serve-{count}.log"
            )
        rows[str(count)] = row
    one = rows.get("1")
    for label, row in rows.items():
        n = int(label)
        if one is not None:
            rate = row["caption_batch"]["images_per_second"]
            row["caption_batch"]["scaling"] = rate / (n * one["caption_batch"]["images_per_second"])
            if serve:
                row["serve"]["scaling"] = row["serve"]["requests_per_second"] / (
                    n * one["serve"]["requests_per_second"]
                )
        if serve:
            row["serve"]["p99_over_p50"] = row["serve"]["p99_s"] / row["serve"]["p50_s"]
    return {
        "model": str(model),
        "photos": len(photos),
        "cpus": os.cpu_count(),
        "cores": cores,
        "clients": clients,
        "requests": requests,
        "rows": rows,
    }


def table(result: dict[str, Any]) -> list[str]:
    """One Markdown table: a row per N."""
    lines = [
        "| cores | caption_batch img/s | scaling | serve req/s | scaling | p50 ms | p99 ms | p99/p50 | 503s | workers x threads |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for count, row in result["rows"].items():
        batch = row["caption_batch"]
        cells = [
            count,
            f"{batch['images_per_second']:.2f}",
            f"{batch.get('scaling', float('nan')):.2f}",
        ]
        serve = row.get("serve")
        if serve:
            cells += [
                f"{serve['requests_per_second']:.2f}",
                f"{serve.get('scaling', float('nan')):.2f}",
                f"{serve['p50_s'] * 1000:.0f}",
                f"{serve['p99_s'] * 1000:.0f}",
                f"{serve['p99_over_p50']:.2f}",
                str(serve["refused_503"]),
                str(serve["workers"]),
            ]
        else:
            cells += ["—"] * 7
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _photos(folder: Path, limit: int) -> list[Path]:
    found = sorted(p for p in folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
    if not found:
        raise SystemExit(f"many_cores.py: no .jpg/.jpeg/.png photos in {folder}")
    return found[:limit]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True, help="a capgen model folder")
    parser.add_argument("--photos", type=Path, required=True, help="a folder of photos")
    parser.add_argument(
        "--cores", help="comma-separated N (default: 1, 2, 4, … up to the cores here)"
    )
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=256, help="serve requests per N")
    parser.add_argument("--max-photos", type=int, default=32)
    parser.add_argument("--repetitions", type=int, default=2, help="caption_batch passes per N")
    parser.add_argument("--no-serve", action="store_true", help="caption_batch only")
    parser.add_argument("--json", type=Path, help="also write the results here (a new file)")
    args = parser.parse_args(argv)
    available = len(os.sched_getaffinity(0))
    if args.cores:
        cores = [int(part) for part in args.cores.split(",")]
    else:
        cores, n = [], 1
        while n < available:
            cores.append(n)
            n *= 2
        cores.append(available)
    if not all(1 <= n <= available for n in cores):
        parser.error(f"--cores must be from 1 to {available} (the cores this process may use)")
    if args.json is not None and args.json.exists():
        parser.error(f"{args.json} exists; give a new file")
    import tempfile

    with tempfile.TemporaryDirectory(prefix="capgen-many-cores-") as scratch:
        result = measure(
            args.model, _photos(args.photos, args.max_photos), cores, args.clients,
            args.requests, args.repetitions, not args.no_serve, Path(scratch),
        )  # fmt: skip
    print("\n".join(table(result)))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

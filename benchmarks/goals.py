"""Issue 25's goal rows, from one run: peers' table, warm latency against the tutorial, many cores.

Goals (issue 25):
- encoder, capgen's best mode whose captions are ≥ 97% identical to FP32's, ≤ the
  fastest peer at that accuracy;
- encoder, capgen's INT8-class mode ≤ the fastest peer's INT8;
- warm latency against the tutorial's Keras loop (one photo, greedy, the 7,577-word
  decoder): ≥ 60× under `auto`, ≥ 90× in the INT8-class mode;
- throughput on N cores ÷ (N × 1-core) ≥ 0.8, caption_batch and `capgen serve`
  (and serve's p99 ≤ 3 × p50 at 64 clients), for N = 1, 2, … up to the cores here.

`measure_latency` and `many_cores` run in the same section as the peers table;
`goal_rows` turns the three into rows with a met / not met each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from capgen.benchmarks.processes import in_turn
from capgen.benchmarks.stats import ratio_range, speedup, summarize

Echo = Callable[[str], None]
AGREEMENT = 0.97


def tune_into(model_dir: Path, photos: Sequence[Path], home: Path, threads: int) -> dict[str, Any]:
    """`capgen tune` for `model_dir` on `photos`, its decision stored in the scratch `home`."""
    code = (
        "import json, sys\n"
        "from capgen.runtime.tuning import tune\n"
        "r = tune(sys.argv[1], sys.argv[3:], threads=int(sys.argv[2]))\n"
        "print(json.dumps({'mode': r.mode, 'engine': r.engine, 'candidates': r.candidates}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(model_dir), str(threads), *map(str, photos)],
        capture_output=True,
        text=True,
        env={**os.environ, "CAPGEN_HOME": str(home)},
        check=False,
    )
    if done.returncode != 0:
        tail = [line for line in done.stderr.splitlines() if line.strip()][-1:]
        raise RuntimeError(f"capgen tune failed: {' '.join(tail)}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def measure_latency(
    model: Any,
    weights: Path,
    photos: Sequence[Path],
    repetitions: int,
    scratch: Path,
    echo: Echo,
) -> dict[str, Any]:
    """Warm one-photo greedy latency: the tutorial's loop, capgen `auto` (tuned here), capgen int8."""
    from capgen.benchmarks.processes import Worker

    home = scratch / "goals_home"
    threads = len(os.sched_getaffinity(0))
    echo(f"  tuning auto for {model.name} (capgen tune, scratch cache)")
    tuned = tune_into(model.model_dir, photos, home, threads)
    from capgen.runtime.manifest import load_manifest

    arms: dict[str, dict[str, Any]] = {
        "baseline": {"weights": weights},
        "capgen_auto": {"precision": "auto", "environment": {"CAPGEN_HOME": str(home)}},
        "capgen_int8": {"precision": "int8"},
    }
    missing = {}
    if not load_manifest(model.model_dir).encoder.int8_file:
        missing["capgen_int8"] = (
            "the model has no INT8 encoder (the bench quantizes it unless int8=False)"
        )
        del arms["capgen_int8"]
    workers: dict[str, Worker] = {}
    try:
        for name, options in arms.items():
            workers[name] = Worker(
                "baseline" if name == "baseline" else "capgen",
                model,
                scratch / f"goals-{name}.log",
                **options,
            )
        for worker in workers.values():
            worker.request("latency", photo=str(photos[0]), beam=1)  # warm-up
        seconds: dict[str, list[float]] = {name: [] for name in workers}
        texts: dict[str, list[str]] = {name: [] for name in workers}
        names = list(workers)
        for rep in range(repetitions):
            for name in in_turn(names, rep):
                answer = workers[name].request(
                    "latency", photo=str(photos[rep % len(photos)]), beam=1
                )
                seconds[name].append(answer["seconds"])
                texts[name].append(answer["text"])
    finally:
        for worker in workers.values():
            worker.close()
    stats = {name: summarize(values) for name, values in seconds.items()}
    result: dict[str, Any] = {
        "model": model.name,
        "seconds": stats,
        "tuned": tuned,
        "absent": missing,
    }
    for name in (arm for arm in ("capgen_auto", "capgen_int8") if arm in stats):
        result[f"speedup_{name}"] = speedup(stats["baseline"], stats[name])
        result[f"range_{name}"] = ratio_range(stats["baseline"], stats[name])
        result[f"same_caption_{name}"] = sum(
            a == b for a, b in zip(texts["baseline"], texts[name], strict=True)
        )
    echo(
        f"  warm latency: tutorial {stats['baseline']['median']:.2f} s, "
        + ", ".join(
            f"{name} {stats[name]['median'] * 1000:.0f} ms" for name in stats if name != "baseline"
        )
    )
    return result


def many_cores(
    model_dir: Path,
    photos: Sequence[Path],
    requests: int,
    repetitions: int,
    serve: bool,
    scratch: Path,
) -> dict[str, Any]:
    """benchmarks/many_cores.py's measurement for N = 1, 2, … up to the cores here (doubling)."""
    from capgen.benchmarks import many_cores as script

    available = len(os.sched_getaffinity(0))
    counts, n = [], 1
    while n < available:
        counts.append(n)
        n *= 2
    counts.append(available)
    return script.measure(
        model_dir, list(photos), counts, 64, requests, repetitions, serve, scratch
    )


def row(
    what: str, value: float | None, comparison: str, target: float, detail: str
) -> dict[str, Any]:
    """One goal row (this module's, or another section's: web_bench.py), as `goal_table` prints it."""
    met = value is not None and (value >= target if comparison == ">=" else value <= target)
    return {
        "what": what,
        "value": value,
        "target": f"{comparison} {target:g}",
        "met": bool(met),
        "detail": detail,
    }


def _fastest(
    rows: dict[str, Any], keep: Callable[[dict[str, Any]], bool]
) -> tuple[str, dict[str, Any]] | None:
    chosen = [(name, row) for name, row in rows.items() if keep(row)]
    return min(chosen, key=lambda item: item[1]["ms"]["median"]) if chosen else None


def _accurate(row: dict[str, Any]) -> bool:
    return float(row.get("identical_share", 0.0)) >= AGREEMENT


def _encoder_rows(peers: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rows = peers.get("rows", {})
    found: dict[str, dict[str, Any]] = {}
    pairs = {
        "encoder_best": (
            "encoder: capgen's fastest mode with captions ≥ 97% identical to FP32 ÷ the fastest peer at that accuracy",
            lambda r: not r["peer"] and _accurate(r),
            lambda r: r["peer"] and _accurate(r),
        ),
        "encoder_int8": (
            "encoder: capgen's INT8-class mode ÷ the fastest peer's INT8",
            lambda r: not r["peer"] and r["kind"] == "int8",
            lambda r: r["peer"] and r["kind"] == "int8",
        ),
    }
    for key, (what, ours, theirs) in pairs.items():
        mine, peer = _fastest(rows, ours), _fastest(rows, theirs)
        if mine is None or peer is None:
            found[key] = row(
                what,
                None,
                "<=",
                1.0,
                "not measured: " + ("no capgen row" if mine is None else "no peer row"),
            )
            continue
        value = mine[1]["ms"]["median"] / peer[1]["ms"]["median"]
        detail = (
            f"{mine[1]['label']} {mine[1]['ms']['median']:.1f} ms vs "
            f"{peer[1]['label']} {peer[1]['ms']['median']:.1f} ms"
        )
        found[key] = row(what, value, "<=", 1.0, detail)
    return found


def goal_rows(
    peers: dict[str, Any] | None, latency: dict[str, Any] | None, cores: dict[str, Any] | None
) -> dict[str, dict[str, Any]]:
    """Each goal's measured value and whether it is met; value None: not measured (detail says why)."""
    found = _encoder_rows(peers) if peers else {}
    for key, what, part in (
        ("warm_latency", "warm latency vs the tutorial", latency),
        ("many_cores", "throughput on N cores", cores),
    ):
        if part and "error" in part:
            found[key] = row(what, None, ">=", 0.0, f"not measured: {part['error']}")
    latency = None if latency and "error" in latency else latency
    cores = None if cores and "error" in cores else cores
    if latency:
        stats = latency["seconds"]
        for key, name, target, mode in (
            (
                "warm_auto",
                "capgen_auto",
                60.0,
                f"auto → {latency['tuned']['mode']} on {latency['tuned']['engine']}",
            ),
            ("warm_int8", "capgen_int8", 90.0, "--precision int8"),
        ):
            if name not in stats:
                found[key] = row(
                    f"warm latency vs the tutorial, {mode}", None, ">=", target,
                    "not measured: " + latency["absent"].get(name, "no such arm"),
                )  # fmt: skip
                continue
            low, high = latency[f"range_{name}"]
            found[key] = row(
                f"warm latency vs the tutorial, {mode}",
                latency[f"speedup_{name}"],
                ">=",
                target,
                f"tutorial {stats['baseline']['median'] * 1000:.0f} ms vs {stats[name]['median'] * 1000:.1f} ms "
                f"(IQR range {low:.1f}–{high:.1f}×, {latency['model']})",
            )
    if cores:
        for count, at_count in cores["rows"].items():
            if count == "1":
                continue
            batch = at_count["caption_batch"]
            found[f"scaling_batch@{count}"] = row(
                f"caption_batch throughput on {count} cores ÷ ({count} × 1-core)",
                batch.get("scaling"),
                ">=",
                0.8,
                f"{batch['images_per_second']:.2f} img/s vs {cores['rows']['1']['caption_batch']['images_per_second']:.2f} on 1 core",
            )
            serve = at_count.get("serve")
            if serve:
                found[f"scaling_serve@{count}"] = row(
                    f"capgen serve throughput on {count} cores ÷ ({count} × 1-core), {cores['clients']} clients",
                    serve.get("scaling"),
                    ">=",
                    0.8,
                    f"{serve['requests_per_second']:.2f} req/s, workers {serve['workers']}",
                )
                found[f"p99_p50@{count}"] = row(
                    f"capgen serve p99 ÷ p50 on {count} cores, {cores['clients']} clients",
                    serve["p99_over_p50"],
                    "<=",
                    3.0,
                    f"p50 {serve['p50_s'] * 1000:.0f} ms, p99 {serve['p99_s'] * 1000:.0f} ms",
                )
    return found


def goal_table(goals: dict[str, dict[str, Any]]) -> list[str]:
    """The goal rows as a Markdown table (this module's rows, or another section's made by `row`)."""
    lines = ["| goal | measured | target | met | how |", "|---|---|---|---|---|"]
    for entry in goals.values():
        value = "—" if entry["value"] is None else f"{entry['value']:.3g}"
        lines.append(
            f"| {entry['what']} | {value} | {entry['target']} | {'yes' if entry['met'] else 'NO'} | {entry['detail']} |"
        )
    return lines


def markdown(goals: dict[str, dict[str, Any]], cores: dict[str, Any] | None) -> list[str]:
    """RESULTS.md lines: the goal rows, then the many-cores table."""
    lines = ["", "## Goals (issue 25)", *goal_table(goals)]
    if cores and "error" not in cores:
        from capgen.benchmarks.many_cores import table

        lines += [
            "",
            f"### Many cores ({cores['photos']} photos, greedy; serve: {cores['clients']} clients, "
            f"{cores['requests']} requests; the clients share the machine's cores with the server)",
            *table(cores),
        ]
    return lines

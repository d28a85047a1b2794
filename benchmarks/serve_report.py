"""serve.json, SERVE.md and serve_throughput.png from a serve_load.py run, and the issue's goals.

Each goal of issue 12 is judged here from the measured figures and printed
as met / not met with the value, so the closing note can quote it; a goal
whose figures were not taken (no baseline, no INT8 encoder) says so
instead of passing.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Any

from capgen.benchmarks.results_folder import ResultsFolder

BASELINE = "tutorial baseline"
FP32_ON = "capgen FP32 batching on"
INT8_ON = "capgen INT8 batching on"
GOAL_CLIENTS = 16
STRESS_CLIENTS = 64
NO_FAILURES = f"under {STRESS_CLIENTS} clients no request fails except deliberate 503s"
TAIL = f"under {STRESS_CLIENTS} clients p99 stays within 3x p50"
OVERHEAD = "at 1 client, HTTP adds <= 5 ms to the in-process latency"
SOAK_REQUESTS = 10_000
SOAK = f"memory flat (<= 5% RSS growth) over a soak of {SOAK_REQUESTS:,} requests"


def _level(results: dict[str, Any], server: str, clients: int) -> dict[str, Any] | None:
    for level in results["servers"].get(server, {}).get("levels", []):
        if level["clients"] == clients:
            return dict(level)
    return None


def _goal(goal: str, met: bool | None, value: str) -> dict[str, Any]:
    return {"goal": goal, "met": met, "value": value}


def _speedup_goal(results: dict[str, Any], server: str, wanted: float) -> dict[str, Any]:
    name = f"{server} at {GOAL_CLIENTS} clients >= {wanted:g}x the baseline's throughput"
    ours, theirs = _level(results, server, GOAL_CLIENTS), _level(results, BASELINE, GOAL_CLIENTS)
    if ours is None or theirs is None or not theirs["throughput_rps"]:
        return _goal(name, None, "not measured in this run")
    ratio = ours["throughput_rps"] / theirs["throughput_rps"]
    value = f"{ratio:.1f}x ({ours['throughput_rps']:.2f} vs {theirs['throughput_rps']:.3f} req/s)"
    return _goal(name, ratio >= wanted, value)


def _overhead_goal(results: dict[str, Any]) -> dict[str, Any]:
    overhead = results.get("http_overhead")
    if not overhead:
        return _goal(OVERHEAD, None, "not measured")
    value = (
        f"{overhead['added_median_ms']:+.2f} ms (median {overhead['http_median_ms']:.2f} "
        f"vs {overhead['in_process_median_ms']:.2f} ms in-process)"
    )
    return _goal(OVERHEAD, overhead["added_median_ms"] <= 5.0, value)


def _stress_goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """No failures but 503s, and p99/p50, over every capgen server at 64 clients."""
    stressed = {
        name: level
        for name, server in results["servers"].items()
        if server["kind"] == "capgen"
        and (level := _level(results, name, STRESS_CLIENTS)) is not None
    }
    if not stressed:
        return [_goal(NO_FAILURES, None, "not measured"), _goal(TAIL, None, "not measured")]
    bad = sum(level["failed"] + level["unfinished"] for level in stressed.values())
    refused = sum(level["refused_503"] for level in stressed.values())
    failures = f"{bad} failed or unfinished, {refused} 503s, over {len(stressed)} capgen servers"
    worst_name = max(stressed, key=lambda n: _ratio(stressed[n]))
    worst = _ratio(stressed[worst_name])
    each = ", ".join(f"{n.removeprefix('capgen ')} {_ratio(x):.2f}" for n, x in stressed.items())
    return [
        _goal(NO_FAILURES, bad == 0, failures),
        _goal(TAIL, worst <= 3.0, f"worst p99/p50 {worst:.2f} ({worst_name}); {each}"),
    ]


def _soak_goal(results: dict[str, Any]) -> dict[str, Any]:
    soak = results.get("soak")
    if not soak:
        return _goal(SOAK, None, "not measured")
    level = soak["level"]
    value = (
        f"{soak['rss_growth_pct']:+.2f}% ({soak['rss_start_mb']} -> {soak['rss_end_mb']} MB, "
        f"max {soak['rss_max_mb']} MB; {level['ok']:,} requests answered, {soak['server']})"
    )
    if level["ok"] < SOAK_REQUESTS:  # cut short by its time bound, or fewer asked (--soak-requests)
        planned = soak_planned(results)
        why = (
            "the soak stopped short of its request count"
            if level["ok"] < planned
            else f"this run asked for {planned:,} requests only"
        )
        return _goal(SOAK, None, f"{why}: {level['ok']:,} of {SOAK_REQUESTS:,}: {value}")
    return _goal(SOAK, soak["rss_growth_pct"] <= 5.0, value)


def soak_planned(results: dict[str, Any]) -> int:
    """The requests the soak set out to answer (runs before this field: the plan's)."""
    soak = results.get("soak") or {}
    return int(soak.get("requests_planned", results.get("plan", {}).get("soak_requests", 0)))


def soak_text(results: dict[str, Any]) -> str:
    """The soak's paragraph; it says first, in so many words, when the soak stopped short."""
    soak = results["soak"]
    level = soak["level"]
    planned = soak_planned(results)
    limit = soak.get("limit_seconds", results.get("plan", {}).get("soak_seconds"))
    bound = (
        f"its time bound of {limit:g} s" if isinstance(limit, (int, float)) else "its time bound"
    )
    short = (
        f"**The soak stopped short of its request count: {level['ok']:,} of {planned:,} requests "
        f"answered in {level['seconds']:.0f} s ({bound}; {level['failed']} failed, "
        f"{level['unfinished']} unfinished, {level['refused_503']} refused), so the memory figure "
        f"covers only those.** "
        if level["ok"] < planned
        else ""
    )
    fewer = (
        f"(This run asked for {planned:,} requests, fewer than the goal's {SOAK_REQUESTS:,}.) "
        if planned < SOAK_REQUESTS
        else ""
    )
    return (
        f"{short}{fewer}{soak['server']}: {level['ok']:,} requests ({level['failed']} failed), "
        f"{level['throughput_rps']:.1f} req/s; server RSS {soak['rss_start_mb']} -> {soak['rss_end_mb']} MB "
        f"({soak['rss_growth_pct']:+.2f}%), max {soak['rss_max_mb']} MB, sampled {len(soak['samples'])} times."
    )


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's goals, each {goal, met (True/False/None = not measured), value}."""
    return [
        _speedup_goal(results, FP32_ON, 20.0),
        _speedup_goal(results, INT8_ON, 40.0),
        _overhead_goal(results),
        *_stress_goals(results),
        _soak_goal(results),
    ]


def _ratio(level: dict[str, Any]) -> float:
    value = level.get("p99_over_p50")
    return float(value) if isinstance(value, (int, float)) else math.inf


def _verdict(goal: dict[str, Any]) -> str:
    return {True: "met", False: "NOT MET", None: "not measured"}[goal["met"]]


def _ms(value: Any) -> str:
    return "–" if value is None else f"{value:,.1f}"


def load_table(results: dict[str, Any]) -> list[str]:
    """Throughput and latency per server and clients (SERVE.md; docs/serve.md shows the goals)."""
    lines = [
        "| server | clients | req/s | p50 ms | p95 ms | p99 ms | p99/p50 | ok | 503 | failed | unfinished |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, server in results["servers"].items():
        for level in server["levels"]:
            lines.append(
                f"| {name} | {level['clients']} | {level['throughput_rps']:.2f} | {_ms(level['p50_ms'])} | "
                f"{_ms(level['p95_ms'])} | {_ms(level['p99_ms'])} | {_ms(level['p99_over_p50'])} | "
                f"{level['ok']} | {level['refused_503']} | {level['failed']} | {level['unfinished']} |"
            )
    return lines


def goal_lines(results: dict[str, Any]) -> list[str]:
    return [f"- {_verdict(goal)}: {goal['goal']}: {goal['value']}" for goal in goals(results)]


def markdown(results: dict[str, Any]) -> str:
    machine = results.get("machine", {})
    quiet = [
        f"- {name}: other processes {q['other_cores']:.2f} cores, load {q['load_average_before']:.2f} -> "
        f"{q['load_average_after']:.2f}{'' if q['quiet'] else ' (NOISY)'}"
        for name, q in results["quietness"].items()
    ]
    overhead = results.get("http_overhead") or {}
    soak = results.get("soak") or {}
    parts = [
        "# capgen serve under load"
        + (" (QUICK run: not figures to quote)" if results["quick"] else ""),
        "",
        f"Model: {results['model']}. Photos: {results['photos']} (raw bodies, greedy `beam_size=1`). "
        f"Machine: {machine.get('cpu', '?')}, {machine.get('logical_cores', os.cpu_count())} cores. "
        f"Wall time {results['wall_seconds']} s. Produced by `benchmarks/serve_load.py`.",
        "",
        "## Goals (issue 12)",
        "",
        *goal_lines(results),
        "",
        "## Throughput and latency",
        "",
        *load_table(results),
        "",
        "Latencies are of the requests answered 200; a level stops starting requests after "
        f"{results['plan']['seconds']:g} s (baseline {results['plan']['baseline_seconds']:g} s) and cancels what is "
        "still in flight after its grace period (counted unfinished).",
        "",
        "## HTTP overhead at 1 client",
        "",
        (
            f"{overhead.get('server', '')}: median {overhead.get('http_median_ms')} ms over HTTP vs "
            f"{overhead.get('in_process_median_ms')} ms for `Captioner.caption` in-process on the same photos "
            f"({overhead.get('samples')} each, alternating): {overhead.get('added_median_ms', 0):+.2f} ms."
        )
        if overhead
        else "not measured",
        "",
        "## Soak",
        "",
        soak_text(results) if soak else "not measured",
        "",
        "## Machine quietness per section",
        "",
        *quiet,
        "",
        "## docs/serve.md snippet",
        "",
        "```markdown",
        *load_table(results),
        "",
        *goal_lines(results),
        "```",
        "",
    ]
    return "\n".join(parts)


def chart(results: dict[str, Any], path: Path) -> bool:
    """Throughput and p99 against clients, one line per server (False without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    ticks = sorted(
        {lv["clients"] for server in results["servers"].values() for lv in server["levels"]}
    )
    for name, server in results["servers"].items():
        levels = server["levels"]
        style = "k--o" if server["kind"] == "baseline" else "-o"
        clients = [level["clients"] for level in levels]
        left.plot(
            clients, [max(level["throughput_rps"], 1e-3) for level in levels], style, label=name
        )
        p99 = [level["p99_ms"] for level in levels]
        right.plot(
            [c for c, v in zip(clients, p99, strict=True) if v is not None],
            [v for v in p99 if v is not None],
            style,
            label=name,
        )
    for axis, title in ((left, "throughput (requests/s)"), (right, "p99 latency (ms)")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(ticks, [str(tick) for tick in ticks])
        axis.set_yscale("log")
        axis.set_xlabel("concurrent clients")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=7)
    figure.suptitle(
        "capgen serve vs the tutorial behind FastAPI" + (" (quick run)" if results["quick"] else "")
    )
    figure.tight_layout()
    try:
        figure.savefig(path, dpi=110)
    finally:
        plt.close(figure)
    return True


OUTPUT_FILES = ("serve.json", "SERVE.md", "serve_throughput.png")


def write_outputs(results: dict[str, Any], out: Path) -> list[str]:
    """serve.json, SERVE.md, serve_throughput.png into `out`; returns the goal lines to print."""
    folder = ResultsFolder(out)
    results = {**results, "goals": goals(results)}
    folder.write_text("serve.json", json.dumps(results, indent=2) + "\n")
    folder.write_text("SERVE.md", markdown(results))
    drawn = importlib.util.find_spec("matplotlib") is not None
    if drawn:
        folder.write_with("serve_throughput.png", lambda path: chart(results, path))
    written = ["serve.json", "SERVE.md", *(["serve_throughput.png"] if drawn else [])]
    return [*goal_lines(results), f"wrote {', '.join(written)} into {out}"]

"""What each `--precision` mode costs before its first caption, and what it saves after (issue 25).

A faster encoder is not free: bf16 runs on OpenVINO, which compiles the graph
for this CPU when the model loads, so a mode that wins once warm may lose a
one-shot `capgen caption photo.jpg`. For every mode (fp32, bf16, int8, auto),
in the same run and taking turns (who goes first rotates):

- cold start: a fresh `capgen caption PHOTO --precision MODE -v` process for one
  photo (through launch.py, like the tutorial sections' cold start): its wall time,
  its own peak RSS, and from its `-v` lines the part spent loading the model
  ("loaded in X s": sessions made, graphs compiled) and its one caption
  (the first caption, "captioned in");
- warm: one long-lived worker per mode (worker.py), captioning the bench photos
  in turn after its first caption; its median caption time and its peak RSS.

From these, `break_even` says after how many photos in one process a mode's
slower start is paid back by its faster captions (fp32 is the reference), and
`verdict` turns that into the sentence the docs print. Modes that cannot run
here (bf16 without OpenVINO or a bf16 CPU, int8 without an INT8 graph, auto
without a tuned decision) are reported with the reason, not failed.
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from capgen.benchmarks.processes import in_turn
from capgen.benchmarks.stats import summarize

Echo = Callable[[str], None]
MODES = ("fp32", "bf16", "int8", "auto")
REFERENCE = "fp32"
# Few rounds: each is a whole process per mode (about 1-3 s), and the section must stay short.
MAX_COLD_ROUNDS = 3
SETTLE_SECONDS = 0.02
_LOADED = re.compile(r"loaded in (?P<seconds>[0-9.]+) s")
_CAPTIONED = re.compile(r"captioned in [0-9.]+ s \((?P<ms>[0-9.]+) ms per image\)")
_PLAN = re.compile(r"; (?P<plan>precision [^;]+);")


def _capgen_cli() -> str:
    beside = Path(sys.executable).with_name("capgen")
    return str(beside) if beside.is_file() else "capgen"


def mode_absences(manifest: Any, auto_reason: str | None) -> dict[str, str]:
    """Mode -> why it cannot run here; modes that can are not listed.

    `auto_reason`: why `auto` has no tuned decision in this run (None: it has one).
    Without one, auto would silently be fp32, which is not what it costs once tuned.
    """
    from capgen.runtime.errors import CapgenError
    from capgen.runtime.precision import mode_plan

    absent: dict[str, str] = {}
    for mode in MODES:
        if mode == "auto":
            if auto_reason is not None:
                absent[mode] = auto_reason
            continue
        try:
            mode_plan(manifest, mode)
        except CapgenError as exc:
            absent[mode] = str(exc)
    return absent


def parse_verbose(stderr: str) -> dict[str, Any]:
    """The load time, the one caption's time and what ran, from `capgen caption -v`'s lines."""
    found: dict[str, Any] = {}
    loaded = _LOADED.findall(stderr)
    if loaded:
        found["load_seconds"] = float(loaded[-1])
    captioned = _CAPTIONED.search(stderr)
    if captioned:
        found["caption_ms"] = float(captioned.group("ms"))
    plan = _PLAN.search(stderr)
    if plan:
        found["runs_as"] = plan.group("plan").strip()
    return found


def _cold(
    modes: Sequence[str],
    command: Callable[[str], list[str]],
    rounds: int,
    scratch: Path,
    environment: Mapping[str, str],
) -> dict[str, dict[str, Any]]:
    """Each mode's one-photo process, `rounds` times in turn (after `_untimed`)."""
    from capgen.benchmarks.processes import run_cold

    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    for turn in range(rounds):
        for mode in in_turn(modes, turn):
            log = scratch / f"cold-{mode}-{turn}.log"
            done = run_cold(command(mode), log, environment)
            parsed = parse_verbose(log.read_text())
            missing = {"load_seconds", "caption_ms"} - set(parsed)
            if missing:
                raise RuntimeError(f"capgen caption -v printed no {', '.join(sorted(missing))}")
            runs[mode].append({"wall": done.wall_seconds, "rss": done.peak_rss_mb, **parsed})
    return {
        mode: {
            "wall_seconds": summarize([run["wall"] for run in rows]),
            "peak_rss_mb": summarize([run["rss"] for run in rows]),
            "load_seconds": summarize([run["load_seconds"] for run in rows]),
            "first_caption_ms": summarize([run["caption_ms"] for run in rows]),
            "runs_as": rows[-1].get("runs_as", mode),
        }
        for mode, rows in runs.items()
    }


def _untimed(
    modes: Sequence[str],
    command: Callable[[str], list[str]],
    scratch: Path,
    environment: Mapping[str, str],
) -> dict[str, str]:
    """One untimed process per mode; mode -> why it failed, for those that did.

    It pays for the page cache and capgen's first-load work (file stamps, the
    optimised-graph cache), which every later one-shot caption skips; a mode
    whose engine cannot run the graph here fails now, alone, with its reason.
    """
    from capgen.benchmarks.processes import run_cold

    failed: dict[str, str] = {}
    for mode in modes:
        try:
            run_cold(command(mode), scratch / f"cold-{mode}-untimed.log", environment)
        except RuntimeError as exc:
            last = [line for line in str(exc).splitlines() if line.strip()][-1:]
            failed[mode] = f"capgen caption --precision {mode} failed: {' '.join(last)}"
    return failed


def _warm(
    modes: Sequence[str],
    model_dir: Path,
    photos: Sequence[Path],
    rounds: int,
    scratch: Path,
    environment: Mapping[str, str],
) -> dict[str, dict[str, Any]]:
    """Each mode's worker: its first caption, then every photo `rounds` times in turn."""
    from capgen.benchmarks.fixtures import BenchModel
    from capgen.benchmarks.processes import Worker

    # The capgen arm reads only model_dir; the Keras fields are the tutorial arm's.
    model = BenchModel(model_dir.name, model_dir, model_dir, model_dir, False, "mode costs")
    workers: dict[str, Worker] = {}
    try:
        for mode in modes:
            workers[mode] = Worker(
                "capgen",
                model,
                scratch / f"warm-{mode}.log",
                precision=mode,
                environment=dict(environment),
            )
        first = {
            mode: worker.request("latency", photo=str(photos[0]), beam=1)["seconds"]
            for mode, worker in workers.items()
        }
        seconds: dict[str, list[float]] = {mode: [] for mode in modes}
        turn = 0
        for _ in range(rounds):
            for photo in photos:
                for mode in in_turn(modes, turn):
                    time.sleep(SETTLE_SECONDS)  # the last worker's threads stop spinning
                    answer = workers[mode].request("latency", photo=str(photo), beam=1)
                    seconds[mode].append(answer["seconds"])
                turn += 1
        return {
            mode: {
                "load_seconds": float(worker.ready["setup"]["model_load"]),
                "first_caption_ms": first[mode] * 1000,
                "caption_ms": summarize([s * 1000 for s in seconds[mode]]),
                "peak_rss_mb": float(worker.request("rss")["peak_rss_mb"]),
            }
            for mode, worker in workers.items()
        }
    finally:
        for worker in workers.values():
            worker.close()


def measure_mode_costs(
    model_dir: Path,
    photos: Sequence[Path],
    rounds: int,
    scratch: Path,
    home: Path,
    echo: Echo,
    auto_reason: str | None,
    untimed: bool = True,
) -> dict[str, Any]:
    """Cold start, load, first and warm caption, and peak RSS of every precision mode.

    `home`: the CAPGEN_HOME the processes use (the peers section's scratch one,
    which holds `auto`'s decision tuned in the same run); `rounds`: at most
    MAX_COLD_ROUNDS cold processes per mode, and each photo that many times warm.
    `untimed`: one untimed process per mode first (`_untimed`; the bench always runs it, a
    smoke test may leave it out: a mode that cannot run then fails its timed process instead).
    """
    from capgen.runtime.manifest import load_manifest

    scratch.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(model_dir)
    absent = mode_absences(manifest, auto_reason)
    modes = [mode for mode in MODES if mode not in absent]
    for mode, reason in absent.items():
        echo(f"  mode costs: {mode} left out ({reason})")
    rounds = max(1, min(rounds, MAX_COLD_ROUNDS))
    photo = photos[0]
    environment = {**os.environ, "CAPGEN_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "2"}

    def command(mode: str) -> list[str]:
        return [_capgen_cli(), "caption", str(photo), "--model", str(model_dir),
                "--precision", mode, "--beam-size", "1", "-v"]  # fmt: skip

    result: dict[str, Any] = {
        "photo": photo.name,
        "photos": len(photos),
        "rounds": rounds,
        "reference": REFERENCE,
        "command": "capgen caption PHOTO --precision MODE --beam-size 1 -v",
        "modes": {},
        "absent": absent,
    }
    if not modes:
        return result
    echo(f"  mode costs: {', '.join(modes)}: one-photo processes, {rounds} round(s)")
    failed = _untimed(modes, command, scratch, environment) if untimed else {}
    for mode, reason in failed.items():
        echo(f"  mode costs: {mode} left out ({reason})")
        absent[mode] = reason
    modes = [mode for mode in modes if mode not in failed]
    if not modes:
        return result
    cold = _cold(modes, command, rounds, scratch, environment)
    echo(f"  mode costs: warm workers, {len(photos)} photo(s) × {rounds} round(s)")
    warm = _warm(modes, model_dir, photos, rounds, scratch, environment)
    for mode in modes:
        result["modes"][mode] = {"cold": cold[mode], "warm": warm[mode]}
    for mode in modes:
        result["modes"][mode]["break_even"] = break_even(result["modes"], mode)
    echo(f"  {verdict(result)}")
    return result


def break_even(modes: Mapping[str, Any], mode: str) -> dict[str, Any]:
    """Against fp32: the extra cold start, the saving per warm caption, and the photos to pay back.

    `photos`: the smallest N with extra ≤ N × saving (1 when the mode also starts
    no slower); None when it never pays back (not faster once warm) or for fp32 itself.
    """
    if mode == REFERENCE or REFERENCE not in modes:
        return {"extra_seconds": None, "saving_ms": None, "photos": None}
    reference, this = modes[REFERENCE], modes[mode]
    extra = this["cold"]["wall_seconds"]["median"] - reference["cold"]["wall_seconds"]["median"]
    saving = reference["warm"]["caption_ms"]["median"] - this["warm"]["caption_ms"]["median"]
    photos: int | None = None
    if saving > 0:
        # Rounded first: 1.0 s / 50 ms is 20 photos, not the 21 a float's last bit would make it.
        photos = max(1, math.ceil(round(extra * 1000 / saving, 6)))
    return {"extra_seconds": extra, "saving_ms": saving, "photos": photos}


def _pays_off(mode: str, entry: Mapping[str, Any]) -> str:
    if mode == REFERENCE:
        return "— (reference)"
    photos = entry["break_even"]["photos"]
    if photos is None:
        return "never (not faster warm)"
    if photos == 1:
        return "from the first photo"
    return f"after about {photos} photos"


def verdict(section: Mapping[str, Any]) -> str:
    """One or two sentences from the numbers: which modes suit one-shot captions, which serve/batches."""
    modes: Mapping[str, Any] = section.get("modes") or {}
    if not modes:
        return "No precision mode could run here."

    def cold(mode: str) -> float:
        return float(modes[mode]["cold"]["wall_seconds"]["median"])

    def warm(mode: str) -> float:
        return float(modes[mode]["warm"]["caption_ms"]["median"])

    quickest = min(modes, key=cold)
    fastest = min(modes, key=warm)
    text = (
        f"For one-shot captions (`capgen caption photo.jpg`) {quickest} starts quickest "
        f"({cold(quickest):.2f} s for one photo); once warm (`capgen serve`, batches, folders) "
        f"{fastest} captions fastest ({warm(fastest):.0f} ms a photo); how close each mode's "
        "captions are to fp32's is the peers table's last columns."
    )
    reference_load = (
        modes[REFERENCE]["cold"]["load_seconds"]["median"] if REFERENCE in modes else None
    )
    for mode, entry in modes.items():
        even = entry["break_even"]
        if mode == REFERENCE or even["extra_seconds"] is None:
            continue
        load = entry["cold"]["load_seconds"]["median"]
        loads = f"{mode} loads in {load:.2f} s (fp32 {reference_load:.2f} s)"
        start = f"{even['extra_seconds']:+.2f} s of cold start against fp32"
        if even["photos"] is None:
            text += f" {loads}, {start}, and is not faster once warm: fp32 suits every use better."
        elif even["photos"] == 1:
            text += (
                f" {loads}, {start}, and saves {even['saving_ms']:.0f} ms a photo once warm: "
                "worth it from the first photo, one-shot captions included."
            )
        else:
            text += (
                f" {loads}, {start}, and saves {even['saving_ms']:.0f} ms a photo once warm: "
                f"worth it after about {even['photos']} photos in one process, so for `serve` "
                "and batches rather than one-shot captions."
            )
    return text


def markdown(section: Mapping[str, Any]) -> list[str]:
    """RESULTS.md lines: the per-mode table, the verdict, then the modes that did not run and why."""
    lines = [
        "",
        f"## Precision modes: cold start, memory, first and warm caption "
        f"({section['rounds']} round(s), {section['photos']} photo(s) warm)",
        "",
        f"Cold: a fresh `{section['command']}` for one photo ({section['photo']}), modes taking "
        'turns after one untimed run each; load: its `-v` "loaded in" (sessions made, graphs '
        "compiled); first caption: that process's one caption. Warm: a long-lived worker per "
        "mode, each photo in turn after its first caption. Pays off: photos in one process "
        "after which the mode's extra cold start over fp32 is paid back by its warm saving.",
        "",
        "| mode | runs as | cold start s (IQR) | of which load s | first caption ms | "
        "warm caption ms (IQR) | peak RSS MB cold / warm | pays off |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode, entry in section["modes"].items():
        cold, warm = entry["cold"], entry["warm"]
        wall, caption = cold["wall_seconds"], warm["caption_ms"]
        lines.append(
            f"| {mode} | {cold['runs_as']} | {wall['median']:.2f} ({wall['q1']:.2f}–{wall['q3']:.2f}) | "
            f"{cold['load_seconds']['median']:.2f} | {cold['first_caption_ms']['median']:.0f} | "
            f"{caption['median']:.0f} ({caption['q1']:.0f}–{caption['q3']:.0f}) | "
            f"{cold['peak_rss_mb']['median']:.0f} / {warm['peak_rss_mb']:.0f} | "
            f"{_pays_off(mode, entry)} |"
        )
    lines += ["", verdict(section)]
    for mode, reason in section["absent"].items():
        lines.append(f"- not run: `--precision {mode}`: {reason}")
    return lines

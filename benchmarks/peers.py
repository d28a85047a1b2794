"""Section "peers" (issue 25): capgen's encoder against the runtimes a user could pick instead.

The ImageNet Xception encoder alone, batch 1, the same photos (the 12 Flickr8k
photos) as the same uint8 pixels (capgen's preprocessing, 299×299 bicubic),
the same thread count, one process per arm (peer_engines.py), the arms
taking turns photo by photo (who goes first rotates). Arms:

- onnxruntime on capgen's own `encoder.onnx` (FP32) and `encoder.int8.onnx` (QDQ);
- OpenVINO (its own package) on the same files: f32 (`INFERENCE_PRECISION_HINT=f32`),
  its default precision (bf16 where the CPU has AMX or AVX512-BF16), and the INT8 graph;
- LiteRT (`ai-edge-litert`, XNNPACK) on the same Keras Xception converted by
  TensorFlow: FP32, dynamic-range INT8 and full INT8 (keras_reference.py);
- capgen's own `Captioner(precision=...)` modes, `auto` tuned in this run
  (`capgen tune` on the same photos, into a scratch cache).

Each row: median ms per photo; the feature cosine against Keras's own Xception
(min over the photos; Keras runs once, in a process of its own); and the share
of greedy captions identical to FP32's (the model's exact decoder on each
arm's features; FP32 = capgen's fp32 mode). Optional engines that are not
installed are not errors: their rows are listed under "absent" with the reason.

Then, once the arms' processes have ended, what each `--precision` mode costs
to start (mode_costs.py: a one-photo `capgen caption` process per mode, its
load time and peak RSS, and its first and warm caption), so that the same
run says which modes suit one-shot captions and which suit `serve` and batches.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from capgen.benchmarks.goals import tune_into
from capgen.benchmarks.processes import JsonLinesProcess, in_turn
from capgen.benchmarks.stats import summarize

Echo = Callable[[str], None]
SETTLE_SECONDS = 0.02
FP32, BF16, INT8 = "fp32", "bf16", "int8"


@dataclass(frozen=True)
class Arm:
    """One row of the peers table."""

    name: str
    label: str
    engine: str  # what peer_engines.py runs: onnxruntime, openvino, litert, capgen
    graph: str  # "fp32" / "int8" (the model folder's files), a LiteRT variant, or a capgen mode
    kind: str  # fp32, bf16 or int8: the precision class the goal rows compare within
    peer: bool  # another runtime (True) or capgen's own Captioner (False)
    hint: str | None = None  # OpenVINO's INFERENCE_PRECISION_HINT (None: its default)


ARMS = (
    Arm("onnxruntime_fp32", "onnxruntime FP32 (capgen's encoder.onnx)", "onnxruntime", "fp32", FP32, True),
    Arm("onnxruntime_int8", "onnxruntime INT8 (capgen's encoder.int8.onnx)", "onnxruntime", "int8", INT8, True),
    Arm("openvino_f32", "OpenVINO FP32 (INFERENCE_PRECISION_HINT=f32)", "openvino", "fp32", FP32, True, "f32"),
    Arm("openvino_default", "OpenVINO, default precision (bf16 where the CPU has it)", "openvino", "fp32", BF16, True),
    Arm("openvino_int8", "OpenVINO on capgen's INT8 (QDQ) graph", "openvino", "int8", INT8, True),
    Arm("litert_fp32", "LiteRT (XNNPACK) FP32", "litert", "fp32", FP32, True),
    Arm("litert_dynamic_int8", "LiteRT dynamic-range INT8", "litert", "dynamic_int8", INT8, True),
    Arm("litert_full_int8", "LiteRT full INT8 (calibrated on capgen's calibration photos)", "litert", "full_int8", INT8, True),
    Arm("capgen_fp32", "capgen --precision fp32", "capgen", "fp32", FP32, False),
    Arm("capgen_bf16", "capgen --precision bf16", "capgen", "bf16", BF16, False),
    Arm("capgen_int8", "capgen --precision int8", "capgen", "int8", INT8, False),
    Arm("capgen_auto", "capgen --precision auto (tuned in this run)", "capgen", "auto", FP32, False),
)  # fmt: skip
REFERENCE = "capgen_fp32"  # whose greedy captions the others are compared with
INSTALL = {
    "openvino": "pip install 'capgen[openvino]'",
    "litert": "pip install 'capgen[litert]'",
    "tensorflow": "pip install 'capgen[convert]'",
}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def engine_absences() -> dict[str, str]:
    """Engine -> why it cannot run here; engines that can run are not listed."""
    absent: dict[str, str] = {}
    if not _installed("openvino"):
        absent["openvino"] = f"openvino is not installed ({INSTALL['openvino']})"
    if not _installed("ai_edge_litert"):
        absent["litert"] = f"ai-edge-litert is not installed ({INSTALL['litert']})"
    elif not (_installed("tensorflow") and _installed("keras")):
        absent["litert"] = (
            "LiteRT's files are converted from the Keras model, which needs TensorFlow "
            f"({INSTALL['tensorflow']})"
        )
    return absent


def _cosines(features: np.ndarray, reference: np.ndarray) -> np.ndarray:
    dot = np.sum(features * reference, axis=1)
    norms = np.linalg.norm(features, axis=1) * np.linalg.norm(reference, axis=1)
    return dot / np.maximum(norms, 1e-12)


class _EngineProcess(JsonLinesProcess):
    """A peer_engines.py process; one request at a time."""

    def __init__(self, spec: dict[str, Any], log: Path, environment: dict[str, str]) -> None:
        command = [sys.executable, "-m", "capgen.benchmarks.peer_engines", json.dumps(spec)]
        super().__init__(command, log, environment)

    def _died(self) -> str:
        self._log.flush()
        lines = [x for x in self.log_path.read_text().splitlines() if x.strip()]
        return f"exited with {self._process.returncode}: {lines[-1] if lines else 'no output'}"

    def request(self, **request: Any) -> dict[str, Any]:
        return self.send(request)


def _keras_reference(
    scratch: Path, weights: Path, pixels: Path, litert: dict[str, str] | None, echo: Echo
) -> dict[str, Any]:
    """Keras's features (and the LiteRT files, made once) from keras_reference.py's process."""
    job = {"weights": str(weights), "pixels": str(pixels), "features": str(scratch / "keras.npy")}
    if litert is not None:
        job["litert"] = litert  # type: ignore[assignment]
    echo("  Keras reference features" + (" and LiteRT files (made once)" if litert else ""))
    log = scratch / "keras_reference.log"
    with log.open("w") as handle:
        done = subprocess.run(
            [sys.executable, "-m", "capgen.benchmarks.keras_reference", json.dumps(job)],
            stdout=subprocess.PIPE,
            stderr=handle,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
            check=False,
        )
    if done.returncode != 0:
        tail = [x for x in log.read_text().splitlines() if x.strip()][-1:]
        raise RuntimeError(f"the Keras reference failed ({done.returncode}): {' '.join(tail)}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _spec(arm: Arm, model_dir: Path, manifest: Any, litert: dict[str, str], threads: int) -> dict[str, Any]:  # fmt: skip
    spec: dict[str, Any] = {"engine": arm.engine, "threads": threads, "hint": arm.hint}
    if arm.engine == "capgen":
        spec.update(file=str(model_dir), precision=arm.graph)
    elif arm.engine == "litert":
        spec["file"] = litert[arm.graph]
    else:
        name = manifest.encoder.file if arm.graph == "fp32" else manifest.encoder.int8_file
        spec["file"] = str(model_dir / name)
    return spec


def _why_not(arm: Arm, manifest: Any, absent: dict[str, str], litert: dict[str, str]) -> str | None:
    """Why this arm cannot run here (None: it can)."""
    from capgen.runtime.errors import CapgenError
    from capgen.runtime.precision import mode_plan

    if arm.engine in absent:
        return absent[arm.engine]
    if arm.engine == "litert" and arm.graph not in litert:
        return "the LiteRT files could not be made (see the Keras reference's log)"
    if arm.graph == "int8" and not manifest.encoder.int8_file:
        return "the model has no INT8 encoder (capgen convert quantize)"
    if arm.engine == "capgen" and arm.graph in (FP32, BF16, INT8):
        try:
            mode_plan(manifest, arm.graph)
        except CapgenError as exc:
            return str(exc)
    return None


def _alternate(
    processes: dict[str, _EngineProcess], photos: int, rounds: int, scratch: Path
) -> tuple[dict[str, list[float]], dict[str, np.ndarray]]:
    """Every arm encodes each photo in turn (who goes first rotates); seconds and last features."""
    names = list(processes)
    times: dict[str, list[float]] = {name: [] for name in names}
    turn = 0
    for _ in range(rounds):
        for index in range(photos):
            order = in_turn(names, turn)
            turn += 1
            for name in order:
                time.sleep(SETTLE_SECONDS)  # let the last arm's threads stop spinning
                times[name].append(processes[name].request(op="encode", index=index)["seconds"])
    features: dict[str, np.ndarray] = {}
    for name, process in processes.items():
        path = scratch / f"{name}.features.npy"
        process.request(op="save", path=str(path))
        features[name] = np.load(path)
    return times, features


def measure_peers(
    model_dir: Path,
    photos: Sequence[Path],
    rounds: int,
    threads: int,
    scratch: Path,
    echo: Echo,
    weights: Path | None,
    litert_cache: Path,
    calibration: Callable[[], list[np.ndarray]],
    mode_warmup: bool = True,
) -> dict[str, Any]:
    """The peers table's numbers (see the module's docstring); `scratch` is this run's own folder.

    `weights`: the ImageNet Xception weights Keras loads (None: no Keras row, no cosines).
    `calibration`: the photos LiteRT's full INT8 file is calibrated on (asked only if it is made).
    `mode_warmup`: the precision modes' untimed processes (mode_costs.measure_mode_costs's
    `untimed`; the bench always runs them, a smoke test may leave them out).
    """
    from capgen import Captioner
    from capgen.runtime.decoding import DecodingOptions
    from capgen.runtime.tuning import MIN_BENCH_IMAGES

    scratch.mkdir(parents=True, exist_ok=True)
    reference_captioner = Captioner(model_dir)
    manifest = reference_captioner.manifest
    pixels = np.stack([reference_captioner.preprocess(photo) for photo in photos])
    pixels_file = scratch / "pixels.npy"
    np.save(pixels_file, pixels)
    absent = engine_absences()
    keras_ok = _installed("tensorflow") and _installed("keras") and weights is not None
    result: dict[str, Any] = {
        "model": str(model_dir),
        "encoder_kind": manifest.encoder.kind,
        "photos": [photo.name for photo in photos],
        "rounds": rounds,
        "threads": threads,
        "reference": REFERENCE,
        "rows": {},
        "absent": {},
    }
    keras_features: np.ndarray | None = None
    litert: dict[str, str] = {}
    if keras_ok:
        assert weights is not None
        litert_job = None
        if "litert" not in absent:
            np.save(scratch / "calibration.npy", np.stack(calibration()))
            litert_job = {
                "folder": str(litert_cache),
                "calibration": str(scratch / "calibration.npy"),
            }
        try:
            made = _keras_reference(scratch, weights, pixels_file, litert_job, echo)
            keras_features = np.load(made["features"])
            litert = made["litert"]
            result["keras"] = {"tensorflow": made["tensorflow"]}
        except RuntimeError as exc:
            echo(f"  {exc}")
            result["keras"] = {"error": str(exc)}
    else:
        result["keras"] = {"error": f"TensorFlow is not installed ({INSTALL['tensorflow']})"}
    home = scratch / "capgen_home"
    environment = {**os.environ, "CAPGEN_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "2"}
    arms = []
    for arm in ARMS:
        reason = _why_not(arm, manifest, absent, litert)
        if reason is None and arm.graph == "auto" and len(photos) < MIN_BENCH_IMAGES:
            reason = (
                f"capgen tune needs at least {MIN_BENCH_IMAGES} photos; this run has {len(photos)}"
            )
        elif reason is None and arm.graph == "auto":
            try:
                echo("  tuning auto on the bench photos (capgen tune, scratch cache)")
                result["tune"] = tune_into(model_dir, photos, home, threads)
            except RuntimeError as exc:
                reason = str(exc)
        if reason is not None:
            result["absent"][arm.name] = {"label": arm.label, "reason": reason}
            echo(f"  {arm.name}: left out ({reason})")
        else:
            arms.append(arm)
    processes: dict[str, _EngineProcess] = {}
    try:
        for arm in arms:
            spec = _spec(arm, model_dir, manifest, litert, threads)
            spec["pixels"] = str(pixels_file)
            try:
                processes[arm.name] = _EngineProcess(spec, scratch / f"{arm.name}.log", environment)
            except RuntimeError as exc:
                result["absent"][arm.name] = {
                    "label": arm.label,
                    "reason": f"failed to start: {exc}",
                }
                echo(f"  {arm.name}: left out (failed to start: {exc})")
        names = list(processes)
        times, features = _alternate(processes, len(photos), rounds, scratch)
        notes = {name: process.ready for name, process in processes.items()}
    finally:
        for process in processes.values():
            process.close()
    greedy = DecodingOptions(beam_size=1)
    tokens = {
        name: [r.tokens for r in reference_captioner.decode_features(f, greedy)]
        for name, f in features.items()
    }
    if keras_features is not None:
        tokens["keras"] = [
            r.tokens for r in reference_captioner.decode_features(keras_features, greedy)
        ]
    reference = tokens.get(REFERENCE) or tokens.get("onnxruntime_fp32")
    by_name = {arm.name: arm for arm in ARMS}
    for name in names:
        arm = by_name[name]
        row: dict[str, Any] = {
            "label": arm.label,
            "engine": arm.engine,
            "kind": result["tune"]["mode"] if arm.graph == "auto" else arm.kind,
            "peer": arm.peer,
            "ms": summarize([seconds * 1000 for seconds in times[name]]),
            "setup_seconds": notes[name]["setup_seconds"],
            "note": notes[name]["note"],
        }
        if keras_features is not None:
            cosine = _cosines(features[name], keras_features)
            row["cosine_vs_keras"] = {
                "min": float(cosine.min()),
                "median": float(np.median(cosine)),
            }
        if reference is not None:
            same = sum(a == b for a, b in zip(tokens[name], reference, strict=True))
            row["identical"] = same
            row["identical_share"] = same / len(photos)
        result["rows"][name] = row
    if "keras" in tokens and reference is not None:
        same = sum(a == b for a, b in zip(tokens["keras"], reference, strict=True))
        result["keras"]["identical_share"] = same / len(photos)
    result["mode_costs"] = _mode_costs(
        model_dir, photos, rounds, scratch, home, echo, result, mode_warmup
    )
    return result


def _mode_costs(
    model_dir: Path,
    photos: Sequence[Path],
    rounds: int,
    scratch: Path,
    home: Path,
    echo: Echo,
    result: dict[str, Any],
    warmup: bool = True,
) -> dict[str, Any]:
    """Each `--precision` mode's cold start, memory and warm caption (mode_costs.py), after the
    peer processes have ended; `auto` with the decision tuned above, or left out with its reason.
    A failure here is reported in its place and leaves the peers table."""
    from capgen.benchmarks.mode_costs import measure_mode_costs

    auto = result["absent"].get("capgen_auto")
    echo("  precision modes: cold start, memory, first and warm caption")
    try:
        return measure_mode_costs(
            model_dir,
            photos,
            rounds,
            scratch / "mode_costs",
            home,
            echo,
            auto["reason"] if auto else None,
            untimed=warmup,
        )
    except Exception as exc:  # like run.py's goal parts: one failing part leaves the others
        echo(f"  mode costs failed: {exc}")
        return {"error": str(exc)}


def _cell(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def markdown(section: dict[str, Any]) -> list[str]:
    """RESULTS.md lines: the peers table, then the arms that did not run and why."""
    lines = [
        "",
        f"## Peers: the encoder on other runtimes ({section['encoder_kind']}, batch 1, "
        f"{len(section['photos'])} photos × {section['rounds']} rounds, {section['threads']} threads)",
        "",
        "Each arm in its own process, taking turns photo by photo; the same uint8 pixels. "
        "Cosine: the features against Keras's own Xception (min over the photos); identical: "
        "greedy captions equal to capgen fp32's, the model's exact decoder on each arm's features.",
        "",
        "| engine | median ms (IQR) | cosine vs Keras (min) | captions identical to FP32 | runs as |",
        "|---|---|---|---|---|",
    ]
    for row in section["rows"].values():
        ms = row["ms"]
        cosine = row.get("cosine_vs_keras", {}).get("min")
        share = row.get("identical_share")
        identical = (
            "—" if share is None else f"{share:.0%} ({row['identical']}/{len(section['photos'])})"
        )
        lines.append(
            f"| {row['label']} | {ms['median']:.1f} ({ms['q1']:.1f}–{ms['q3']:.1f}) | "
            f"{_cell(cosine, '.4f')} | {identical} | {row['note']} |"
        )
    keras = section.get("keras", {})
    if "identical_share" in keras:
        lines.append(
            f"- Keras's own features give {keras['identical_share']:.0%} of capgen fp32's captions."
        )
    elif keras.get("error"):
        lines.append(f"- no Keras reference: {keras['error']}")
    if section.get("tune"):
        lines.append(
            f"- auto, tuned in this run on the same photos: {section['tune']['mode']} on {section['tune']['engine']}"
        )
    for name, entry in section["absent"].items():
        lines.append(f"- not run: {entry['label']} (`{name}`): {entry['reason']}")
    return lines + _mode_costs_markdown(section.get("mode_costs"))


def _mode_costs_markdown(costs: dict[str, Any] | None) -> list[str]:
    """The precision modes' cold-start table (absent from results made before it existed)."""
    if not costs:
        return []
    if "error" in costs:
        return ["", f"**Precision modes' cold start not measured: {costs['error']}**"]
    from capgen.benchmarks.mode_costs import markdown as mode_markdown

    return mode_markdown(costs)

"""Section "encoder kinds": each tutorial encoder's latency per photo, FP32 and INT8 (issue 17).

Speed does not depend on the weights' values, so the families run with random
weights in Keras's cache layout (`capgen.convert.random_weights`); Xception
uses capgen's cached ImageNet export. Every file is made once into the bench
cache (weights, the FP32 export keyed by the weights' sha256, the INT8 file
keyed by the FP32 file's) and later runs only measure: about 20 s at FULL for
the five kinds, one photo at a time, FP32 and INT8 alternating.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from capgen.benchmarks.stats import summarize

KINDS = ("xception", "vgg16", "resnet50", "inceptionv3", "densenet201")
CALIBRATION_PHOTOS = 8
Echo = Callable[[str], None]


def _fp32(kind: str, folder: Path) -> Path:
    from capgen.convert.encoder import ensure_encoder
    from capgen.convert.random_weights import random_weights_file

    if kind == "xception":
        return ensure_encoder(kind)
    from capgen.convert.applications import FAMILIES

    weights = folder / kind / FAMILIES[kind].weights_file
    if not weights.is_file():  # made once: a fresh file would have a new sha, a new export
        weights = random_weights_file(kind, folder / kind, seed=0)
    return ensure_encoder(kind, weights)


def _int8(fp32: Path, folder: Path, pixels: Sequence[np.ndarray]) -> Path:
    from capgen.convert.hashing import sha256_file
    from capgen.convert.quantize import quantize_encoder

    target = folder / f"{fp32.stem}-{sha256_file(fp32)[:12]}.int8.onnx"
    if not target.is_file():
        quantize_encoder(fp32, target, list(pixels))
    return target


def _pixels(photos: Sequence[Path], size: int, count: int) -> list[np.ndarray]:
    from capgen.runtime.preprocess import prepare

    return [prepare(path, size, size) for path in photos[:count]]


def prepare_kinds(
    folder: Path, photos: Sequence[Path], int8: bool, echo: Echo
) -> dict[str, dict[str, Any]]:
    """{kind: {"fp32": path, "int8": path or None, "input_size", "feature_size"}}, built once."""
    from capgen.convert.encoder_registry import get_encoder_kind

    prepared = {}
    for kind in KINDS:
        spec = get_encoder_kind(kind)
        echo(f"  encoder kind {kind}: export (once) and INT8 (once)")
        fp32 = _fp32(kind, folder)
        calibration = _pixels(photos, spec.input_size, CALIBRATION_PHOTOS)
        prepared[kind] = {
            "fp32": fp32,
            "int8": _int8(fp32, folder, calibration) if int8 else None,
            "input_size": spec.input_size,
            "feature_size": spec.feature_size,
        }
    return prepared


def measure_kinds(
    prepared: dict[str, dict[str, Any]], photo: Path, repetitions: int, echo: Echo
) -> dict[str, Any]:
    """Median ms per photo (batch 1) of each kind's FP32 and INT8 encoder, arms alternating."""
    from capgen.runtime.session import OnnxSession

    results: dict[str, Any] = {}
    for kind, entry in prepared.items():
        image = _pixels([photo], entry["input_size"], 1)[0][None]
        arms = {
            arm: OnnxSession(Path(path), inputs=["image"], outputs=["features"])
            for arm in ("fp32", "int8")
            if (path := entry[arm]) is not None
        }
        times: dict[str, list[float]] = {arm: [] for arm in arms}
        for session in arms.values():
            session.run({"image": image})  # first run: allocations, not speed
        for rep in range(repetitions):
            order = list(arms) if rep % 2 == 0 else list(reversed(arms))
            for arm in order:
                started = time.perf_counter()
                arms[arm].run({"image": image})
                times[arm].append((time.perf_counter() - started) * 1000)
        results[kind] = {
            "input_size": entry["input_size"],
            "feature_size": entry["feature_size"],
            "ms": {arm: summarize(values) for arm, values in times.items()},
        }
        medians = ", ".join(f"{arm} {results[kind]['ms'][arm]['median']:.1f} ms" for arm in times)
        echo(f"  {kind}: {medians}")
    return results


def markdown(section: dict[str, Any]) -> list[str]:
    """RESULTS.md lines: the README's kinds table latency column comes from here."""
    lines = [
        "",
        "## Encoder kinds (batch 1, ms per photo, random weights)",
        "| kind | input | features | FP32 median (min) | INT8 median (min) |",
        "|---|---|---|---|---|",
    ]
    for kind, entry in section.items():
        cells = []
        for arm in ("fp32", "int8"):
            stats = entry["ms"].get(arm)
            cells.append(f"{stats['median']:.1f} ({stats['min']:.1f})" if stats else "—")
        size = entry["input_size"]
        lines.append(f"| {kind} | {size}×{size} | {entry['feature_size']} | {' | '.join(cells)} |")
    return lines

"""`capgen tune`: measure each precision mode once on this machine and store auto's decision.

Which mode is fastest depends on the CPU (bf16 needs AMX or AVX512-BF16, INT8
kernels need VNNI) and on the installed engines, and whether a mode's
captions hold up depends on the model: so neither can be decided in advance.
Tuning runs every mode that can run here on a bench set of the user's
images: the encoder one image at a time (what a single `capgen caption`
pays; the first call of each engine is a warm-up and is not counted), then
the greedy captions of its features through the same exact decoder, compared
token for token with fp32's. The fastest mode whose captions equal fp32's on
at least 97% of the images wins; fp32 is always a candidate, so there always
is one. The decision goes to the cache (precision.store_decision).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from capgen.runtime.engines import ONNXRUNTIME, OPENVINO, engine_version, openvino_installed
from capgen.runtime.errors import CapgenError, InputError
from capgen.runtime.precision import (
    AGREEMENT_THRESHOLD,
    BF16_MODE,
    FP32,
    INT8,
    EncoderPlan,
    candidate_name,
    choose,
    mode_plan,
    store_decision,
)

# Fewer images make the 97% threshold meaningless (with 10, one differing caption fails a mode).
MIN_BENCH_IMAGES = 10
_DECODE_BATCH = 8


@dataclass(frozen=True)
class TuneResult:
    """What `tune` measured and stored: the chosen candidate, every candidate's numbers, where."""

    mode: str
    engine: str
    candidates: dict[str, dict[str, Any]]
    images: int
    stored: str


def candidate_plans(manifest: Any) -> tuple[list[EncoderPlan], dict[str, str]]:
    """Every (mode, engine) that can run here, and why the others cannot ("mode/engine" -> reason).

    INT8 is tried on each installed engine: which one is faster for a QDQ graph
    depends on the CPU's integer kernels.
    """
    wanted: list[tuple[str, str | None]] = [(FP32, None), (BF16_MODE, None), (INT8, ONNXRUNTIME)]
    if openvino_installed():
        wanted.append((INT8, OPENVINO))
    plans, skipped = [], {}
    for mode, engine in wanted:
        try:
            plans.append(mode_plan(manifest, mode, engine))
        except CapgenError as exc:
            skipped[candidate_name(mode, engine or OPENVINO)] = str(exc)
    return plans, skipped


def tune(
    model_dir: str | Path | None,
    images: Sequence[Any],
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> TuneResult:
    """Measure every runnable mode on `images` and store the fastest that agrees with fp32.

    `images`: at least MIN_BENCH_IMAGES, anything `Captioner.preprocess` takes;
    one that cannot be read is an error (a bench set with holes would not say
    what it claims). `progress`: told one line per candidate (the CLI shows them
    with -v); the library itself never prints.
    """
    from capgen.runtime.captioner import Captioner
    from capgen.runtime.decoding import DecodingOptions
    from capgen.runtime.encoder import Encoder
    from capgen.runtime.integrity import verify_files

    if len(images) < MIN_BENCH_IMAGES:
        raise InputError(
            f"capgen tune needs at least {MIN_BENCH_IMAGES} bench images (got {len(images)}): "
            "photos like the ones you will caption"
        )
    captioner = Captioner(model_dir, threads=threads)
    manifest = captioner.manifest
    pixels = [captioner.preprocess(image) for image in images]
    greedy = DecodingOptions(beam_size=1)
    plans, skipped = candidate_plans(manifest)
    candidates: dict[str, dict[str, Any]] = {
        name: {"error": reason} for name, reason in skipped.items()
    }
    reference: list[tuple[int, ...]] | None = None
    for plan in plans:  # fp32 first: the reference the others are compared with
        name = candidate_name(plan.mode, plan.engine)
        try:
            if plan.file != manifest.encoder.file:
                verify_files(manifest, [plan.file])
            encoder = Encoder(
                manifest.path(plan.file),
                manifest.encoder,
                threads=threads,
                sha256=manifest.files[plan.file].sha256,
                engine=plan.engine,
                inference_precision=plan.inference_precision,
            )
            encoder.encode(pixels[0][np.newaxis])  # warm-up: first-call allocations
            seconds, features = [], []
            for one in pixels:
                started = time.perf_counter()
                features.append(encoder.encode(one[np.newaxis]))
                seconds.append(time.perf_counter() - started)
            del encoder
            tokens = _greedy_tokens(captioner, np.concatenate(features), greedy)
        except CapgenError as exc:
            if plan.mode == FP32:
                raise
            candidates[name] = {"error": str(exc)}
            if progress:
                progress(f"{name}: cannot run ({exc})")
            continue
        if reference is None:
            reference = tokens
        equal = sum(a == b for a, b in zip(tokens, reference, strict=True))
        candidates[name] = {
            "engine_version": engine_version(plan.engine),
            "inference_precision": plan.inference_precision,
            "ms_per_image": round(1000.0 * statistics.median(seconds), 3),
            "agreement": equal / len(tokens),
            "equal_captions": equal,
        }
        if progress:
            progress(
                f"{name}: {candidates[name]['ms_per_image']:.1f} ms per image (median), "
                f"{equal}/{len(tokens)} greedy captions equal fp32's"
            )
    chosen = choose(candidates)
    mode, engine = chosen.split("/")
    body = {
        "mode": mode,
        "engine": engine,
        "threshold": AGREEMENT_THRESHOLD,
        "images": len(pixels),
        "threads": threads,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "candidates": candidates,
    }
    stored = store_decision(manifest, body)
    return TuneResult(mode, engine, candidates, len(pixels), stored)


def _greedy_tokens(captioner: Any, features: np.ndarray, options: Any) -> list[tuple[int, ...]]:
    tokens: list[tuple[int, ...]] = []
    for start in range(0, len(features), _DECODE_BATCH):
        results = captioner.decode_features(features[start : start + _DECODE_BATCH], options)
        tokens.extend(result.tokens for result in results)
    return tokens

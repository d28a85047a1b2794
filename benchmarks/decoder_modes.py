"""Does a bf16 or INT8 output layer on OpenVINO shorten the decode? (issue 25, "the decoder step")

The step graph's output layer (units × vocabulary, ~2 M multiply-adds a word)
is most of a decoder step. This measures one greedy caption of exactly
`steps` words (the tutorial's worst case: no end token, argmax fed back) with
the model's step graphs on each engine:

- exact step (decoder_step.onnx) on onnxruntime: what capgen runs by default;
- the same graph on OpenVINO at f32 and at bf16 (where the CPU has it);
- the opt-in fast step (decoder_step.int8.onnx: INT8 output layer, the best
  words rescored exactly) on onnxruntime and on OpenVINO;

each row with its median ms for the `steps` words and the share of the bench
photos whose greedy captions (capgen's own search, real end tokens) are
identical to the exact step's on onnxruntime. The engines alternate call by
call in one process (the decoder is single-threaded and small); every
OpenVINO session reads verified bytes, as capgen's own engine does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from capgen.benchmarks.processes import in_turn
from capgen.benchmarks.stats import summarize

if TYPE_CHECKING:
    from capgen.runtime.decoding import StepModelLike

STEP_INPUTS = ["word", "h", "c", "photo"]
STEP_OUTPUTS = ["log_probs", "h_out", "c_out"]


class _OpenVinoStep:
    """capgen's step model with its step graph run by OpenVINO (the projection stays as it is)."""

    def __init__(self, exact: StepModelLike, path: Path, sha256: str, precision: str) -> None:
        from capgen.runtime.engines import OpenVinoSession

        self._exact = exact
        self._session = OpenVinoSession(
            path, sha256, STEP_INPUTS, STEP_OUTPUTS, precision, threads=1
        )
        self.note = f"openvino ({self._session.inference_precision})"

    def initial_state(self, rows: int) -> tuple[np.ndarray, np.ndarray]:
        h, c = self._exact.initial_state(rows)
        return h, c

    def step(
        self, words: np.ndarray, h: np.ndarray, c: np.ndarray, photo: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        log_probs, h_out, c_out = self._session.run({"word": words, "h": h, "c": c, "photo": photo})
        return log_probs, h_out, c_out


def _fixed_length(model: Any, photo: np.ndarray, first: int, steps: int) -> None:
    """`steps` greedy words for one photo, argmax fed back, no stopping: the timed work."""
    h, c = model.initial_state(1)
    word = np.array([first], dtype=np.int64)
    for _ in range(steps):
        log_probs, h, c = model.step(word, h, c, photo)
        word = np.argmax(log_probs, axis=1).astype(np.int64)


def measure_decoder_modes(
    model_dir: Path,
    photos: Sequence[Path],
    steps: int,
    repetitions: int,
    echo: Callable[[str], None],
) -> dict[str, Any]:
    """Rows {name: {"ms", "identical_share", "note"}} and the arms that cannot run here, with why."""
    from capgen import Captioner
    from capgen.runtime.decoding import DecodingOptions, decode
    from capgen.runtime.engines import BF16, F32, bf16_supported, openvino_installed
    from capgen.runtime.errors import CapgenError
    from capgen.runtime.step_model import StepModel

    exact = Captioner(model_dir)
    manifest = exact.manifest
    spec = manifest.decoder
    features = np.concatenate([exact.features(exact.preprocess(p)[np.newaxis]) for p in photos])
    step_model = StepModel(  # the exact step as capgen runs it: one thread, onnxruntime
        manifest.path(spec.projection_file),
        manifest.path(spec.step_file),
        spec,
        vocab_size=exact.vocabulary.size,
        threads=1,
    )
    photo = step_model.project(features)
    models: dict[str, tuple[Any, str]] = {"exact_onnxruntime": (step_model, "onnxruntime")}
    absent: dict[str, str] = {}
    fast_file = spec.int8_step_file
    if fast_file:
        fast = StepModel(
            manifest.path(spec.projection_file),
            manifest.path(fast_file),
            spec,
            vocab_size=exact.vocabulary.size,
            threads=1,
        )
        models["fast_onnxruntime"] = (fast, "onnxruntime (INT8 output layer, exact rescoring)")
    else:
        absent["fast_onnxruntime"] = "the model has no fast step (capgen convert fast-decoder)"
    wanted = [
        ("exact_openvino_f32", spec.step_file, F32),
        ("exact_openvino_bf16", spec.step_file, BF16),
    ]
    if fast_file:
        wanted.append(("fast_openvino", fast_file, F32))
    for name, file, precision in wanted:
        if not openvino_installed():
            absent[name] = "openvino is not installed (pip install 'capgen[openvino]')"
            continue
        if precision == BF16 and not bf16_supported():
            absent[name] = "this CPU has no bf16 for OpenVINO"
            continue
        try:
            ov = _OpenVinoStep(
                step_model, manifest.path(file), manifest.files[file].sha256, precision
            )
        except CapgenError as exc:
            absent[name] = str(exc)
            continue
        models[name] = (ov, ov.note)
    first = np.array([exact.vocabulary.first_input_id], dtype=np.int64)[0]
    greedy = DecodingOptions(beam_size=1)
    tokens = {
        name: [
            r.tokens for r in decode(model, photo, exact.vocabulary, greedy, manifest.max_length)
        ]
        for name, (model, _) in models.items()
    }
    times: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    for name in names:  # first calls: allocations, lazy compilation
        _fixed_length(models[name][0], photo[:1], int(first), 2)
    for rep in range(repetitions):
        for name in in_turn(names, rep):
            one = photo[rep % len(photo) : rep % len(photo) + 1]
            started = time.perf_counter()
            _fixed_length(models[name][0], one, int(first), steps)
            times[name].append((time.perf_counter() - started) * 1000)
    reference = tokens["exact_onnxruntime"]
    rows: dict[str, dict[str, Any]] = {}
    for name in names:
        same = sum(a == b for a, b in zip(tokens[name], reference, strict=True))
        rows[name] = {
            "ms": summarize(times[name]),
            "identical": same,
            "identical_share": same / len(photos),
            "note": models[name][1],
        }
    summary = ", ".join(f"{name} {row['ms']['median']:.1f} ms" for name, row in rows.items())
    echo(f"  decoder, {steps} words: {summary}")
    return {"steps": steps, "photos": len(photos), "rows": rows, "absent": absent}


def markdown(section: dict[str, Any]) -> list[str]:
    """RESULTS.md lines: one row per step graph and engine."""
    lines = [
        "",
        f"### The decoder step under each engine ({section['steps']} greedy words, one photo; "
        f"captions compared on {section['photos']} photos)",
        "| step graph, engine | median ms (IQR) | greedy captions identical to the exact step's | runs as |",
        "|---|---|---|---|",
    ]
    for name, row in section["rows"].items():
        ms = row["ms"]
        lines.append(
            f"| {name} | {ms['median']:.2f} ({ms['q1']:.2f}–{ms['q3']:.2f}) | "
            f"{row['identical_share']:.0%} ({row['identical']}/{section['photos']}) | {row['note']} |"
        )
    for name, reason in section["absent"].items():
        lines.append(f"- not run: `{name}`: {reason}")
    return lines

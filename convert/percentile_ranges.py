"""Percentile calibration ranges measured one image at a time: onnxruntime's, in a fraction of the memory.

onnxruntime's percentile calibrator runs every calibration image through a
graph that outputs every activation, keeps all of them, then builds one
histogram of |activation| per tensor over all images at once: 5.2 GB peak for
Xception on 18 photos, all of `capgen setup`'s peak (measured). Its
`CalibMaxIntermediateOutputs` chunking exists for MinMax only, and chunked
histograms would not be the same histograms (the bins follow the first chunk).

Here the same calibrator (`create_calibrator`: the same augmented graph, the
same tensors, the same collector and percentile arithmetic) sees two passes
over the images, one image's activations alive at a time: the first finds each
tensor's extremes, the second adds each image's histogram on the bins the
whole set gives (`np.histogram`'s `range`: the same edges and the same bin of
every value as one histogram of everything, so the counts add up exactly).
The resulting ranges equal onnxruntime's bit for bit
(tests/convert/test_percentile_ranges.py compares them; the INT8 graphs of both built-in
models came out byte for byte the same); quantize.py hands them to
`quantize_static` through its calibration cache file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class _Extremes:
    """One tensor over every image: the raw min/max and the min/max of |value|."""

    low: Any = None
    high: Any = None
    abs_low: Any = None
    abs_high: Any = None
    size: int = 0

    def add(self, values: np.ndarray) -> None:
        self.size += values.size
        if values.size == 0:
            return
        magnitudes = np.absolute(values)
        pairs = (
            ("low", np.nanmin(values), min),
            ("high", np.nanmax(values), max),
            ("abs_low", magnitudes.min(), min),
            ("abs_high", magnitudes.max(), max),
        )
        for name, value, pick in pairs:
            current = getattr(self, name)
            setattr(self, name, value if current is None else pick(current, value))


def _calibrator(model: Path, scratch: Path, percentile: float) -> Any:
    """onnxruntime's percentile calibrator exactly as quantize_static makes it for capgen."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return create_calibrator(
        model,
        list({*QLinearOpsRegistry, *QDQRegistry}),  # quantize_static's default op types
        augmented_model_path=str(scratch / "augmented_model.onnx"),
        calibrate_method=CalibrationMethod.Percentile,
        extra_options={"percentile": percentile},
    )


def _activations(calibrator: Any, images: Sequence[np.ndarray]) -> Any:
    """For each image, (tensor name, activation) of every tensor the calibrator measures."""
    session = calibrator.infer_session
    names = [output.name for output in session.get_outputs()]
    wanted = [
        (index, name) for index, name in enumerate(names) if name in calibrator.tensors_to_calibrate
    ]
    for image in images:
        outputs = session.run(None, {"image": image[np.newaxis]})  # as quantize._ImageReader
        yield [(name, outputs[index]) for index, name in wanted]
        del outputs


def percentile_ranges(
    model: Path, images: Sequence[np.ndarray], percentile: float, scratch: Path
) -> Any:
    """The `TensorsData` onnxruntime's percentile calibration of `model` on `images` computes."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    calibrator = _calibrator(model, scratch, percentile)
    if not calibrator.symmetric:
        raise NotImplementedError("onnxruntime's percentile calibrator is symmetric by default")
    extremes: dict[str, _Extremes] = {}
    for activations in _activations(calibrator, images):
        for name, values in activations:
            extremes.setdefault(name, _Extremes()).add(values)
    counts: dict[str, np.ndarray] = {}
    edges: dict[str, np.ndarray] = {}
    for activations in _activations(calibrator, images):
        for name, values in activations:
            seen = extremes[name]
            if seen.size == 0:
                continue
            image_counts, edges[name] = np.histogram(
                np.absolute(values).ravel(),
                bins=calibrator.num_bins,
                range=(seen.abs_low, seen.abs_high),
            )
            counts[name] = counts[name] + image_counts if name in counts else image_counts
    collector = HistogramCollector(
        method=calibrator.method,
        symmetric=calibrator.symmetric,
        num_bins=calibrator.num_bins,
        num_quantized_bins=calibrator.num_quantized_bins,
        percentile=calibrator.percentile,
        scenario=calibrator.scenario,
    )
    for name, seen in extremes.items():  # the session's output order, as onnxruntime's dict
        if seen.size == 0:  # what onnxruntime makes of a tensor without values
            no_values = np.empty(0, dtype=np.float32)
            empty_counts, empty_edges = np.histogram(no_values, bins=calibrator.num_bins)
            zero = np.array(0, dtype=np.float32)
            collector.histogram_dict[name] = (
                empty_counts,
                empty_edges.astype(np.float32),
                zero,
                zero,
            )
        else:
            collector.histogram_dict[name] = (counts[name], edges[name], seen.low, seen.high)
    calibrator.collector = collector
    return calibrator.compute_data()

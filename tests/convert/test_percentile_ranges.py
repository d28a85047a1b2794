"""capgen's one-image-at-a-time percentile calibration gives onnxruntime's ranges bit for bit.

`capgen.convert.percentile_ranges` replaces onnxruntime's in-memory collection
(every activation of every calibration image at once) to lower `capgen setup`'s
peak memory; the INT8 graph stays the same only if every range does. A small
convolutional graph whose activations differ in scale from image to image is
enough to tell: bins taken from one image instead of the whole set, or a lost
image, change the histograms and so the ranges.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the convert-decoder extra (onnx) is not installed")


def _small_convolutional_graph(path: Path) -> None:
    """image (1, 3, 16, 16) -> Conv -> Relu -> Conv -> Add -> GlobalAveragePool: a few tensors."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    w1 = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(size=(4, 4, 3, 3)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["image", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Add", ["c2", "r1"], ["sum"], name="add"),
        helper.make_node("GlobalAveragePool", ["sum"], ["features"], name="pool"),
    ]
    graph = helper.make_graph(
        nodes,
        "small",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, 4, 1, 1])],
        initializer=[w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(onnx.shape_inference.infer_shapes(model), str(path))


def _onnxruntime_ranges(model: Path, images: list[np.ndarray], scratch: Path) -> Any:
    """onnxruntime's own calibration: its calibrator collecting every image at once."""
    from capgen.convert.percentile_ranges import _calibrator
    from capgen.convert.quantize import CALIBRATION_PERCENTILE, _ImageReader

    calibrator = _calibrator(model, scratch, CALIBRATION_PERCENTILE)
    calibrator.collect_data(_ImageReader(images))
    return calibrator.compute_data()


def _as_plain(ranges: Any) -> dict[str, dict[str, tuple[str, list[float]]]]:
    return {
        tensor: {
            name: (str(np.asarray(value).dtype), np.asarray(value).ravel().tolist())
            for name, value in vars(data).items()
            if name != "_attrs"
        }
        for tensor, data in ranges.data.items()
    }


def test_ranges_measured_one_image_at_a_time_equal_onnxruntimes(tmp_path: Path) -> None:
    from capgen.convert.percentile_ranges import percentile_ranges
    from capgen.convert.quantize import CALIBRATION_PERCENTILE

    model = tmp_path / "small.onnx"
    _small_convolutional_graph(model)
    rng = np.random.default_rng(3)
    # Scales that differ by image: the first image's extremes are not the set's.
    images = [
        (rng.normal(size=(3, 16, 16)) * scale).astype(np.float32) for scale in (0.5, 3.0, 1.0, 8.0)
    ]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ours = percentile_ranges(model, images, CALIBRATION_PERCENTILE, tmp_path / "a")
    theirs = _onnxruntime_ranges(model, images, tmp_path / "b")
    assert list(ours.data) == list(theirs.data)  # the same tensors, in the same order
    assert len(ours.data) >= 5
    assert _as_plain(ours) == _as_plain(theirs)
    assert ours.calibration_method == theirs.calibration_method

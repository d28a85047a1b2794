"""The bench's "encoder kinds" section measures every prepared kind's arms and reports them.

Exporting the real families takes minutes, so the section's measuring and
reporting half runs here on two tiny stand-in encoders; `capgen bench`
runs it on the exported kinds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from capgen.benchmarks.encoder_kinds import markdown, measure_kinds


def _mean_encoder(path: Path, size: int) -> Path:
    """uint8 [N, size, size, 3] -> the mean of each channel [N, 3]."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["image"], ["pixels"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", ["pixels"], ["features"], axes=[1, 2], keepdims=0),
        ],
        "mean_encoder",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", size, size, 3])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_each_kind_gets_fp32_and_int8_latency_and_a_table_row(tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(photo)
    prepared = {
        "vgg16": {
            "fp32": _mean_encoder(tmp_path / "a.onnx", 224),
            "int8": _mean_encoder(tmp_path / "b.onnx", 224),
            "input_size": 224,
            "feature_size": 3,
        },
        "inceptionv3": {
            "fp32": _mean_encoder(tmp_path / "c.onnx", 299),
            "int8": None,
            "input_size": 299,
            "feature_size": 3,
        },
    }
    lines: list[str] = []
    section = measure_kinds(prepared, photo, repetitions=3, echo=lines.append)

    assert set(section["vgg16"]["ms"]) == {"fp32", "int8"}
    assert set(section["inceptionv3"]["ms"]) == {"fp32"}
    assert section["vgg16"]["ms"]["int8"]["n"] == 3
    assert len(lines) == 2 and lines[0].startswith("  vgg16: fp32 ")
    table = markdown(section)
    assert table[-2].startswith("| vgg16 | 224×224 | 3 | ")
    assert table[-1].startswith("| inceptionv3 | 299×299 | 3 | ") and table[-1].endswith("| — |")

"""`capgen convert quantize`: the INT8 encoder keeps the features and is recorded in the manifest.

Calibration uses only a few kitchenware photos (fast); the check runs on the
real Flickr8k photos, which calibration never saw.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

MIN_COSINE = 0.98
CALIBRATION_PHOTOS = 4


def _write_model_folder(folder: Path, encoder_source: Path, kind: str) -> None:
    """A model folder whose manifest follows docs/design.md; only the encoder is real."""
    from capgen.convert.hashing import sha256_file

    folder.mkdir()
    shutil.copyfile(encoder_source, folder / "encoder.onnx")
    files = {
        "encoder.onnx": {
            "sha256": sha256_file(folder / "encoder.onnx"),
            "bytes": (folder / "encoder.onnx").stat().st_size,
        }
    }
    for name in ("photo_projection.onnx", "decoder_step.onnx", "vocabulary.json"):
        files[name] = {"sha256": "0" * 64, "bytes": 1}
    manifest = {
        "format": "capgen-model",
        "format_version": 1,
        "name": "quantize-test",
        "encoder": {
            "file": "encoder.onnx",
            "kind": kind,
            "feature_size": 2048,
            "input": {"height": 299, "width": 299, "resize_filter": "BICUBIC"},
        },
        "decoder": {
            "projection_file": "photo_projection.onnx",
            "step_file": "decoder_step.onnx",
            "units": 256,
            "projection_size": 256,
        },
        "vocabulary": {
            "file": "vocabulary.json",
            "size": 10,
            "start_token": "start",
            "end_token": "end",
            "start_id": 1,
            "end_id": 2,
        },
        "max_length": 32,
        "files": files,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))


@pytest.mark.convert
@pytest.mark.slow
def test_int8_encoder_keeps_features_and_updates_manifest(
    tmp_path: Path, flickr_photos: list[Path], tensorflow_stack: None
) -> None:
    from capgen.convert.calibration import fetch_kitchenware_photos, photo_pixels
    from capgen.convert.encoder import ensure_encoder
    from capgen.convert.hashing import sha256_file
    from capgen.convert.quantize import INT8_FILENAME, feature_cosines, quantize_model_folder
    from capgen.runtime.integrity import verify_file
    from capgen.runtime.manifest import load_manifest

    folder = tmp_path / "model"
    _write_model_folder(folder, ensure_encoder("xception"), "xception")
    calibration = photo_pixels(fetch_kitchenware_photos()[:CALIBRATION_PHOTOS])
    messages: list[str] = []

    report = quantize_model_folder(folder, images=calibration, echo=messages.append)

    int8_path = folder / INT8_FILENAME
    assert report.output == int8_path and int8_path.is_file()
    # INT8 weights are a quarter of FP32; QDQ scales and the float bias add a little.
    assert report.int8_bytes < report.fp32_bytes / 3
    assert report.excluded_nodes == ()  # plain Xception: everything is quantized

    cosines = feature_cosines(folder / "encoder.onnx", int8_path, photo_pixels(flickr_photos))
    assert cosines.min() >= MIN_COSINE, f"cosines {np.round(cosines, 4)}"

    manifest = load_manifest(folder)
    assert manifest.encoder.int8_file == INT8_FILENAME
    record = manifest.files[INT8_FILENAME]
    assert record.sha256 == sha256_file(int8_path)
    assert record.bytes == int8_path.stat().st_size
    verify_file(int8_path, record, use_stamps=False)
    assert any("wrote" in message for message in messages)


def _toy_colour_encoder() -> Any:
    """The xception+colour layout in miniature: one cast image read by both branches."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Cast", ["image"], ["x"], name="cast", to=TensorProto.FLOAT),
        # Xception's preprocessing and the colour branch both read the cast image.
        helper.make_node("Mul", ["x", "half"], ["scaled"], name="preprocess"),
        helper.make_node("Conv", ["scaled", "w"], ["conv"], name="xception_conv"),
        helper.make_node("GlobalAveragePool", ["conv"], ["pool"], name="pool"),
        helper.make_node("Squeeze", ["pool", "axes"], ["pooled"], name="squeeze"),
        # The colour branch pools globally too; it must not be mistaken for Xception's end.
        helper.make_node("Mul", ["x", "inverse"], ["rgb"], name="colour_scale"),
        helper.make_node("GlobalAveragePool", ["rgb"], ["colour_pool"], name="colour_pool"),
        helper.make_node("Squeeze", ["colour_pool", "axes"], ["colour"], name="colour_squeeze"),
        helper.make_node("Concat", ["pooled", "colour"], ["features"], name="concat", axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "toy",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, 7])],
        initializer=[
            helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 1, 1], np.linspace(-1, 1, 12)),
            helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
            helper.make_tensor("inverse", TensorProto.FLOAT, [], [1 / 255]),
            helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.convert
def test_colour_branch_is_left_in_float(tensorflow_stack: None) -> None:
    """Nodes not upstream of Xception's pooling (colour features, the Concat) are excluded,
    and so are the Xception nodes that read a tensor the colour branch reads."""
    import onnx

    from capgen.convert.quantize import nodes_kept_float, xception_branch_nodes

    model = _toy_colour_encoder()
    onnx.checker.check_model(model)

    assert xception_branch_nodes(model) == {"cast", "preprocess", "xception_conv", "pool"}
    assert nodes_kept_float(model) == [
        "colour_pool",
        "colour_scale",
        "colour_squeeze",
        "concat",
        "preprocess",
    ]


@pytest.mark.convert
def test_int8_colour_features_equal_fp32(tmp_path: Path, tensorflow_stack: None) -> None:
    """No Quantize/Dequantize pair sits on a tensor the colour branch reads, so the INT8
    encoder's colour features are FP32's bit for bit (they read the calibrated 8-bit
    copy of the pixels before, scaled by 0.9995 instead of 1)."""
    import onnx
    import onnxruntime as ort

    from capgen.convert.quantize import nodes_kept_float, quantize_encoder

    fp32_path, int8_path = tmp_path / "encoder.onnx", tmp_path / "encoder.int8.onnx"
    onnx.save(_toy_colour_encoder(), str(fp32_path))
    rng = np.random.default_rng(0)
    calibration = [rng.integers(0, 256, (3, 8, 8), dtype=np.uint8) for _ in range(8)]
    quantize_encoder(fp32_path, int8_path, calibration)

    model = onnx.load(str(int8_path))
    assert any(node.op_type == "QuantizeLinear" for node in model.graph.node)
    producers = {output: node for node in model.graph.node for output in node.output}
    float_nodes = set(nodes_kept_float(_toy_colour_encoder())) - {"concat"}
    for node in model.graph.node:
        if node.name in float_nodes:
            read = [producers[name].op_type for name in node.input if name in producers]
            assert "DequantizeLinear" not in read, (node.name, read)

    image = rng.integers(0, 256, (1, 3, 8, 8), dtype=np.uint8)
    image[0, :, 0, 0] = 255  # the top of the range, which an 8-bit step below 1 moved
    outputs = [
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
            None, {"image": image}
        )[0]
        for path in (fp32_path, int8_path)
    ]
    np.testing.assert_array_equal(outputs[1][:, 4:], outputs[0][:, 4:])

"""A complete, valid, tiny model folder (docs/design.md) for runtime tests.

The real model needs an 83 MB encoder built by `capgen setup`; these tests
must not wait for it. The tiny encoder keeps the real interface (uint8 NHWC
in, scaling inside the graph, float features out) but is an 8x8 average pool,
and the decoder graphs come from `capgen.convert.step_graph` with random,
peaked weights (peaked so argmax never sits on a near-tie).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from capgen.convert.portable import make_portable
from capgen.convert.step_graph import (
    DecoderWeights,
    build_projection_graph,
    build_step_graph,
    build_word_gates_graph,
    step_metadata,
)
from capgen.runtime.manifest import WORD_GATES_FILE

HEIGHT = WIDTH = 32
POOL = 8
FEATURES = 3 * (HEIGHT // POOL) * (WIDTH // POOL)  # 48
UNITS = 16
WORDS: list[str | None] = [
    None,
    "start",
    "a",
    "dog",
    "cat",
    "runs",
    "on",
    "the",
    "grass",
    "red",
    "ball",
    "end",
    None,
]
START_ID, END_ID = 1, 11
MAX_LENGTH = 8


@dataclass(frozen=True)
class TinyModel:
    folder: Path
    weights: DecoderWeights
    words: list[str | None]
    max_length: int


def encoder_graph(height: int = HEIGHT, width: int = WIDTH) -> onnx.ModelProto:
    """uint8 [N,H,W,3] -> x/127.5-1 -> NCHW -> 8x8 average pool -> [N, F]."""
    nodes = [
        helper.make_node("Cast", ["image"], ["image_f"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["image_f", "scale"], ["scaled"]),
        helper.make_node("Sub", ["scaled", "one"], ["centred"]),
        helper.make_node("Transpose", ["centred"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node(
            "AveragePool", ["nchw"], ["pooled"], kernel_shape=[POOL, POOL], strides=[POOL, POOL]
        ),
        helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_encoder",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", height, width, 3])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", FEATURES])],
        [
            helper.make_tensor("scale", TensorProto.FLOAT, [], [127.5]),
            helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
        ],
    )
    # At IR 8 like every graph capgen writes, so the oldest onnxruntime loads the tiny model too.
    model = make_portable(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    onnx.checker.check_model(model)
    return model


def encoder_numpy(pixels: np.ndarray) -> np.ndarray:
    """What encoder_graph computes, for checking the runtime's encoder path."""
    scaled = pixels.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    n, h, w, _ = scaled.shape
    pooled = scaled.reshape(n, h // POOL, POOL, w // POOL, POOL, 3).mean(axis=(2, 4))
    return pooled.transpose(0, 3, 1, 2).reshape(n, -1)


def random_weights(
    seed: int = 0, vocab_size: int = len(WORDS), peak: float = 6.0
) -> DecoderWeights:
    rng = np.random.default_rng(seed)
    embedding = rng.normal(0, 1, (vocab_size, UNITS))
    embedding[0] = 0.0  # padding row, as Keras's mask_zero embedding learns nothing there
    output_bias = rng.normal(0, 0.5, vocab_size)
    # A trained model almost never predicts the padding id (it is never a target);
    # keep that, so only tests that want a no-word stop get one.
    output_bias[0] = output_bias[-1] = -20.0
    return DecoderWeights(
        photo_kernel=rng.normal(0, 1 / np.sqrt(FEATURES), (FEATURES, UNITS)),
        photo_bias=rng.normal(0, 0.1, UNITS),
        photo_activation="relu",
        embedding=embedding,
        lstm_kernel=rng.normal(0, 0.5, (UNITS, 4 * UNITS)),
        lstm_recurrent_kernel=rng.normal(0, 0.5, (UNITS, 4 * UNITS)),
        lstm_bias=rng.normal(0, 0.1, 4 * UNITS),
        recurrent_activation="sigmoid",
        merge="add",
        photo_first=True,
        hidden_kernel=rng.normal(0, 0.5, (UNITS, UNITS)),
        hidden_bias=rng.normal(0, 0.1, UNITS),
        hidden_activation="relu",
        output_kernel=rng.normal(0, peak / np.sqrt(UNITS), (UNITS, vocab_size)),
        output_bias=output_bias,
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_tiny_model(
    folder: Path,
    weights: DecoderWeights | None = None,
    words: list[str | None] | None = None,
    max_length: int = MAX_LENGTH,
    with_int8: bool = False,
) -> TinyModel:
    """Write every file of a format_version 1 model folder, manifest last with true checksums."""
    words = list(WORDS if words is None else words)
    weights = weights or random_weights(vocab_size=len(words))
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(encoder_graph(), folder / "encoder.onnx")
    if with_int8:
        shutil.copyfile(folder / "encoder.onnx", folder / "encoder.int8.onnx")
    onnx.save(build_projection_graph(weights), folder / "photo_projection.onnx")
    metadata = step_metadata(words, "start", "end", max_length)
    onnx.save(build_step_graph(weights, metadata), folder / "decoder_step.onnx")
    (folder / "vocabulary.json").write_text(json.dumps(words), encoding="utf-8")
    names = ["encoder.onnx", "photo_projection.onnx", "decoder_step.onnx", "vocabulary.json"]
    encoder: dict[str, object] = {
        "file": "encoder.onnx",
        "kind": "xception",
        "feature_size": FEATURES,
        "input": {
            "height": HEIGHT,
            "width": WIDTH,
            "channels": 3,
            "layout": "NHWC",
            "dtype": "uint8",
            "color_mode": "RGB",
            "resize_filter": "BICUBIC",
            "scaling": "x / 127.5 - 1, inside the graph",
        },
    }
    if with_int8:
        encoder["int8_file"] = "encoder.int8.onnx"
        names.append("encoder.int8.onnx")
    manifest = {
        "format": "capgen-model",
        "format_version": 1,
        "name": "tiny",
        "description": "tiny test model",
        "encoder": encoder,
        "decoder": {
            "projection_file": "photo_projection.onnx",
            "step_file": "decoder_step.onnx",
            "units": UNITS,
            "embedding_size": UNITS,
            "projection_size": UNITS,
            "recurrent_activation": weights.recurrent_activation,
            "merge": weights.merge,
            "scores": "log_probabilities",
        },
        "vocabulary": {
            "file": "vocabulary.json",
            "size": len(words),
            "start_token": "start",
            "end_token": "end",
            "start_id": words.index("start"),
            "end_id": words.index("end"),
        },
        "max_length": max_length,
        "files": {
            name: {"sha256": _sha256(folder / name), "bytes": (folder / name).stat().st_size}
            for name in names
        },
        "sources": {},
        "converted_with": {},
        "created": "2026-11-25T00:00:00Z",
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return TinyModel(folder=folder, weights=weights, words=words, max_length=max_length)


def write_word_gates(folder: Path, weights: DecoderWeights) -> Path:
    """word_gates.onnx for `weights`, as the converter writes it (not listed in the manifest)."""
    path = folder / WORD_GATES_FILE
    onnx.save(build_word_gates_graph(weights), path)
    return path

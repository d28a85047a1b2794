"""The Keras applications the tutorial's variants extract features with, as encoder kinds.

Each family is exported with the cut its tutorials use (VGG16: `fc2` of the
full model, 4096-d; the others: `include_top=False, pooling="avg"`) and with
`keras.applications.<family>.preprocess_input` done INSIDE the graph, so the
runtime feeds uint8 RGB pixels as it does for Xception and needs no code per
family: the input size and the resize filter travel in the manifest.

The default resize filter of each kind is what the tutorial using it did:
VGG16, ResNet50, InceptionV3 and DenseNet201 tutorials load photos with
`keras.preprocessing.image.load_img(target_size=...)`, which resizes with
nearest-neighbour; the Xception tutorial calls `PIL.Image.resize` (BICUBIC
since Pillow 7). `capgen convert model --resize-filter` overrides it.

This module is light (no TensorFlow at import): the specs are registered
with `capgen.convert.encoder_registry`. capgen writes each family's graph
itself from the weights file (`write_onnx`: `capgen.convert.application_onnx`,
no TensorFlow); `build`, which imports TensorFlow, stays the Keras reference
the tests compare with, and the base of a user's own Keras encoder's export
(`capgen.convert.keras_encoder`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import capgen.convert.encoder  # noqa: F401  (registers `xception` before the families)
from capgen.convert.encoder_registry import EncoderKindSpec, register_encoder_kind
from capgen.convert.weights_layout import check_weights_layout

# keras.applications.imagenet_utils.preprocess_input's three modes, as the manifest states them.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)
SCALING = {
    "caffe": (
        f"RGB -> BGR, minus the ImageNet mean {list(CAFFE_MEAN_BGR)} (BGR), no scaling, "
        "inside the graph"
    ),
    "torch": (
        f"x / 255, minus mean {list(TORCH_MEAN)}, divided by std {list(TORCH_STD)} (RGB), "
        "inside the graph"
    ),
    "tf": "x / 127.5 - 1, inside the graph",
    "none": "none: float pixels 0..255 as RGB, inside the graph",
}
PREPROCESSING_MODES = tuple(SCALING)


def preprocess_in_graph(image: Any, mode: str) -> Any:
    """uint8 NHWC RGB -> the float32 tensor `preprocess_input(mode=...)` makes, in TensorFlow ops.

    The same float32 operations in the same order as Keras's numpy path, so
    the graph reproduces `preprocess_input(x.astype("float32"))` bit for bit.
    """
    import tensorflow as tf

    pixels = tf.cast(image, tf.float32)
    if mode == "caffe":
        return tf.reverse(pixels, axis=[-1]) - tf.constant(CAFFE_MEAN_BGR, tf.float32)
    if mode == "torch":
        scaled = pixels / 255.0
        return (scaled - tf.constant(TORCH_MEAN, tf.float32)) / tf.constant(TORCH_STD, tf.float32)
    if mode == "tf":
        return pixels / 127.5 - 1.0
    if mode == "none":
        return pixels
    raise ValueError(f"unknown preprocessing mode {mode!r}")


@dataclass(frozen=True)
class Family:
    """One Keras application as the tutorials use it."""

    kind: str  # capgen's name, as in --kind
    application: str  # keras.applications attribute
    module: str  # keras.applications submodule holding its preprocess_input
    feature_size: int
    input_size: int
    mode: str  # preprocess_input's mode
    resize_filter: str  # the tutorial's (Pillow name)
    cut: str | None  # a layer of the full model whose output is the feature; None: notop + avg
    weights_stem: str  # how Keras names its weights files: <stem>_weights_tf_dim_ordering_...

    def cache_name(self, top: bool) -> str:
        """The name Keras caches the full (`top`) or no-top weights under (~/.keras/models/)."""
        suffix = "" if top else "_notop"
        return f"{self.weights_stem}_weights_tf_dim_ordering_tf_kernels{suffix}.h5"

    @property
    def weights_file(self) -> str:
        """The file this cut needs: the full one for a cut inside the top, else the no-top one."""
        return self.cache_name(top=bool(self.cut))

    def preprocessing(self) -> dict[str, str]:
        """Manifest fields beyond the size: what the graph does and which filter the runtime uses."""
        return {
            "resize_filter": self.resize_filter,
            "scaling": SCALING[self.mode],
            "preprocess_input": f"keras.applications.{self.module} ({self.mode})",
        }


FAMILIES = {
    family.kind: family
    for family in (
        Family(
            kind="vgg16", application="VGG16", module="vgg16", weights_stem="vgg16",
            feature_size=4096, input_size=224, mode="caffe", resize_filter="NEAREST", cut="fc2",
        ),
        Family(
            kind="resnet50", application="ResNet50", module="resnet50", weights_stem="resnet50",
            feature_size=2048, input_size=224, mode="caffe", resize_filter="NEAREST", cut=None,
        ),
        Family(
            kind="inceptionv3", application="InceptionV3", module="inception_v3",
            weights_stem="inception_v3",
            feature_size=2048, input_size=299, mode="tf", resize_filter="NEAREST", cut=None,
        ),
        Family(
            kind="densenet201", application="DenseNet201", module="densenet",
            weights_stem="densenet201",
            feature_size=1920, input_size=224, mode="torch", resize_filter="NEAREST", cut=None,
        ),
    )
}  # fmt: skip


def build_application(family: Family, weights_path: Path | None) -> Any:
    """The Keras model whose output is the tutorial's feature vector, weights checked and loaded.

    `weights_path` None leaves random weights (tests and benchmarks). A full
    (with top) file is accepted for the average-pooled kinds too: their
    features need only the convolutional weights, which it holds as well.
    """
    import keras

    application = getattr(keras.applications, family.application)
    if family.cut:
        full = application(weights=None, include_top=True)
        model = keras.Model(full.input, full.get_layer(family.cut).output, name=family.kind)
        if weights_path is not None:
            check_weights_layout(full, weights_path, family.kind, family.weights_file, top=False)
            _load(full, weights_path)
        return model

    size = (family.input_size, family.input_size, 3)
    model = application(weights=None, include_top=False, pooling="avg", input_shape=size)
    if weights_path is not None:
        has_top = check_weights_layout(
            model, weights_path, family.kind, family.weights_file, top=True
        )
        if has_top:  # the full file: load it into the full model, whose layers share nothing
            full = application(weights=None, include_top=True)
            _load(full, weights_path)
            model.set_weights(full.get_weights()[: len(model.get_weights())])
        else:
            _load(model, weights_path)
    return model


def _load(model: Any, weights_path: Path) -> None:
    from capgen.runtime.errors import InputError

    try:
        model.load_weights(str(weights_path))
    except Exception as error:  # h5py/Keras raise OSError, KeyError, ValueError on damaged files
        raise InputError(
            f"{weights_path}: cannot read its weights (corrupted or truncated download?): "
            f"{str(error).splitlines()[0] if str(error) else type(error).__name__}"
        ) from None


def encoder_function(model: Any, mode: str, size: tuple[int, int]) -> Any:
    """A TensorFlow function uint8 [N, height, width, 3] -> float32 features, preprocessing inside."""
    import tensorflow as tf

    height, width = size

    @tf.function(input_signature=[tf.TensorSpec([None, height, width, 3], tf.uint8, name="image")])
    def encode(image: tf.Tensor) -> tf.Tensor:
        features = model(preprocess_in_graph(image, mode), training=False)
        return tf.identity(features, name="features")

    return encode


def split_at_flatten(model: Any) -> tuple[Any, list[tuple[Any, Any]]] | None:
    """(the model up to its Flatten's input, the ReLU Dense layers after it as (kernel, bias)).

    For a cut inside a classifier top (VGG16 `fc2`): the convolutional part is
    exported by tf2onnx and the Dense layers are appended in ONNX (dense_head).
    None when the model does not end in Flatten -> Dense(relu)... (Dropout
    allowed): it is exported whole. Class names, not classes, so a tf_keras
    model (a user's Keras 2 encoder.h5) is recognised too.
    """
    layers = list(model.layers)
    flattens = [i for i, layer in enumerate(layers) if type(layer).__name__ == "Flatten"]
    if len(flattens) != 1:
        return None
    after = layers[flattens[0] + 1 :]
    dense = [layer for layer in after if type(layer).__name__ == "Dense"]
    if not dense or dense[-1] is not layers[-1]:
        return None
    for layer in after:
        config = layer.get_config()
        is_relu_dense = layer in dense and config.get("activation") == "relu" and config["use_bias"]
        if not (is_relu_dense or type(layer).__name__ == "Dropout"):
            return None
    if type(model).__module__.startswith("tf_keras"):
        import tf_keras as keras_module
    else:
        import keras as keras_module
    base = keras_module.Model(model.inputs, layers[flattens[0]].input)
    return base, [tuple(layer.get_weights()) for layer in dense]


def model_encoder_function(model: Any, mode: str, size: tuple[int, int]) -> Any:
    """`model` as an encoder function; a Flatten -> Dense head is kept for ONNX (`dense_head`)."""
    split = split_at_flatten(model)
    base, dense = split if split is not None else (model, None)
    encode = encoder_function(base, mode, size)
    encode.dense_head = dense  # appended by finish_dense_head after tf2onnx
    return encode


def finish_dense_head(model_proto: Any, encode: Any) -> None:
    """Append the Dense layers `model_encoder_function` kept out of tf2onnx (if any)."""
    from capgen.convert.dense_head import append_dense_head

    if encode.dense_head:
        append_dense_head(model_proto, encode.dense_head)


def _writer(family: Family) -> Callable[[Path, Path, Mapping[str, str]], Path]:
    def write_onnx(weights_path: Path, output_path: Path, props: Mapping[str, str]) -> Path:
        from capgen.convert.application_onnx import write_application_onnx

        return write_application_onnx(family.kind, weights_path, output_path, props)

    write_onnx.__doc__ = f"{family.application}'s graph from {family.weights_file}, no TensorFlow."
    return write_onnx


# 1: tf2onnx from the Keras application; 2: written by capgen.convert.application_onnx.
RECIPE_VERSION = 2


def _builder(family: Family) -> Any:
    def build(weights_path: Path) -> Any:
        size = (family.input_size, family.input_size)
        return model_encoder_function(build_application(family, weights_path), family.mode, size)

    build.__doc__ = f"{family.application} ({family.weights_file}) as an encoder function."
    return build


SPECS = {
    kind: register_encoder_kind(
        EncoderKindSpec(
            name=kind,
            feature_size=family.feature_size,
            build=_builder(family),
            recipe_version=RECIPE_VERSION,
            input_size=family.input_size,
            preprocessing=family.preprocessing(),
            weights_file=family.weights_file,
            finish_graph=finish_dense_head,
            write_onnx=_writer(family),
        )
    )
    for kind, family in FAMILIES.items()
}

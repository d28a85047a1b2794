"""VGG16, ResNet50, InceptionV3 and DenseNet201 encoders written in ONNX from their weights files.

Exporting these through TensorFlow and tf2onnx took 27-32 s of CPU, about
6 GB and the 1.8 GB conversion stack per family. Their graphs are plain
Keras layers (`capgen.convert.application_graphs` describes each one as its
Keras source builds it), so capgen writes them itself with `onnx.helper`, as
it writes Xception (`capgen.convert.xception_onnx`), in a few seconds and
without TensorFlow:

- the input contract is `capgen.convert.encoder`'s: uint8 NHWC `image`
  [N, H, W, 3], the family's `preprocess_input` inside the graph with the same
  float32 operations in the same order as the TensorFlow export
  (`applications.preprocess_in_graph`: caffe, tf or torch), then NCHW;
  float32 `features` [N, F];
- a batch norm right after a convolution is folded into it (exact in
  inference: an affine map per output channel; float64, rounded once); one
  after anything else (DenseNet's pre-activation batch norms, whose ReLU and
  padded convolution come after, so no fold is exact) stays an ONNX
  BatchNormalization with Keras's statistics and epsilon;
- ZeroPadding2D before a convolution becomes the convolution's pads (zeros,
  as ONNX pads a Conv); before a max pool it stays an explicit zero Pad (a
  MaxPool's own pads would be -inf); Keras's `same` padding is written as
  explicit pads, the odd pixel after; InceptionV3's AveragePooling2D(3, 1,
  'same') leaves the padding out of the count, as TensorFlow does;
- Flatten reads the NHWC tensor, as Keras's does, before VGG16's Dense layers.

Parity with Keras `predict` (within 1e-4 of the feature scale on real photos)
is tested in tests/convert/test_encoder_families.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from capgen.convert.application_graphs import ARCHITECTURES
from capgen.convert.application_weights import LayerArrays, read_application_weights
from capgen.convert.applications import CAFFE_MEAN_BGR, FAMILIES, TORCH_MEAN, TORCH_STD
from capgen.convert.layer_graph import Layer, LayerGraph, same_pads
from capgen.convert.onnx_layers import (
    GraphWriter,
    checked,
    conv_weight,
    fold_batch_norm,
    save_model,
)
from capgen.runtime.errors import ConversionError

FEATURES = "features"


def preprocess(writer: GraphWriter, mode: str, output_name: str = "preprocessed") -> str:
    """uint8 NHWC `image` -> `preprocess_input(mode=...)`'s float32 tensor, then NCHW.

    The operations and their order are `applications.preprocess_in_graph`'s
    (and Keras's numpy path's), with the same float32 constants. `output_name`
    names the scaled tensor: xception_onnx's graphs call it "scaled", and keep
    that name so their bytes (and sha256, which caches key on) stay as they were.
    """
    from onnx import TensorProto

    pixels = writer.node("Cast", ["image"], "image_float", to=TensorProto.FLOAT)
    if mode == "caffe":
        order = writer.constant("bgr_order", np.array([2, 1, 0], np.int64))
        bgr = writer.node("Gather", [pixels, order], "to_bgr", axis=3)
        mean = writer.constant("caffe_mean", np.array(CAFFE_MEAN_BGR, np.float32))
        scaled = writer.node("Sub", [bgr, mean], output_name)
    elif mode == "torch":
        divisor = writer.constant("torch_divisor", np.array(255.0, np.float32))
        unit = writer.node("Div", [pixels, divisor], "scale_div")
        mean = writer.constant("torch_mean", np.array(TORCH_MEAN, np.float32))
        std = writer.constant("torch_std", np.array(TORCH_STD, np.float32))
        centred = writer.node("Sub", [unit, mean], "centred")
        scaled = writer.node("Div", [centred, std], output_name)
    elif mode == "tf":
        divisor = writer.constant("scale_divisor", np.array(127.5, np.float32))
        one = writer.constant("scale_offset", np.array(1.0, np.float32))
        divided = writer.node("Div", [pixels, divisor], "scale_div")
        scaled = writer.node("Sub", [divided, one], output_name)
    elif mode == "none":
        scaled = pixels
    else:
        raise ConversionError(f"internal: unknown preprocessing mode {mode!r}")
    return writer.node("Transpose", [scaled], "to_nchw", perm=[0, 3, 1, 2])


class _Emitter:
    """Writes the layers `output` needs, in the order the source created them (topological)."""

    def __init__(self, graph: LayerGraph, output: int, arrays: LayerArrays) -> None:
        self.layers = graph.layers
        self.output = output
        self.arrays = arrays
        self.needed = graph.ancestors(output)
        self.readers = {
            index: [reader for reader in readers if reader in self.needed]
            for index, readers in graph.consumers().items()
        }
        self.writer = GraphWriter()
        self.values: dict[int, str] = {}
        self.deferred: set[int] = set()  # zero pads merged into a Conv, convs folded with a BN

    def emit(self, mode: str) -> None:
        for layer in self.layers:
            if layer.index in self.needed:
                self.values[layer.index] = self._layer(layer, mode)

    def _take(self, layer: Layer) -> dict[str, np.ndarray]:
        """The layer's arrays, dropped here once used (VGG16's are 0.5 GB)."""
        try:
            return self.arrays.pop(layer.index)
        except KeyError:
            raise ConversionError(f"internal: no weights read for {layer.name}") from None

    def _last(self, layer: Layer, name: str) -> str:
        """The name of a layer's final node: `features` for the output layer."""
        return FEATURES if layer.index == self.output else name

    def _layer(self, layer: Layer, mode: str) -> str:
        write = self.writer
        inputs = [self.values.get(index, "") for index in layer.inputs]
        if layer.kind == "input":
            return preprocess(write, mode)
        if layer.kind == "zero_pad":
            if all(self.layers[reader].kind == "conv" for reader in self.readers[layer.index]):
                self.deferred.add(layer.index)
                return ""
            top, left, bottom, right = layer.pads
            pads = write.constant(
                f"{layer.name}.pads", np.array([0, 0, top, left, 0, 0, bottom, right], np.int64)
            )
            return write.node("Pad", [inputs[0], pads], self._last(layer, layer.name))
        if layer.kind == "conv":
            readers = self.readers[layer.index]
            if layer.activation is None and [self.layers[r].kind for r in readers] == ["bn"]:
                self.deferred.add(layer.index)
                return ""
            arrays = self._take(layer)
            value = self._conv(layer, conv_weight(arrays["kernel"]), arrays.get("bias"), layer.name)
            return self._activation(layer, value)
        if layer.kind == "bn":
            return self._batch_norm(layer, inputs[0])
        if layer.kind == "relu":
            return write.node("Relu", inputs, self._last(layer, layer.name))
        if layer.kind in ("max_pool", "avg_pool"):
            return self._pool(layer, inputs[0])
        if layer.kind == "concat":
            return write.node("Concat", inputs, self._last(layer, layer.name), axis=1)
        if layer.kind == "add":
            return write.node("Add", inputs, self._last(layer, layer.name))
        if layer.kind == "global_avg_pool":
            pooled = write.node("GlobalAveragePool", inputs, layer.name)
            axes = write.constant(f"{layer.name}.axes", np.array([2, 3], np.int64))
            return write.node("Squeeze", [pooled, axes], self._last(layer, f"{layer.name}_squeeze"))
        if layer.kind == "flatten":
            nhwc = write.node("Transpose", inputs, f"{layer.name}_nhwc", perm=[0, 2, 3, 1])
            shape = write.constant(f"{layer.name}.shape", np.array([-1, layer.channels], np.int64))
            return write.node("Reshape", [nhwc, shape], self._last(layer, layer.name))
        if layer.kind == "dense":
            arrays = self._take(layer)
            kernel = write.constant(f"{layer.name}.kernel", arrays["kernel"])
            bias = write.constant(f"{layer.name}.bias", arrays["bias"])
            product = write.node("MatMul", [inputs[0], kernel], f"{layer.name}_matmul")
            if layer.activation is None:
                return write.node("Add", [product, bias], self._last(layer, layer.name))
            return self._activation(layer, write.node("Add", [product, bias], f"{layer.name}_bias"))
        raise ConversionError(f"internal: no ONNX for a {layer.kind} layer ({layer.name})")

    def _activation(self, layer: Layer, value: str) -> str:
        if layer.activation is None:
            return value
        if layer.activation != "relu":
            raise ConversionError(f"internal: no ONNX for activation {layer.activation!r}")
        name = layer.name if layer.kind == "dense" else f"{layer.name}_relu"
        return self.writer.node("Relu", [value], self._last(layer, name))

    def _conv(self, conv: Layer, weight: np.ndarray, bias: np.ndarray | None, name: str) -> str:
        """The Conv of `conv` with a ZeroPadding2D before it and `same` padding as its pads."""
        source = self.layers[conv.inputs[0]]
        top, left, bottom, right = 0, 0, 0, 0
        if source.index in self.deferred:  # a ZeroPadding2D merged here
            top, left, bottom, right = source.pads
            source = self.layers[source.inputs[0]]
        if conv.padding == "same":
            height, width = self.layers[conv.inputs[0]].size
            before, after, _ = same_pads(height, conv.kernel[0], conv.stride)
            top, bottom = top + before, bottom + after
            before, after, _ = same_pads(width, conv.kernel[1], conv.stride)
            left, right = left + before, right + after
        pads = (top, left, bottom, right)
        return self.writer.conv(name, self.values[source.index], weight, bias, conv.stride, pads)

    def _batch_norm(self, layer: Layer, source_value: str) -> str:
        bn = self._take(layer)
        source = self.layers[layer.inputs[0]]
        if source.index in self.deferred:  # conv -> BN: one Conv with the BN folded in
            conv = self._take(source)
            weight, bias = fold_batch_norm(conv["kernel"], bn, layer.epsilon, conv.get("bias"))
            return self._conv(source, weight, bias, self._last(layer, source.name))
        # Not after a convolution (DenseNet's pre-activation ones): Keras's own batch norm,
        # its stored statistics and epsilon, which onnxruntime computes as TensorFlow does
        # (x * (gamma / sqrt(var + eps)) + (beta - mean * that), float32) in one pass over
        # the tensor: a Mul and an Add made DenseNet201 a third slower.
        gamma = bn.get("gamma", np.ones_like(bn["beta"]))
        inputs = [source_value] + [
            self.writer.constant(f"{layer.name}.{role}", array)
            for role, array in (
                ("gamma", gamma),
                ("beta", bn["beta"]),
                ("moving_mean", bn["moving_mean"]),
                ("moving_variance", bn["moving_variance"]),
            )
        ]
        return self.writer.node(
            "BatchNormalization", inputs, self._last(layer, layer.name), epsilon=layer.epsilon
        )

    def _pool(self, layer: Layer, source_value: str) -> str:
        pads = [0, 0, 0, 0]
        if layer.padding == "same":
            height, width = self.layers[layer.inputs[0]].size
            top, bottom, _ = same_pads(height, layer.kernel[0], layer.stride)
            left, right, _ = same_pads(width, layer.kernel[1], layer.stride)
            pads = [top, left, bottom, right]
        attributes: dict[str, Any] = {
            "kernel_shape": list(layer.kernel),
            "strides": [layer.stride, layer.stride],
            "pads": pads,
        }
        if layer.kind == "avg_pool":
            op = "AveragePool"
            attributes["count_include_pad"] = 0  # TensorFlow averages over the real pixels only
        else:
            op = "MaxPool"
        return self.writer.node(op, [source_value], self._last(layer, layer.name), **attributes)


def application_model(
    kind: str, arrays: LayerArrays, graph: LayerGraph, output: int, props: Mapping[str, str]
) -> Any:
    """The ONNX model (not yet checked) of `kind` from its layer graph and the weights read for it."""
    family = FAMILIES[kind]
    size = graph.layers[graph.input].size[0]
    if (size, graph.layers[output].channels) != (family.input_size, family.feature_size):
        raise ConversionError(f"internal: {kind}'s layer graph disagrees with its family")
    emitter = _Emitter(graph, output, arrays)
    emitter.emit(family.mode)
    if emitter.arrays:
        raise ConversionError(f"internal: {kind}'s weights and graph disagree")
    return emitter.writer.finish(
        kind, ["N", size, size, 3], ["N", family.feature_size], props, "capgen (application_onnx)"
    )


def _model(kind: str, weights_path: Path, props: Mapping[str, str]) -> Any:
    family = FAMILIES[kind]
    graph, output = ARCHITECTURES[kind]()
    arrays = read_application_weights(
        Path(weights_path), graph, output, kind, family.weights_file, top=not family.cut
    )
    return application_model(kind, arrays, graph, output, props)


def build_application_onnx(kind: str, weights_path: Path, props: Mapping[str, str]) -> Any:
    """The checked, portable (opset 17, IR 8) ModelProto of `kind` with `props` as metadata."""
    return checked(_model(kind, weights_path, props))


def write_application_onnx(
    kind: str, weights_path: Path, output_path: Path, props: Mapping[str, str]
) -> Path:
    """Write `kind`'s encoder graph from `weights_path` to `output_path` (atomically).

    Nothing but `output_path` is written, and only once the whole file is
    checked and the graph built: a refused file leaves nothing behind.
    """
    return save_model(_model(kind, weights_path, props), output_path)

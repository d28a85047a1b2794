"""Xception's ONNX graph written straight from the Keras HDF5 weights: no TensorFlow.

Exporting the `xception` encoder through TensorFlow and tf2onnx needs the
1.8 GB conversion stack and peaked at 7.1 GB RSS, so a runtime or
`convert-decoder` install could not build the default model. Xception (no
top, average-pooled) is a fixed, plain graph: convolutions, separable
convolutions (a depthwise Conv with group=C, then a 1x1 Conv), batch norms,
ReLUs, 3x3/2 max pools, strided 1x1 residual convolutions with adds, and a
global average pool. It is written here with `onnx.helper`, as
`capgen.convert.application_onnx` writes the Keras application families
(with the graph-writing helpers of `capgen.convert.onnx_layers`):

- every batch norm is folded into the convolution before it (inference mode:
  scale = gamma / sqrt(moving_variance + 1e-3), computed in float64 and
  rounded once to float32), so each convolution carries a bias and no
  BatchNormalization node is left: what tf2onnx's export does too;
- Keras's `same` padding is written as explicit pads (TensorFlow puts the odd
  pixel after, never before), computed from the fixed 299x299 input;
- the input contract is `capgen.convert.encoder`'s: uint8 NHWC `image`,
  `x / 127.5 - 1` inside the graph, float32 `features` [N, 2048].

The weights are read by layer name as Keras's Xception names them
(`block1_conv1`, `block1_conv1_bn`, ..., `block14_sepconv2_bn`) and, for
the four residual convolutions Keras leaves unnamed (`conv2d`, or
`conv2d_1` in Keras 2 files, and their batch norms), by position, as
Keras's own loader does. Every array must be there with its shape, a float
dtype and finite values, stored in the file itself (no external links, no
external or virtual datasets); anything else is one line.

Equivalence with Keras (and with the tf2onnx export) within 1e-5 on real
photos is tested in tests/convert/test_xception_onnx.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from capgen.convert.isolated import read_untrusted
from capgen.convert.layer_graph import same_pads as _same_pads
from capgen.convert.onnx_layers import GraphWriter, checked, fold_batch_norm, save_model

# Re-exported: capgen.convert.xception_from_keras reads the ImageNet file with them.
from capgen.convert.stored_arrays import read_stored_array as read_stored_array
from capgen.convert.stored_arrays import stored_child as stored_child
from capgen.runtime.errors import ConversionError, InputError

INPUT_SIZE = 299
FEATURES = 2048
# keras.layers.BatchNormalization's default, which Xception's batch norms use.
BN_EPSILON = 1e-3
WEIGHTS_FILE = "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"
_BN_ARRAYS = ("gamma", "beta", "moving_mean", "moving_variance")


@dataclass(frozen=True)
class _Layer:
    """One weighted Keras layer: its name (None: a residual Keras leaves unnamed), kind, shapes."""

    name: str | None
    kind: str  # "conv", "sepconv" or "bn"
    shapes: tuple[tuple[int, ...], ...]

    @property
    def arrays(self) -> tuple[str, ...]:
        return {
            "conv": ("kernel",),
            "sepconv": ("depthwise_kernel", "pointwise_kernel"),
            "bn": _BN_ARRAYS,
        }[self.kind]


def _conv(name: str | None, kernel: int, channels_in: int, channels_out: int) -> _Layer:
    return _Layer(name, "conv", ((kernel, kernel, channels_in, channels_out),))


def _sepconv(name: str, channels_in: int, channels_out: int) -> _Layer:
    return _Layer(name, "sepconv", ((3, 3, channels_in, 1), (1, 1, channels_in, channels_out)))


def _bn(name: str | None, channels: int) -> _Layer:
    return _Layer(name, "bn", ((channels,),) * 4)


def expected_layers() -> list[_Layer]:
    """Xception's 80 weighted layers (234 arrays) in Keras's order, the order of the file's layer_names."""
    layers = [
        _conv("block1_conv1", 3, 3, 32),
        _bn("block1_conv1_bn", 32),
        _conv("block1_conv2", 3, 32, 64),
        _bn("block1_conv2_bn", 64),
    ]
    # Entry flow: two separable convolutions, a max pool, a strided 1x1 residual.
    for block, (channels_in, channels_out) in zip(
        (2, 3, 4), ((64, 128), (128, 256), (256, 728)), strict=True
    ):
        layers += [
            _sepconv(f"block{block}_sepconv1", channels_in, channels_out),
            _bn(f"block{block}_sepconv1_bn", channels_out),
            _sepconv(f"block{block}_sepconv2", channels_out, channels_out),
            _bn(f"block{block}_sepconv2_bn", channels_out),
            _conv(None, 1, channels_in, channels_out),
            _bn(None, channels_out),
        ]
    for block in range(5, 13):  # middle flow: three 728-channel separable convolutions, identity
        for index in (1, 2, 3):
            layers += [
                _sepconv(f"block{block}_sepconv{index}", 728, 728),
                _bn(f"block{block}_sepconv{index}_bn", 728),
            ]
    layers += [
        _sepconv("block13_sepconv1", 728, 728),
        _bn("block13_sepconv1_bn", 728),
        _sepconv("block13_sepconv2", 728, 1024),
        _bn("block13_sepconv2_bn", 1024),
        _conv(None, 1, 728, 1024),
        _bn(None, 1024),
        _sepconv("block14_sepconv1", 1024, 1536),
        _bn("block14_sepconv1_bn", 1536),
        _sepconv("block14_sepconv2", 1536, FEATURES),
        _bn("block14_sepconv2_bn", FEATURES),
    ]
    return layers


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _weighted_layers(root: Any, path: Path) -> list[tuple[str, Any, list[str]]]:
    """(name, group, weight names) of every layer with weights, in the file's layer_names order."""
    group = root
    if "layer_names" not in root.attrs and root.get("model_weights", getlink=True) is not None:
        group = stored_child(root, "model_weights", str(path))  # a whole-model .h5
    if "layer_names" not in group.attrs:
        raise ConversionError(
            f"{path} is not a Keras weights file in the layout Keras caches application "
            "weights in (no layer_names)"
        )
    weighted = []
    for raw in group.attrs["layer_names"]:
        name = _text(raw)
        layer = stored_child(group, name, str(path))
        names = [_text(weight) for weight in layer.attrs.get("weight_names", [])]
        if names:
            weighted.append((name, layer, names))
    return weighted


def _array_name(weight_name: str) -> str:
    """`block1_conv1/kernel:0` (Keras 2) or `block1_conv1/kernel` (Keras 3) -> `kernel`."""
    return weight_name.rsplit("/", 1)[-1].split(":", 1)[0]


def read_xception_weights(path: Path) -> list[tuple[_Layer, dict[str, np.ndarray]]]:
    """Every expected layer with its arrays, from a Keras Xception no-top `.h5` weights file.

    ConversionError in one line for a file that is not exactly that (InputError
    for Xception's full, with-top, file: the user passed the wrong one of two).
    """
    from capgen.runtime.git_lfs import is_pointer

    path = Path(path)
    try:
        with path.open("rb") as handle:
            head = handle.read(200)
    except OSError as error:
        raise ConversionError(
            f"cannot read weights file {path} ({error.strerror or error})"
        ) from None
    if is_pointer(head):
        raise ConversionError(
            f"{path} is a Git LFS pointer, not a weights file; run `git lfs pull`"
        )
    # In a child with a time bound: a damaged HDF5 file can hang h5py in C (isolated.py).
    return read_untrusted(_read_layers, path, what=f"weights file {path}", error=ConversionError)


def _read_layers(path: Path) -> list[tuple[_Layer, dict[str, np.ndarray]]]:
    import h5py

    expected = expected_layers()
    try:
        with h5py.File(path, "r") as root:
            weighted = _weighted_layers(root, path)
            if len(weighted) != len(expected):
                _refuse_layer_count(path, weighted, expected)
            result = []
            for index, (layer, (name, group, names)) in enumerate(
                zip(expected, weighted, strict=True), start=1
            ):
                result.append((layer, _layer_arrays(path, index, layer, name, group, names)))
            return result
    except (ConversionError, InputError):
        raise
    except Exception as error:  # h5py: OSError for non-HDF5/truncated, KeyError, ...
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConversionError(
            f"{path} is not a readable Keras Xception weights file: {first}"
        ) from None


def _layer_arrays(
    path: Path, index: int, layer: _Layer, name: str, group: Any, names: list[str]
) -> dict[str, np.ndarray]:
    """The arrays of weighted layer `index` (1-based), checked against what Xception expects there."""
    label = layer.name or f"residual {layer.kind}"
    if layer.name is not None and name != layer.name:
        raise ConversionError(
            f"{path} is not a Keras Xception no-top weights file: weighted layer {index} is "
            f"{name!r} where Xception has {layer.name!r}"
        )
    found = [_array_name(weight) for weight in names]
    if found != list(layer.arrays):
        raise ConversionError(
            f"{path}: layer {name!r} ({label}) holds {', '.join(found)}, "
            f"expected {', '.join(layer.arrays)}"
        )
    what = f"{path}: layer {name!r}"
    return {
        array: read_stored_array(group, weight, shape, what)
        for array, weight, shape in zip(layer.arrays, names, layer.shapes, strict=True)
    }


def _refuse_layer_count(path: Path, weighted: list[Any], expected: list[_Layer]) -> None:
    names = [name for name, _, _ in weighted]
    wanted = [layer.name for layer in expected]
    if len(names) > len(wanted) and all(
        want is None or have == want for have, want in zip(names, wanted, strict=False)
    ):
        raise InputError(
            f"{path} is Xception's full (with top) weights file; --kind xception "
            f"takes the no-top {WEIGHTS_FILE}"
        )
    missing = [want for want in wanted if want is not None and want not in names]
    detail = f"; missing {missing[0]!r}" if missing else ""
    raise ConversionError(
        f"{path} is not a Keras Xception no-top weights file: {len(names)} weighted layers "
        f"where Xception has {len(wanted)}{detail}"
    )


def _fold(kernel: np.ndarray, bn: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """An ONNX Conv weight and bias equal to the Keras conv + batch norm (Xception's epsilon)."""
    return fold_batch_norm(kernel, bn, BN_EPSILON)


def _build_model(
    weights: list[tuple[_Layer, dict[str, np.ndarray]]], props: Mapping[str, str]
) -> Any:
    """The uint8 NHWC -> features model, not yet checked (see the module docstring)."""
    # Here, not at the top: application_onnx -> applications -> encoder imports this module.
    from capgen.convert.application_onnx import preprocess

    arrays = iter(weights)
    writer = GraphWriter()

    def take(kind: str) -> tuple[_Layer, dict[str, np.ndarray]]:
        layer, values = next(arrays)
        if layer.kind != kind:  # expected_layers() and this walk describe one architecture
            raise ConversionError(f"internal: Xception's walk expected a {kind}, not {layer}")
        return layer, values

    def conv_bn(name: str, source: str, stride: int, pads: tuple[int, int, int, int]) -> str:
        _, conv = take("conv")
        _, bn = take("bn")
        weight, bias = _fold(conv["kernel"], bn)
        return writer.conv(name, source, weight, bias, stride, pads)

    def sepconv_bn(name: str, source: str) -> str:
        _, sep = take("sepconv")
        _, bn = take("bn")
        depthwise = sep["depthwise_kernel"]  # [3, 3, C, 1] -> [C, 1, 3, 3], group C
        channels = depthwise.shape[2]
        weight = np.ascontiguousarray(depthwise.transpose(2, 3, 0, 1))
        inner = writer.conv(f"{name}_depthwise", source, weight, pads=(1, 1, 1, 1), group=channels)
        pointwise, bias = _fold(sep["pointwise_kernel"], bn)
        return writer.conv(f"{name}_pointwise", inner, pointwise, bias)

    def relu(name: str, source: str) -> str:
        return writer.node("Relu", [source], name)

    size = INPUT_SIZE

    def max_pool(name: str, source: str) -> str:
        nonlocal size
        before, after, size = _same_pads(size, 3, 2)
        return writer.node(
            "MaxPool", [source], name, kernel_shape=[3, 3], strides=[2, 2],
            pads=[before, before, after, after],
        )  # fmt: skip

    def residual(name: str, source: str) -> str:
        before, after, _ = _same_pads(size, 1, 2)
        return conv_bn(name, source, 2, (before, before, after, after))

    x = preprocess(writer, "tf", output_name="scaled")  # x / 127.5 - 1, then NCHW

    x = relu("block1_conv1_act", conv_bn("block1_conv1", x, 2, (0, 0, 0, 0)))
    size = (size - 3) // 2 + 1
    x = relu("block1_conv2_act", conv_bn("block1_conv2", x, 1, (0, 0, 0, 0)))
    size = size - 2

    for block in (2, 3, 4):
        shortcut_source = x
        branch = x if block == 2 else relu(f"block{block}_sepconv1_act", x)
        branch = sepconv_bn(f"block{block}_sepconv1", branch)
        branch = relu(f"block{block}_sepconv2_act", branch)
        branch = sepconv_bn(f"block{block}_sepconv2", branch)
        shortcut = residual(f"block{block}_residual", shortcut_source)
        branch = max_pool(f"block{block}_pool", branch)
        x = writer.node("Add", [branch, shortcut], f"block{block}_add")

    for block in range(5, 13):
        branch = x
        for index in (1, 2, 3):
            branch = relu(f"block{block}_sepconv{index}_act", branch)
            branch = sepconv_bn(f"block{block}_sepconv{index}", branch)
        x = writer.node("Add", [branch, x], f"block{block}_add")

    shortcut_source = x
    branch = sepconv_bn("block13_sepconv1", relu("block13_sepconv1_act", x))
    branch = sepconv_bn("block13_sepconv2", relu("block13_sepconv2_act", branch))
    shortcut = residual("block13_residual", shortcut_source)
    x = writer.node("Add", [max_pool("block13_pool", branch), shortcut], "block13_add")

    x = relu("block14_sepconv1_act", sepconv_bn("block14_sepconv1", x))
    x = relu("block14_sepconv2_act", sepconv_bn("block14_sepconv2", x))
    pooled = writer.node("GlobalAveragePool", [x], "avg_pool")
    axes = writer.constant("pool_axes", np.array([2, 3], np.int64))
    writer.node("Squeeze", [pooled, axes], "features")
    if next(arrays, None) is not None:
        raise ConversionError("internal: Xception's weights and graph disagree")

    return writer.finish(
        "xception",
        ["N", INPUT_SIZE, INPUT_SIZE, 3],
        ["N", FEATURES],
        props,
        "capgen (xception_onnx)",
    )


def build_xception_onnx(weights_path: Path, props: Mapping[str, str]) -> Any:
    """The checked, portable (opset 17, IR 8) ModelProto of Xception with `props` as metadata."""
    return checked(_build_model(read_xception_weights(weights_path), props))


def write_xception_onnx(weights_path: Path, output_path: Path, props: Mapping[str, str]) -> Path:
    """Write Xception's encoder graph from `weights_path` to `output_path` (atomically).

    Nothing but `output_path` is written: the graph is saved to an exclusively
    created temporary file beside it and renamed into place.
    """
    return save_model(_build_model(read_xception_weights(weights_path), props), output_path)

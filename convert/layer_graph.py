"""A Keras functional model's layers as plain data, and the order Keras saves their weights in.

capgen writes the Keras application encoders (VGG16, ResNet50, InceptionV3,
DenseNet201) in ONNX itself, from their weights files, without TensorFlow
(`capgen.convert.application_onnx`). Each family is described once, as the
graph of Keras layers its `keras.applications` source builds
(`capgen.convert.application_graphs`): that description gives both the
ONNX graph and where each layer's weights are in the file.

Keras's legacy HDF5 weights files (`~/.keras/models/*_tf_dim_ordering_tf_kernels*.h5`)
list the weighted layers in `model.layers` order, and Keras loads them back
by position, never by name. That order is not the order of the source:
Keras sorts a functional model's layers by their depth from the output (the
longest path), breaking ties by a depth-first walk from the output through
each layer's inputs in order (`keras.src.ops.function.map_graph`), so
ResNet50's shortcut convolution comes after its block's second convolution
and InceptionV3's unnamed branches interleave. `LayerGraph.keras_order`
reproduces that sort; tests compare it with Keras's own `model.layers`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Keras's default names for layers built without one (`conv2d_3`, ...), as Keras 3
# names them in a fresh session; used for ONNX node names, never to find weights.
_KERAS_BASE_NAMES = {
    "input": "input_layer",
    "conv": "conv2d",
    "bn": "batch_normalization",
    "relu": "activation",
    "zero_pad": "zero_padding2d",
    "max_pool": "max_pooling2d",
    "avg_pool": "average_pooling2d",
    "concat": "concatenate",
    "add": "add",
    "global_avg_pool": "global_average_pooling2d",
    "flatten": "flatten",
    "dense": "dense",
}
BN_ROLES = ("gamma", "beta", "moving_mean", "moving_variance")


@dataclass(frozen=True)
class Layer:
    """One Keras layer: what it computes, from which layers, and its weights' roles and shapes.

    `channels` and `size` (height, width) describe its output in NCHW terms;
    after Flatten or Dense, `channels` is the feature count and `size` (1, 1).
    `named` is False for a layer the source leaves unnamed (Keras names it by
    a counter, which differs between sessions and Keras versions).
    """

    index: int
    kind: str
    name: str
    named: bool
    inputs: tuple[int, ...]
    channels: int
    size: tuple[int, int]
    arrays: tuple[tuple[str, tuple[int, ...]], ...] = ()
    kernel: tuple[int, int] = (1, 1)
    stride: int = 1
    padding: str = "valid"  # Keras's `same` or `valid`
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # ZeroPadding2D: top, left, bottom, right
    epsilon: float = 0.0
    activation: str | None = None  # a Conv2D's or Dense's own activation

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return [shape for _, shape in self.arrays]


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
    """TensorFlow's `same` padding for one spatial axis: (before, after, output size).

    TensorFlow puts the odd pixel after, never before.
    """
    output = -(-size // stride)
    total = max((output - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2, output


def _output_size(size: int, kernel: int, stride: int, padding: str) -> int:
    if padding == "same":
        return same_pads(size, kernel, stride)[2]
    return (size - kernel) // stride + 1


class LayerGraph:
    """The layers of one Keras functional model, appended in the order its source creates them.

    Every method adds one Keras layer and returns its index; the first layer
    (index 0) is the input, `size` x `size` x 3.
    """

    def __init__(self, size: int) -> None:
        self.layers: list[Layer] = []
        self._unnamed: dict[str, int] = {}
        self.input = self._add("input", None, (), 3, (size, size))

    def _add(
        self,
        kind: str,
        name: str | None,
        inputs: tuple[int, ...],
        channels: int,
        size: tuple[int, int],
        **fields: Any,
    ) -> int:
        named = name is not None
        if name is None:
            base = _KERAS_BASE_NAMES[kind]
            count = self._unnamed.get(base, 0)
            self._unnamed[base] = count + 1
            name = f"{base}_{count}" if count else base
        index = len(self.layers)
        layer = Layer(index, kind, name, named, inputs, channels, size, **fields)
        self.layers.append(layer)
        return index

    def conv(
        self,
        x: int,
        filters: int,
        kernel: int | tuple[int, int],
        stride: int = 1,
        padding: str = "valid",
        bias: bool = True,
        activation: str | None = None,
        name: str | None = None,
    ) -> int:
        """Conv2D (kernel [kh, kw, in, out], bias [out] when `bias`)."""
        rows, cols = (kernel, kernel) if isinstance(kernel, int) else kernel
        source = self.layers[x]
        height, width = source.size
        size = (
            _output_size(height, rows, stride, padding),
            _output_size(width, cols, stride, padding),
        )
        arrays: tuple[tuple[str, tuple[int, ...]], ...] = (
            ("kernel", (rows, cols, source.channels, filters)),
        )
        if bias:
            arrays += (("bias", (filters,)),)
        return self._add(
            "conv", name, (x,), filters, size, arrays=arrays, kernel=(rows, cols),
            stride=stride, padding=padding, activation=activation,
        )  # fmt: skip

    def bn(self, x: int, epsilon: float, scale: bool = True, name: str | None = None) -> int:
        """BatchNormalization on the channels; `scale=False` stores no gamma (InceptionV3)."""
        source = self.layers[x]
        roles = BN_ROLES if scale else BN_ROLES[1:]
        arrays = tuple((role, (source.channels,)) for role in roles)
        return self._add(
            "bn", name, (x,), source.channels, source.size, arrays=arrays, epsilon=epsilon
        )

    def relu(self, x: int, name: str | None = None) -> int:
        source = self.layers[x]
        return self._add("relu", name, (x,), source.channels, source.size)

    def zero_pad(self, x: int, pad: int, name: str | None = None) -> int:
        """ZeroPadding2D with `pad` pixels on every side."""
        source = self.layers[x]
        height, width = source.size
        size = (height + 2 * pad, width + 2 * pad)
        return self._add("zero_pad", name, (x,), source.channels, size, pads=(pad,) * 4)

    def _pool(
        self, kind: str, x: int, pool: int, stride: int, padding: str, name: str | None
    ) -> int:
        source = self.layers[x]
        height, width = source.size
        size = (
            _output_size(height, pool, stride, padding),
            _output_size(width, pool, stride, padding),
        )
        return self._add(
            kind, name, (x,), source.channels, size,
            kernel=(pool, pool), stride=stride, padding=padding,
        )  # fmt: skip

    def max_pool(
        self, x: int, pool: int, stride: int, padding: str = "valid", name: str | None = None
    ) -> int:
        return self._pool("max_pool", x, pool, stride, padding, name)

    def avg_pool(
        self, x: int, pool: int, stride: int, padding: str = "valid", name: str | None = None
    ) -> int:
        """AveragePooling2D; with `same` padding TensorFlow leaves the padding out of the count."""
        return self._pool("avg_pool", x, pool, stride, padding, name)

    def concat(self, inputs: list[int], name: str | None = None) -> int:
        """Concatenate on the channel axis, inputs in this order."""
        channels = sum(self.layers[i].channels for i in inputs)
        return self._add("concat", name, tuple(inputs), channels, self.layers[inputs[0]].size)

    def add(self, inputs: list[int], name: str | None = None) -> int:
        first = self.layers[inputs[0]]
        return self._add("add", name, tuple(inputs), first.channels, first.size)

    def global_avg_pool(self, x: int, name: str | None = None) -> int:
        return self._add("global_avg_pool", name, (x,), self.layers[x].channels, (1, 1))

    def flatten(self, x: int, name: str | None = None) -> int:
        """Flatten of the NHWC tensor (row-major height, width, channels), as Keras does."""
        source = self.layers[x]
        features = source.channels * source.size[0] * source.size[1]
        return self._add("flatten", name, (x,), features, (1, 1))

    def dense(self, x: int, units: int, activation: str | None, name: str | None = None) -> int:
        inputs = self.layers[x].channels
        arrays = (("kernel", (inputs, units)), ("bias", (units,)))
        return self._add("dense", name, (x,), units, (1, 1), arrays=arrays, activation=activation)

    @property
    def last(self) -> int:
        """The whole model's output, the layer added last (VGG16's `predictions`), whose
        weighted layers a weights file holds; the features may be an earlier layer."""
        return len(self.layers) - 1

    def consumers(self) -> dict[int, list[int]]:
        """The layers reading each layer's output."""
        readers: dict[int, list[int]] = {layer.index: [] for layer in self.layers}
        for layer in self.layers:
            for source in layer.inputs:
                readers[source].append(layer.index)
        return readers

    def ancestors(self, output: int) -> set[int]:
        """`output` and every layer it is computed from."""
        found: set[int] = set()
        pending = [output]
        while pending:
            index = pending.pop()
            if index not in found:
                found.add(index)
                pending.extend(self.layers[index].inputs)
        return found

    def keras_order(self, output: int) -> list[Layer]:
        """The layers of the model ending at `output`, in Keras's `model.layers` order.

        As `keras.src.ops.function.map_graph`: a depth-first walk from the
        output (inputs in order) numbers the layers; each layer's depth is its
        longest distance to the output; layers come deepest first, ties in
        walk order. Iterative, since DenseNet201's chain is 700 layers deep.
        """
        walk_index: dict[int, int] = {}
        finished: set[int] = set()
        postorder: list[int] = []
        stack: list[tuple[int, bool]] = [(output, False)]
        while stack:
            index, expanded = stack.pop()
            if expanded:
                if index not in finished:
                    finished.add(index)
                    postorder.append(index)
                continue
            if index in finished:
                continue
            walk_index.setdefault(index, len(walk_index))
            stack.append((index, True))
            stack.extend((source, False) for source in reversed(self.layers[index].inputs))
        depth: dict[int, int] = {}
        for index in reversed(postorder):
            current = depth.setdefault(index, 0)
            for source in self.layers[index].inputs:
                depth[source] = max(current + 1, depth.get(source, 0))
        ordered = sorted(postorder, key=lambda index: (-depth[index], walk_index[index]))
        return [self.layers[index] for index in ordered]

    def weighted(self, output: int) -> list[Layer]:
        """The layers with weights, in the order a Keras weights file lists them."""
        return [layer for layer in self.keras_order(output) if layer.arrays]

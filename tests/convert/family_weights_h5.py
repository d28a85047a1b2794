"""Keras application weights files written with h5py alone: no TensorFlow, any Keras's naming.

The layout is Keras's legacy HDF5 weights layout (`layer_names`, one group per
layer with `weight_names`), the layers in Keras's order as
`capgen.convert.layer_graph` computes it (tests/convert/test_application_onnx.py
checks that order against Keras itself). The names follow one Keras:

- `keras3`: `conv1_conv/kernel`, unnamed layers `conv2d`, `conv2d_1`, ...;
- `keras2`: `conv1_conv/kernel:0`, DenseNet's `conv1/conv`, unnamed layers from `conv2d_1`;
- `keras1`: VGG16's ImageNet file, `block1_conv1_W_1:0` and `block1_conv1_b_1:0`.

Values are random but plausible (batch-norm statistics included, unlike a
freshly built Keras model's ones and zeros), so a layer read in the wrong
place changes the features.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from capgen.convert.application_graphs import ARCHITECTURES
from capgen.convert.layer_graph import Layer

# Keras 2 spelled DenseNet's first layers with a slash (HDF5 nests them as groups).
_KERAS2_NAMES = {"conv1_conv": "conv1/conv", "conv1_bn": "conv1/bn"}
_KERAS1_ROLES = {"kernel": "W", "bias": "b"}


def _values(rng: np.random.Generator, role: str, shape: tuple[int, ...]) -> np.ndarray:
    if role in ("gamma", "moving_variance"):
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if role in ("beta", "moving_mean", "bias"):
        return np.float32(0.05) * rng.standard_normal(shape, dtype=np.float32)
    values = rng.standard_normal(shape, dtype=np.float32)
    values *= np.float32(np.sqrt(2.0 / int(np.prod(shape[:-1]))))  # He; in place: 0.5 GB for VGG16
    return values


def family_layers(kind: str, top: bool | None = None) -> list[tuple[str, Layer]]:
    """(Keras 3 name, layer) of each weighted layer the kind's file holds, in file order.

    `top` None: the file the kind needs (VGG16's full one, the others' no-top
    one); True adds a 1000-class `predictions` layer after a no-top family's
    layers; False drops VGG16's top (its `_notop` file).
    """
    graph, output = ARCHITECTURES[kind]()
    layers = graph.weighted(graph.last)
    if kind == "vgg16" and top is False:
        layers = [layer for layer in layers if layer.kind == "conv"]
    named = [(layer.name, layer) for layer in layers]
    if kind != "vgg16" and top:
        features = graph.layers[output].channels
        predictions = Layer(
            index=-1, kind="dense", name="predictions", named=True, inputs=(), channels=1000,
            size=(1, 1), arrays=(("kernel", (features, 1000)), ("bias", (1000,))),
        )  # fmt: skip
        named.append(("predictions", predictions))
    return named


def _keras2_names(layers: list[tuple[str, Layer]]) -> list[str]:
    counts: dict[str, int] = {}
    names = []
    for name, layer in layers:
        if layer.named:
            names.append(_KERAS2_NAMES.get(name, name))
            continue
        base = name.rsplit("_", 1)[0] if name.rsplit("_", 1)[-1].isdigit() else name
        counts[base] = counts.get(base, 0) + 1
        names.append(f"{base}_{counts[base]}")
    return names


def write_family_weights(
    kind: str, path: Path, naming: str = "keras3", top: bool | None = None, seed: int = 0
) -> Path:
    """`path`, a weights file for `kind` (see `family_layers` for `top`) in `naming`'s layout."""
    import h5py

    rng = np.random.default_rng(seed)
    layers = family_layers(kind, top)
    names = _keras2_names(layers) if naming == "keras2" else [name for name, _ in layers]
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        handle.create_group("input_layer").attrs["weight_names"] = []  # a layer without weights
        for name, (_, layer) in zip(names, layers, strict=True):
            group = handle.create_group(name)
            weight_names = []
            for role, shape in layer.arrays:
                if naming == "keras1":
                    weight = f"{name}_{_KERAS1_ROLES[role]}_1:0"
                else:
                    weight = f"{name}/{role}" + (":0" if naming == "keras2" else "")
                group.create_dataset(weight, data=_values(rng, role, shape))
                weight_names.append(weight.encode())
            group.attrs["weight_names"] = weight_names
        handle.attrs["layer_names"] = [name.encode() for name in ["input_layer", *names]]
    return path

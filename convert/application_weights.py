"""Read a Keras application weights file for capgen's own ONNX writer: checked, without Keras.

The file is a user's `--weights` (`~/.keras/models/<family>_weights_tf_dim_ordering_tf_kernels[_notop].h5`),
so nothing in it is trusted. `weights_layout.read_layout` refuses first what
must never be opened or followed (a FIFO, a Git LFS pointer, links and
storage outside the file, no `layer_names`); `weights_layout.check_layout`
then compares its layers' shapes with the family's, in Keras's order, and
names the wrong family, a no-top file where VGG16 needs the top, or the
first differing layer, in the same one-line InputErrors the TensorFlow path
gives. Only then are the arrays read, by position as Keras's own loader
reads them (Keras 1 files name VGG16's kernel `block1_conv1_W_1:0`, Keras 2
`block1_conv1/kernel:0`, Keras 3 `block1_conv1/kernel`), each with its
shape, a float dtype and finite values checked, and only those the features
need (not VGG16's `predictions`, nor the classifier of a full file). Layers
the source names must carry that name (Keras 2 spelled DenseNet's first
layers `conv1/conv`, Keras 3 `conv1_conv`: both are accepted); unnamed ones
(InceptionV3's) are taken by position.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from capgen.convert.isolated import read_untrusted
from capgen.convert.layer_graph import Layer, LayerGraph
from capgen.convert.stored_arrays import read_stored_array, stored_child
from capgen.convert.weights_layout import check_layout, read_layout
from capgen.runtime.errors import CapgenError, ConversionError, InputError

LayerArrays = dict[int, dict[str, np.ndarray]]


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _same_name(found: str, expected: str) -> bool:
    """Keras 2 allowed `/` in layer names (DenseNet's `conv1/conv`); Keras 3 writes `_`."""
    return found.replace("/", "_") == expected.replace("/", "_")


def read_application_weights(
    path: Path,
    graph: LayerGraph,
    output: int,
    kind: str,
    weights_file: str,
    top: bool,
) -> LayerArrays:
    """The arrays (by role: kernel, bias, gamma, ...) of each weighted layer `output` needs.

    `top` True: the graph's layers are a no-top cut and a full file (extra
    classifier layers after them) is accepted too; False: the file must hold
    exactly the graph's layers (VGG16's full file). Every problem is one
    InputError line naming `path`.
    """
    # In a child with a time bound: a damaged HDF5 file can hang h5py in C (isolated.py).
    return read_untrusted(
        _read_application_weights,
        Path(path),
        graph,
        output,
        kind,
        weights_file,
        top,
        what=f"weights file {path}",
        error=InputError,
    )


def _read_application_weights(
    path: Path, graph: LayerGraph, output: int, kind: str, weights_file: str, top: bool
) -> LayerArrays:
    layout = read_layout(path)
    expected = graph.weighted(graph.last)
    check_layout(path, layout, [layer.shapes for layer in expected], kind, weights_file, top)
    for position, (layer, (found, _)) in enumerate(zip(expected, layout, strict=False), start=1):
        if layer.named and not _same_name(found, layer.name):
            raise InputError(
                f"{path} does not hold {kind}'s weights: weighted layer {position} is "
                f"{found!r} where {kind} has {layer.name!r}; expected {weights_file}"
            )
    needed = graph.ancestors(output)
    wanted = [
        (layer, found)
        for layer, (found, _) in zip(expected, layout, strict=False)
        if layer.index in needed
    ]
    try:
        return _read_arrays(path, wanted)
    except CapgenError as error:
        raise InputError(str(error)) from None
    except Exception as error:  # h5py: OSError on a damaged file, KeyError, ...
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(
            f"{path}: cannot read its weights (corrupted or truncated download?): {first}"
        ) from None


def _read_arrays(path: Path, layers: list[tuple[Layer, str]]) -> LayerArrays:
    import h5py

    arrays: LayerArrays = {}
    with h5py.File(path, "r") as root:
        group = root  # as read_layout: a whole-model .h5 keeps its layers in model_weights
        if root.get("model_weights", getlink=True) is not None:
            group = stored_child(root, "model_weights", str(path))
        for layer, name in layers:
            what = f"{path}: layer {name!r}"
            stored = stored_child(group, name, str(path))
            weight_names = [_text(weight) for weight in stored.attrs.get("weight_names", [])]
            if len(weight_names) != len(layer.arrays):
                raise ConversionError(
                    f"{what} holds {len(weight_names)} arrays where {layer.name} has "
                    f"{len(layer.arrays)}"
                )
            arrays[layer.index] = {
                role: read_stored_array(stored, weight, shape, what)
                for (role, shape), weight in zip(layer.arrays, weight_names, strict=True)
            }
    return arrays

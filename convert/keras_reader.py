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

from capgen.convert.source_files import check_source_file
from capgen.runtime.errors import InputError, ModelError, UnsupportedModelError

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

LayerWeights = dict[str, dict[str, np.ndarray]]  # layer name -> {"kernel": ..., "bias": ...}


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
            "reading Keras files needs h5py: pip install capgen[convert]"
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
    return config


def read_architecture_json(path: Path) -> dict[str, Any]:
    path = check_source_file(Path(path), "architecture JSON", empty_error=ModelError)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ModelError(f"architecture file {path} is not UTF-8 JSON text") from error
    return _parse_config(text, f"architecture file {path}")


def _variable_key(weight_name: str) -> str:
    """'lstm_2/lstm_cell/recurrent_kernel:0' -> 'recurrent_kernel'."""
    return re.sub(r":\d+$", "", weight_name.rsplit("/", 1)[-1])


def _weight_array(dataset: Any) -> np.ndarray:
    """A dataset's values, refusing non-numbers and sizes no tutorial decoder has before reading."""
    name = getattr(dataset, "name", "?")
    dtype = getattr(dataset, "dtype", None)
    if dtype is None or dtype.kind not in "fiu":
        raise ModelError(f"weight {name} holds {dtype} values, not numbers")
    declared = int(np.prod(dataset.shape, dtype=np.float64)) * dtype.itemsize
    if declared > MAX_WEIGHT_BYTES:
        raise ModelError(
            f"weight {name} declares shape {tuple(dataset.shape)} ({declared / 2**30:.1f} GiB), "
            f"more than any tutorial decoder ({MAX_WEIGHT_BYTES >> 30} GiB at most); refusing to read it"
        )
    return np.asarray(dataset)


def _read_legacy_weights(root: Any) -> LayerWeights:
    weights: LayerWeights = {}
    for layer_name in (_text(name) for name in root.attrs["layer_names"]):
        group = root[layer_name]
        arrays = {
            _variable_key(_text(weight_name)): _weight_array(group[_text(weight_name)])
            for weight_name in group.attrs.get("weight_names", [])
        }
        if arrays:
            weights[layer_name] = arrays
    return weights


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


def _vars_arrays(group: Any) -> list[np.ndarray]:
    variables = group.get("vars")
    if variables is None:
        return []
    return [_weight_array(variables[key]) for key in sorted(variables, key=int)]


def _read_keras3_weights(root: Any, model_config: dict[str, Any]) -> LayerWeights:
    classes = {
        str(layer.get("name")): str(layer.get("class_name"))
        for layer in (model_config.get("config") or {}).get("layers", [])
    }
    default_paths = _keras3_default_paths(model_config)
    weights: LayerWeights = {}
    for path, group in root["layers"].items():
        variables = group.get("vars")
        named = variables.attrs.get("name") if variables is not None else None
        layer_name = (
            _text(named)
            if named is not None and _text(named) in classes
            else default_paths.get(path)
        )
        if layer_name is None:
            continue
        arrays = _vars_arrays(group)
        if "cell" in group:  # recurrent layers keep their variables on the cell
            arrays += _vars_arrays(group["cell"])
        if not arrays:
            continue
        order = _KERAS3_VARIABLE_ORDER.get(classes[layer_name])
        if order is None:
            continue  # the architecture check names unsupported layers
        weights[layer_name] = dict(zip(order, arrays, strict=False))
    return weights


def _read_weights_group(handle: Any, model_config: dict[str, Any], where: str) -> LayerWeights:
    if "layer_names" in handle.attrs:
        return _read_legacy_weights(handle)
    if "model_weights" in handle and "layer_names" in handle["model_weights"].attrs:
        return _read_legacy_weights(handle["model_weights"])
    if "layers" in handle:
        return _read_keras3_weights(handle, model_config)
    raise ModelError(f"{where} holds no Keras weights (no layer_names or layers group)")


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
        if version is None and "model_weights" in handle:
            version = handle["model_weights"].attrs.get("keras_version")
        weights = _read_weights_group(handle, model_config, where)
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
        with _h5py().File(io.BytesIO(weights_bytes), "r") as handle:
            weights = _read_weights_group(handle, model_config, where)
        version = metadata.get("keras_version") if isinstance(metadata, dict) else None
        return KerasModelFiles(
            model_config, _text(version) if version is not None else None, weights
        )


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
        files = _read_h5(path, architecture)
    else:
        raise ModelError(f"{path} is neither a Keras .h5 (HDF5) nor a .keras (zip) file")
    if architecture is not None and files.keras_version is None:
        files.keras_version = architecture.get("keras_version")
    return files


def require_weights(weights: LayerWeights, layer: str, names: tuple[str, ...]) -> list[np.ndarray]:
    """The arrays `names` of `layer`, or a ModelError saying which weight the file lacks."""
    arrays = weights.get(layer)
    if arrays is None:
        raise ModelError(
            f"the weights file has no weights for layer {layer!r}; "
            "is it the weights file of this architecture?"
        )
    missing = [name for name in names if name not in arrays]
    if missing:
        raise UnsupportedModelError(f"layer {layer!r} has no {', '.join(missing)} weight")
    return [arrays[name] for name in names]

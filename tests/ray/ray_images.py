"""Generated test images: small scenes of coloured rectangles, and two files that are not images."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def scene(rng: np.random.Generator, size: int = 96) -> Image.Image:
    """A small picture of coloured rectangles on a coloured ground (like the default model's scenes)."""
    pixels = np.empty((size, size, 3), np.uint8)
    pixels[:] = rng.integers(0, 256, 3)
    for _ in range(int(rng.integers(1, 4))):
        x, y = rng.integers(0, size - 24, 2)
        w, h = rng.integers(12, 40, 2)
        pixels[y : y + h, x : x + w] = rng.integers(0, 256, 3)
    return Image.fromarray(pixels)


def write_scenes(folder: Path, count: int, seed: int, start: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(start, start + count):
        path = folder / f"scene{index:04d}.png"
        scene(rng).save(path)
        paths.append(path)
    return paths


def write_bad_images(folder: Path) -> list[Path]:
    """Two files that are not images capgen can decode: a web page, a truncated PNG."""
    page = folder / "page.jpg"
    page.write_bytes(b"<html>a failed download</html>")
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buffer, "PNG")
    cut = folder / "cut.png"
    cut.write_bytes(buffer.getvalue()[:40])
    return [page, cut]

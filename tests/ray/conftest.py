"""A real Ray cluster for tests/ray: two nodes in a network namespace the session creates.

Skips (with the reason) only when this machine cannot host it: not root,
no `ip netns`, or no ray extra; in CI all three hold, so these tests run.
The cluster's traffic stays on the namespace's loopback device; teardown
(`ray stop --force` inside it, `ip netns del`) runs whatever happened.
Actors get their own CAPGEN_HOME, so a shipped model is written there and
not into the shared cache.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from capgen.ray.netns_cluster import NetnsCluster, netns_cluster, why_unavailable
from capgen.runtime.home import default_model_dir

IMAGE_COUNT = 200


@pytest.fixture(scope="session")
def model_folder() -> Path:
    folder = default_model_dir()
    if not (folder / "manifest.json").is_file():
        pytest.skip(f"no default model at {folder}: run `make setup` (CI does)")
    return folder


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsCluster]:
    reason = why_unavailable()
    if reason is not None:
        pytest.skip(reason)
    home = tmp_path_factory.mktemp("actor-home")
    with netns_cluster(
        head_cpus=4, worker_cpus=(4,), label="cgt", env={"CAPGEN_HOME": str(home)}
    ) as running:
        yield running


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


@pytest.fixture(scope="session")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[Path]]:
    """(200 good images, 2 bad ones), all in one folder."""
    folder = tmp_path_factory.mktemp("scenes")
    return write_scenes(folder, IMAGE_COUNT, seed=13), write_bad_images(folder)

"""Assertions shared by the hostile-user tests (a module of its own: `conftest` names clash across folders)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
from capgen_cli import assert_one_line_error  # noqa: F401 (the hardening tests import it from here)
from PIL import Image

# conftest's `run` fixture: capgen ARGS... -> the finished process
Run = Callable[..., subprocess.CompletedProcess[bytes]]


def limit_file_size(limit: int) -> Callable[[], None]:
    """A preexec_fn: files the child writes stop at `limit` bytes (EFBIG), like a disk that fills up."""
    import resource

    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def write_photos(
    folder: Path, count: int, seed: int, size: tuple[int, int] = (44, 36)
) -> list[Path]:
    """`count` random-noise PNG photos named photo00.png, photo01.png, … in `folder`."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"photo{index:02d}.png"
        Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths

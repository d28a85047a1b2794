"""-v's summary line counts images that got a caption, not attempts (a missing file is no caption)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from capgen_cli import capgen
from PIL import Image
from tiny_model import TinyModel


def test_summary_counts_captions_and_failures_apart(tiny_model: TinyModel, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(photo)
    missing = tmp_path / "missing.png"
    env = {**os.environ, "CAPGEN_HOME": str(tmp_path / "home")}
    done = capgen("caption", "-v", "-m", tiny_model.folder, photo, missing, env=env)
    assert done.returncode == 1, done.stderr  # some of several failed
    summary = [line for line in done.stderr.decode().splitlines() if "captioned" in line]
    assert len(summary) == 1 and "1 image(s) captioned, 1 failed in" in summary[0], summary

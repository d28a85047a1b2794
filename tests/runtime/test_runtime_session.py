"""Sessions: the optimised-graph cache speeds up starts without ever changing a caption."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from tiny_model import TinyModel

from capgen.runtime.captioner import Captioner

IMAGES = [np.full((20, 30, 3), v, np.uint8) for v in (0, 90, 180, 255)]


def _captions(folder: Path) -> list[tuple[tuple[int, ...], float]]:
    results = Captioner(folder).caption_batch(IMAGES, beam_size=2)
    return [(r.tokens, r.log_probability) for r in results]  # type: ignore[union-attr]


@pytest.fixture()
def own_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("CAPGEN_HOME", str(home))
    return home


def test_cached_graphs_are_made_once_and_give_the_same_captions(tiny_model: TinyModel, own_home: Path) -> None:
    first = _captions(tiny_model.folder)
    cached = sorted(p.name.split("-")[0] for p in (own_home / "optimized").iterdir())
    assert cached == ["decoder_step", "encoder", "photo_projection"]
    stamps = {p: p.stat().st_mtime_ns for p in (own_home / "optimized").iterdir()}
    assert _captions(tiny_model.folder) == first
    assert {p: p.stat().st_mtime_ns for p in (own_home / "optimized").iterdir()} == stamps


def test_a_damaged_cache_entry_is_rebuilt(tiny_model: TinyModel, own_home: Path) -> None:
    first = _captions(tiny_model.folder)
    for entry in (own_home / "optimized").iterdir():
        entry.write_bytes(b"garbage")
    assert _captions(tiny_model.folder) == first
    assert all(p.stat().st_size > 100 for p in (own_home / "optimized").iterdir())


def test_a_changed_model_file_gets_a_new_cache_entry(tiny_model: TinyModel, own_home: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model.folder, folder)
    _captions(folder)
    before = {p.name for p in (own_home / "optimized").iterdir()}
    (folder / "encoder.onnx").touch()
    _captions(folder)
    after = {p.name for p in (own_home / "optimized").iterdir()}
    assert len(after - before) == 1 and next(iter(after - before)).startswith("encoder-")


def test_an_unwritable_cache_still_captions(tiny_model: TinyModel, monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("CAPGEN_HOME points at a file, so nothing can be cached under it")
    monkeypatch.setenv("CAPGEN_HOME", str(blocker))
    assert len(_captions(tiny_model.folder)) == len(IMAGES)

"""Sessions: the encoder's optimised-graph cache speeds up starts without ever changing a caption."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from tiny_model import TinyModel

from capgen.runtime.cache_entries import prune_cache
from capgen.runtime.captioner import Captioner
from capgen.runtime.session import NO_SPINNING_VAR, OnnxSession, spinning_allowed

IMAGES = [np.full((20, 30, 3), v, np.uint8) for v in (0, 90, 180, 255)]


def _captions(folder: Path, int8: bool = False) -> list[tuple[tuple[int, ...], float]]:
    results = Captioner(folder, int8=int8).caption_batch(IMAGES, beam_size=2)
    return [(r.tokens, r.log_probability) for r in results]  # type: ignore[union-attr]


@pytest.fixture()
def own_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("CAPGEN_HOME", str(home))
    return home


def _entries(home: Path) -> dict[str, int]:
    """The cached graphs (companion files of large initializers aside) and their sizes."""
    return {p.name: p.stat().st_size for p in (home / "optimized").glob("*.onnx")}


def test_every_graph_is_cached_once_and_gives_the_same_captions(
    tiny_model: TinyModel, own_home: Path
) -> None:
    first = _captions(tiny_model.folder)
    entries = _entries(own_home)
    assert len(entries) == 3  # encoder, photo projection, decoder step
    assert _captions(tiny_model.folder) == first
    assert _entries(own_home) == entries


def test_folders_with_the_same_graphs_share_their_entries(
    tiny_model: TinyModel, own_home: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model.folder, copy)
    _captions(tiny_model.folder)
    _captions(copy)
    _captions(copy, int8=True)  # the tiny model's int8 encoder is a byte copy of encoder.onnx
    assert len(_entries(own_home)) == 3  # one encoder entry, and the decoder's two


def test_a_damaged_cache_entry_is_rebuilt(tiny_model: TinyModel, own_home: Path) -> None:
    first = _captions(tiny_model.folder)
    for entry in (own_home / "optimized").iterdir():
        entry.write_bytes(b"garbage")
    assert _captions(tiny_model.folder) == first
    assert all(size > 100 for size in _entries(own_home).values())


def test_an_unwritable_cache_still_captions(
    tiny_model: TinyModel, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("CAPGEN_HOME points at a file, so nothing can be cached under it")
    monkeypatch.setenv("CAPGEN_HOME", str(blocker))
    assert len(_captions(tiny_model.folder)) == len(IMAGES)


def test_pruning_drops_the_least_recently_used_first(tmp_path: Path) -> None:
    for age, name in enumerate(["newest", "middle", "oldest"]):
        entry = tmp_path / f"{name}.onnx"
        entry.write_bytes(b"x" * 100)
        os.utime(entry, ns=(10**18 - age * 10**9, 10**18 - age * 10**9))
    prune_cache(tmp_path, limit_bytes=250)
    assert sorted(p.stem for p in tmp_path.iterdir()) == ["middle", "newest"]


def _spinning_entry(session: OnnxSession) -> str | None:
    options = session._session.get_session_options()
    try:
        return str(options.get_session_config_entry("session.intra_op.allow_spinning"))
    except RuntimeError:  # onnxruntime's way of saying the entry is not set (its default, on)
        return None


@pytest.mark.parametrize(
    ("value", "spinning"),
    [(None, True), ("", True), ("0", True), ("no", True), ("1", False), ("yes", False)],
)
def test_no_spinning_reaches_every_session_and_changes_no_caption(
    tiny_model: TinyModel,
    own_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    value: str | None,
    spinning: bool,
) -> None:
    """CAPGEN_NO_SPINNING turns onnxruntime's busy-waiting threads off, cached graph or not."""
    reference = _captions(tiny_model.folder)  # spinning as the environment had it
    if value is None:
        monkeypatch.delenv(NO_SPINNING_VAR, raising=False)
    else:
        monkeypatch.setenv(NO_SPINNING_VAR, value)
    assert spinning_allowed() is spinning
    encoder = tiny_model.folder / "encoder.onnx"
    for cache_key in (None, "a-cache-key"):
        session = OnnxSession(encoder, ["image"], ["features"], cache_key=cache_key)
        assert _spinning_entry(session) == (None if spinning else "0")
    assert _captions(tiny_model.folder) == reference

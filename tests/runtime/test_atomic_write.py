"""capgen.runtime.atomic_write: whole-file replacement that never writes through a link."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from capgen.runtime.atomic_write import (
    atomic_path,
    atomic_write_bytes,
    atomic_writer,
    prune_stale_temporaries,
)


def test_a_link_at_the_target_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "manifest.json").symlink_to(victim)

    atomic_write_bytes(folder / "manifest.json", b"{}\n")

    assert victim.read_text() == "precious"
    assert not (folder / "manifest.json").is_symlink()
    assert (folder / "manifest.json").read_bytes() == b"{}\n"
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json"]


def test_planted_partial_names_are_never_used(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "out.onnx.partial").symlink_to(victim)
    with atomic_path(tmp_path / "out.onnx") as temporary:
        assert temporary.name != "out.onnx.partial" and not temporary.is_symlink()
        temporary.write_bytes(b"graph")
    assert victim.read_text() == "precious"
    assert (tmp_path / "out.onnx").read_bytes() == b"graph"


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "manifest.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_writer(target) as handle:
        handle.write(b"half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


def test_written_files_get_the_usual_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "encoder.onnx", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "encoder.onnx").stat().st_mode) == 0o644


def test_leftovers_of_dead_writers_are_pruned(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    dead = tmp_path / f".model.h5.{child.pid}.abc123_x.partial.h5"
    alive = tmp_path / f".enc.onnx.{os.getpid()}.zzz.partial"
    legacy = tmp_path / "tmpab12cd.partial"
    users = [tmp_path / "notes.partial", tmp_path / ".draft.partial", tmp_path / "encoder.onnx"]
    for path in (dead, alive, legacy, *users):
        path.write_bytes(b"x")

    prune_stale_temporaries(tmp_path, legacy_glob="tmp*.partial")

    assert not dead.exists()
    assert alive.exists() and legacy.exists()
    prune_stale_temporaries(tmp_path, older_than=-1, legacy_glob="tmp*.partial")
    assert not alive.exists() and not legacy.exists()
    assert all(path.exists() for path in users)  # names capgen never makes are never deleted

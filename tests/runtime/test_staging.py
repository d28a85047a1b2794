"""Leftovers of killed conversions are removed, and nothing else is."""

from __future__ import annotations

import json
import os
from pathlib import Path

from staging_helpers import killed_staging

from capgen.runtime.staging import MARKER, create_staging, prune_stale, swap_in


def test_a_killed_conversions_staging_folder_is_pruned(tmp_path: Path) -> None:
    out_dir = tmp_path / "model"
    stale = killed_staging(out_dir)
    assert prune_stale(out_dir) == [stale]
    assert not stale.exists()


def test_live_unmarked_linked_and_foreign_leftovers_stay(tmp_path: Path) -> None:
    out_dir = tmp_path / "model"
    live = create_staging(out_dir)  # this process is alive: another conversion in flight
    unmarked = tmp_path / ".model.partial-user"
    unmarked.mkdir()
    (unmarked / "notes.txt").write_text("mine")
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / MARKER).write_text(json.dumps({"pid": 2**22 + 1, "host": os.uname().nodename}))
    linked = tmp_path / ".model.partial-link"
    linked.symlink_to(target, target_is_directory=True)
    other = killed_staging(tmp_path / "other-model")
    bad_marker = tmp_path / ".model.partial-bad"
    bad_marker.mkdir()
    (bad_marker / MARKER).write_text("not json")

    assert prune_stale(out_dir) == []
    for kept in (live, unmarked / "notes.txt", target / MARKER, linked, other, bad_marker):
        assert kept.exists()


def test_swap_in_replaces_the_old_folder_without_leftovers(tmp_path: Path) -> None:
    out_dir = tmp_path / "model"
    out_dir.mkdir()
    (out_dir / "manifest.json").write_text("old")
    staging = create_staging(out_dir)
    (staging / "manifest.json").write_text("new")
    swap_in(staging, out_dir)
    assert (out_dir / "manifest.json").read_text() == "new"
    assert sorted(p.name for p in out_dir.iterdir()) == ["manifest.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]

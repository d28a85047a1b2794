"""A Ray node's copy of a shipped model goes through marked staging: a killed copy is cleaned up.

`write_copy` is what `materialise` does with the bytes `ray.get` returns
(a plain {file name: bytes}), so these tests need no Ray cluster. An actor
killed mid-copy is played by a child process that creates its staging
folder the way `write_copy` does and is killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from staging_helpers import killed_staging

from capgen.ray.model_store import read_model, write_copy
from capgen.runtime.errors import ModelIntegrityError
from capgen.runtime.staging import MARKER, create_staging


@pytest.fixture(scope="module")
def shipped(model_folder: Path) -> tuple[str, str, dict[str, bytes]]:
    return read_model(model_folder)


def test_a_killed_copys_leftover_goes_and_nothing_else(
    tmp_path: Path, shipped: tuple[str, str, dict[str, bytes]]
) -> None:
    name, digest, contents = shipped
    store = tmp_path / "ray-models"
    store.mkdir()
    stale = killed_staging(store / digest)
    stale_other_model = killed_staging(store / ("0" * 64))
    live = create_staging(store / digest)  # this process is alive: another actor copying
    unmarked = store / f".{digest}.partial-user"
    unmarked.mkdir()
    (unmarked / "notes.txt").write_text("mine")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    dead = {"pid": json.loads((stale / MARKER).read_text())["pid"], "host": os.uname().nodename}
    (elsewhere / MARKER).write_text(json.dumps(dead))
    linked = store / f".{digest}.partial-link"
    linked.symlink_to(elsewhere, target_is_directory=True)

    copy = write_copy(name, digest, contents, store)

    assert copy == store / digest
    assert sorted(p.name for p in copy.iterdir()) == sorted(contents)  # no marker left inside
    for file_name, data in contents.items():
        assert (copy / file_name).read_bytes() == data
    assert not stale.exists() and not stale_other_model.exists()
    for kept in (live, unmarked / "notes.txt", linked, elsewhere / MARKER):
        assert kept.exists() or kept.is_symlink()
    assert sorted(p.name for p in store.iterdir()) == sorted(
        [digest, live.name, unmarked.name, linked.name]
    )


def test_a_second_copy_uses_the_first_and_bad_bytes_never_land(
    tmp_path: Path, shipped: tuple[str, str, dict[str, bytes]]
) -> None:
    name, digest, contents = shipped
    store = tmp_path / "ray-models"
    first = write_copy(name, digest, contents, store)
    assert write_copy(name, digest, contents, store) == first  # another actor finished first
    tampered = {**contents, "vocabulary.json": contents["vocabulary.json"] + b" "}
    other = tmp_path / "other"
    with pytest.raises(ModelIntegrityError, match="do not match"):
        write_copy(name, digest, tampered, other)
    with pytest.raises(ModelIntegrityError, match="leaves the model folder"):
        write_copy(name, digest, {**contents, "../escape.txt": b"x"}, other)
    assert not (tmp_path / "escape.txt").exists()
    assert list(other.iterdir()) == []  # no staging folder left behind by a failed copy

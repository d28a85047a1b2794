"""A Ray node's copy of a shipped model goes through marked staging: a killed copy is cleaned up.

`write_copy` is what `materialise` does with the bytes `ray.get` returns
(a plain {file name: bytes}), so these tests need no Ray cluster. An actor
killed mid-copy is played by a child process that creates its staging
folder the way `write_copy` does and is killed with SIGKILL. A model shipped
for given Captioner settings holds only the files such a Captioner loads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from staging_helpers import killed_staging

from capgen.ray.model_store import (
    ShippedModel,
    captioner_files,
    copy_folder_name,
    materialise,
    read_model,
    write_copy,
)
from capgen.runtime.captioner import Captioner
from capgen.runtime.errors import InputError, ModelIntegrityError
from capgen.runtime.manifest import MANIFEST_FILE, load_manifest
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


def test_a_model_shipped_for_its_settings_holds_what_such_a_captioner_loads(
    tmp_path: Path, model_folder: Path
) -> None:
    manifest = load_manifest(model_folder)
    encoder, decoder = manifest.encoder, manifest.decoder
    names = captioner_files(manifest, int8=True, fast_decoder=False)
    assert sorted(names) == sorted(
        [encoder.int8_file, decoder.step_file, decoder.projection_file, manifest.vocabulary.file]
    )
    # A setting left open ships the files of both choices; never the browser's word gates.
    assert sorted(captioner_files(manifest, int8=True)) == sorted([*names, decoder.int8_step_file])
    assert sorted(captioner_files(manifest)) == sorted(
        [encoder.file, *captioner_files(manifest, int8=True)]
    )
    assert decoder.word_gates_file not in captioner_files(manifest)

    name, digest, contents = read_model(model_folder, names)
    assert set(contents) == {MANIFEST_FILE, *names}
    store = tmp_path / "ray-models"
    copy = write_copy(name, digest, contents, store, names)
    assert (
        copy == store / copy_folder_name(digest, names) != store / digest
    )  # apart from a whole one
    assert sorted(p.name for p in copy.iterdir()) == sorted(contents)
    # The next actor on the node finds it verified (nothing fetched, so no Ray needed here).
    shipped = ShippedModel(name, digest, None, tuple(names), int8=True, fast_decoder=False)
    assert materialise(shipped, store) == copy.resolve()
    assert Captioner(copy, int8=True, threads=1).model_files == (
        encoder.int8_file,
        decoder.projection_file,
        decoder.step_file,
    )
    with pytest.raises(ModelIntegrityError, match="missing"):
        Captioner(copy)  # the FP32 encoder stayed home

    # Other files than those it was shipped with never land.
    other = tmp_path / "other"
    with pytest.raises(ModelIntegrityError, match="not the ones"):
        write_copy(name, digest, {**contents, encoder.file: b"x"}, other, names)
    assert not other.exists()


def test_captioners_with_other_settings_than_shipped_for_are_refused_on_the_driver() -> None:
    from capgen.ray.data import caption_dataset

    shipped = ShippedModel("m", "0" * 64, "a reference", ("x",), int8=True, fast_decoder=False)
    with pytest.raises(
        InputError, match=r"shipped with int8=True.*ship_model\(\.\.\., int8=False\)"
    ):
        caption_dataset(object(), shipped, int8=False)
    with pytest.raises(InputError, match="fast_decoder=False"):
        caption_dataset(object(), shipped, int8=True, fast_decoder=True)
    shipped.check_settings(int8=True, fast_decoder=False)
    ShippedModel("m", "0" * 64, "ref", ("x",), int8=True).check_settings(
        int8=True, fast_decoder=True
    )
    ShippedModel("m", "0" * 64, "ref").check_settings(int8=False, fast_decoder=True)  # whole folder

"""`capgen export web` and capgen.runtime.web_export: what the site holds, and the file-safety rules.

Every model file is a verified copy (a damaged one is refused and nothing is
written), the site record lists every file's sha256, a non-empty folder the
export did not write is refused and left as it was, a link is never written
through, and a site exported before is replaced only with --force.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from web_helpers import ort_dist

from capgen.convert.web_export import (
    HEADERS_FILE,
    MODULE_FILES,
    ORT_FILES,
    PAGE_FILES,
    SITE_RECORD,
    export_web,
)
from capgen.runtime.errors import InputError, ModelError

CAPGEN = Path(sys.executable).with_name("capgen")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_site_holds_verified_copies_and_a_record(
    tiny_model_folder: Path, fake_ort: Path, tmp_path: Path
) -> None:
    site = export_web(tmp_path / "site", model=tiny_model_folder, int8=True, ort_dir=fake_ort)
    folder = site.folder
    record = json.loads((folder / SITE_RECORD).read_text())
    manifest = json.loads((tiny_model_folder / "manifest.json").read_text())
    assert record["model"]["files"][0] == "encoder.int8.onnx"
    for name in record["model"]["files"]:
        assert _sha256(folder / name) == manifest["files"][name]["sha256"]
    assert "encoder.onnx" not in record["files"]  # only the encoder the page runs
    names = {*MODULE_FILES, *PAGE_FILES, *ORT_FILES, HEADERS_FILE, "manifest.json"}
    assert names <= set(record["files"])
    assert {path.name for path in folder.iterdir()} == {*record["files"], SITE_RECORD}
    assert all(_sha256(folder / name) == digest for name, digest in record["files"].items())
    assert "Cross-Origin-Embedder-Policy: require-corp" in (folder / HEADERS_FILE).read_text()
    assert site.total_bytes == sum(path.stat().st_size for path in folder.iterdir())


def test_a_damaged_model_file_is_refused_and_nothing_is_written(
    tiny_model_folder: Path, fake_ort: Path, tmp_path: Path
) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model_folder, model)
    vocabulary = model / "vocabulary.json"
    vocabulary.write_text(vocabulary.read_text().replace('"a"', '"b"', 1))
    with pytest.raises(ModelError, match="does not match the sha256"):
        export_web(tmp_path / "site", model=model, ort_dir=fake_ort)
    assert not (tmp_path / "site").exists()
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".site")] == []


def test_a_folder_it_did_not_write_is_refused_and_kept(
    tiny_model_folder: Path, fake_ort: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    for force in (False, True):
        with pytest.raises(InputError, match="not a site capgen exported"):
            export_web(folder, model=tiny_model_folder, ort_dir=fake_ort, force=force)
    assert [path.name for path in folder.iterdir()] == ["notes.txt"]


def test_a_site_is_replaced_only_with_force_and_only_if_unchanged(
    tiny_model_folder: Path, fake_ort: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "site"
    export_web(folder, model=tiny_model_folder, ort_dir=fake_ort)
    with pytest.raises(InputError, match="pass --force"):
        export_web(folder, model=tiny_model_folder, ort_dir=fake_ort, int8=True)
    export_web(folder, model=tiny_model_folder, ort_dir=fake_ort, int8=True, force=True)
    assert json.loads((folder / SITE_RECORD).read_text())["model"]["int8"] is True
    (folder / "photo.jpg").write_bytes(b"the user's own file")
    with pytest.raises(InputError, match=r"holds photo\.jpg"):
        export_web(folder, model=tiny_model_folder, ort_dir=fake_ort, force=True)
    assert (folder / "photo.jpg").read_bytes() == b"the user's own file"


def test_a_link_is_never_written_through(
    tiny_model_folder: Path, fake_ort: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = tmp_path / "site"
    link.symlink_to(elsewhere)
    with pytest.raises(InputError, match="is a link"):
        export_web(link, model=tiny_model_folder, ort_dir=fake_ort)
    assert list(elsewhere.iterdir()) == []


def test_a_model_without_int8_encoder_says_so(
    fake_ort: Path, tiny_model_folder: Path, tmp_path: Path
) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model_folder, model)
    manifest = json.loads((model / "manifest.json").read_text())
    del manifest["encoder"]["int8_file"]
    (model / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="no INT8 encoder"):
        export_web(tmp_path / "site", model=model, ort_dir=fake_ort, int8=True)


def test_the_command_line(tiny_model_folder: Path, fake_ort: Path, tmp_path: Path) -> None:
    """One line and the documented exit codes: 0 written, 2 a usage problem (no ORT files)."""
    site = tmp_path / "site"
    command = [str(CAPGEN), "export", "web", str(site), "--model", str(tiny_model_folder)]
    done = subprocess.run(
        [*command, "--ort-dir", str(fake_ort)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"wrote {site}: model")
    missing = tmp_path / "no-ort"
    done = subprocess.run(
        [*command[:3], str(tmp_path / "other"), *command[4:], "--ort-dir", str(missing)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "make web" in done.stderr


def test_the_default_ort_folder_is_the_checkouts(tiny_model_folder: Path, tmp_path: Path) -> None:
    ort_dist()
    site = export_web(tmp_path / "site", model=tiny_model_folder)
    wasm = site.folder / "ort-wasm-simd-threaded.wasm"
    assert wasm.read_bytes()[:4] == b"\0asm"

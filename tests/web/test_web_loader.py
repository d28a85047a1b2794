"""web/capgen.mjs's loadModel in Node: progress, and the checks a model folder must pass.

A file whose bytes do not match the manifest's sha256, a file needing a newer
onnxruntime than the onnxruntime-web running, a missing file: each is refused
with one line naming it. The tiny model, so no built model is needed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from web_helpers import REPO, node, ort_dist


def _load(model: Path, *args: str) -> dict[str, Any]:
    ort_dist()
    done = subprocess.run(
        [node(), str(REPO / "tests" / "web" / "load_model.mjs"), str(model), *args],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.fixture()
def model(tiny_model_folder: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(tiny_model_folder, copy)
    return copy


def test_loads_with_progress_up_to_each_files_size(model: Path) -> None:
    result = _load(model, "int8")
    assert result["ok"], result
    assert result["info"]["files"][-1] == "encoder.int8.onnx"
    manifest = json.loads((model / "manifest.json").read_text())
    last = {file: (loaded, total) for file, loaded, total in result["progress"]}
    assert set(last) == set(result["info"]["files"])
    assert all(
        loaded == total == manifest["files"][f]["bytes"] for f, (loaded, total) in last.items()
    )


def test_a_changed_file_is_refused(model: Path) -> None:
    vocabulary = model / "vocabulary.json"
    vocabulary.write_text(vocabulary.read_text().replace('"a"', '"b"', 1))
    result = _load(model)
    assert not result["ok"]
    assert result["kind"] == "model"
    assert "vocabulary.json does not match the sha256" in result["error"]


def test_a_file_needing_a_newer_onnxruntime_is_refused(model: Path) -> None:
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["files"]["decoder_step.onnx"]["onnxruntime"] = ">=9.0"
    (model / "manifest.json").write_text(json.dumps(manifest))
    result = _load(model)
    assert not result["ok"]
    assert (
        "decoder_step.onnx needs onnxruntime >= 9.0, this is onnxruntime-web 1." in result["error"]
    )


def test_a_missing_file_is_named(model: Path) -> None:
    (model / "photo_projection.onnx").unlink()
    result = _load(model)
    assert not result["ok"]
    assert result["error"] == "cannot download photo_projection.onnx: HTTP 404"


def test_a_site_with_word_gates_loads_and_checks_word_gates_bin(
    tiny_word_gates_folder: Path, tmp_path: Path
) -> None:
    """The split step's files are fetched and verified like every model file."""
    from capgen.convert.web_export import export_web

    site = export_web(tmp_path / "site", model=tiny_word_gates_folder, word_gates=True).folder
    result = _load(site)
    assert result["ok"], result
    assert result["info"]["files"][2:4] == ["decoder_step.web.onnx", "word_gates.bin"]
    data = site / "word_gates.bin"
    data.chmod(0o644)
    data.write_bytes(data.read_bytes()[:-4] + b"\0\0\0\0")
    result = _load(site)
    assert not result["ok"]
    assert "word_gates.bin does not match the sha256" in result["error"]

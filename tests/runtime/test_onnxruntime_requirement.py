"""The manifest records which onnxruntime each file needs, and the runtime checks it first.

A folder whose file needs a newer onnxruntime than the installed one must fail
in one line naming the version (exit 3), before onnxruntime's own error about
IR versions or operators; folders without the field are read and written back
byte for byte as before.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_model import TinyModel

from capgen.cli_support.exit_codes import ExitCode
from capgen.convert.portable import make_portable, onnxruntime_requirement
from capgen.runtime.errors import ModelError
from capgen.runtime.manifest import dump_manifest, load_manifest

# Not `from conftest import …`: with several test folders in one run, "conftest" is whichever folder's loaded last.
CAPGEN_SCRIPT = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "capgen"


def _folder_needing(tiny_model: TinyModel, tmp_path: Path, requirement: str) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model.folder, folder)
    manifest_path = folder / "manifest.json"
    data = json.loads(manifest_path.read_text())
    data["files"]["decoder_step.onnx"]["onnxruntime"] = requirement
    manifest_path.write_text(json.dumps(data, indent=2))
    return folder


def test_a_file_needing_a_newer_onnxruntime_is_refused_in_one_line(
    tiny_model: TinyModel, tmp_path: Path
) -> None:
    folder = _folder_needing(tiny_model, tmp_path, ">=99.1")
    image = tmp_path / "photo.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(image)
    result = subprocess.run(
        [str(CAPGEN_SCRIPT), "caption", "-m", str(folder), str(image)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == ExitCode.MODEL
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "decoder_step.onnx: needs onnxruntime >= 99.1, this is onnxruntime" in lines[0]
    assert "pip install 'onnxruntime>=99.1'" in lines[0]


def test_api_refuses_too_old_onnxruntime_and_accepts_an_older_requirement(
    tiny_model: TinyModel, tmp_path: Path
) -> None:
    from capgen.runtime.captioner import Captioner

    with pytest.raises(ModelError, match=r"needs onnxruntime >= 99\.1"):
        Captioner(_folder_needing(tiny_model, tmp_path / "new", ">=99.1"))
    Captioner(_folder_needing(tiny_model, tmp_path / "old", ">=1.20"))


@pytest.mark.parametrize("bad", ["1.20", ">=1", ">= 1.20", "<2.0", ">=1.20; rm -rf"])
def test_a_malformed_requirement_names_the_field(
    tiny_model: TinyModel, tmp_path: Path, bad: str
) -> None:
    with pytest.raises(ModelError, match=r"files\.decoder_step\.onnx\.onnxruntime"):
        load_manifest(_folder_needing(tiny_model, tmp_path, bad))


def test_requirement_round_trips_and_folders_without_it_stay_byte_stable(
    tiny_model: TinyModel, tmp_path: Path
) -> None:
    folder = _folder_needing(tiny_model, tmp_path, ">=1.22")
    manifest = load_manifest(folder)
    assert manifest.files["decoder_step.onnx"].onnxruntime == ">=1.22"
    assert manifest.files["photo_projection.onnx"].onnxruntime is None
    dumped = json.loads(dump_manifest(manifest))
    assert dumped["files"]["decoder_step.onnx"]["onnxruntime"] == ">=1.22"
    assert "onnxruntime" not in dumped["files"]["photo_projection.onnx"]
    plain = load_manifest(tiny_model.folder)
    assert load_manifest(tiny_model.folder) == plain
    assert json.loads(dump_manifest(plain)) == json.loads(
        (tiny_model.folder / "manifest.json").read_text()
    )


def test_graphs_at_onnx_helpers_default_ir_are_lowered_and_requirements_follow() -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 5)]
    model = helper.make_model(graph, opset_imports=opsets)
    assert model.ir_version > 10
    assert onnxruntime_requirement(model) == ">=1.25"
    make_portable(model)
    onnx.checker.check_model(model)
    assert model.ir_version == 8  # the unused ai.onnx.ml 5 import (IR 10) is dropped
    assert [opset.domain for opset in model.opset_import] == [""]
    assert onnxruntime_requirement(model) == ">=1.20"

"""`capgen setup`'s "up to date" check also asks which converter recipe built the folder.

Its sources (model.keras, tokenizer.p, the encoder) did not change when capgen
started writing IR 8 graphs; comparing sources alone would keep a default
model of IR 14 graphs, which onnxruntime < 1.25 refuses, forever.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tiny_model import TinyModel

from capgen.convert.hashing import sha256_file
from capgen.convert.model_folder import CONVERTER_RECIPE, converted_with
from capgen.models.setup_default import _is_current


def _built_from(tiny_model: TinyModel, tmp_path: Path, recipe: str | None) -> tuple[Path, ...]:
    folder = tmp_path / "default"
    shutil.copytree(tiny_model.folder, folder)
    model, tokenizer = tmp_path / "model.keras", tmp_path / "tokenizer.p"
    model.write_bytes(b"model")
    tokenizer.write_bytes(b"tokenizer")
    data = json.loads((folder / "manifest.json").read_text())
    data["sources"] = {
        "model": {"name": model.name, "sha256": sha256_file(model)},
        "tokenizer": {"name": tokenizer.name, "sha256": sha256_file(tokenizer)},
    }
    data["decoder"]["int8_step_file"] = "decoder_step.onnx"  # any listed file will do here
    data["converted_with"] = {} if recipe is None else {"recipe": recipe}
    (folder / "manifest.json").write_text(json.dumps(data, indent=2))
    return folder, model, tokenizer, folder / "encoder.onnx"


def test_setup_rebuilds_a_folder_an_older_converter_recipe_wrote(
    tiny_model: TinyModel, tmp_path: Path
) -> None:
    assert converted_with()["recipe"] == CONVERTER_RECIPE
    assert _is_current(*_built_from(tiny_model, tmp_path / "now", CONVERTER_RECIPE))
    assert not _is_current(*_built_from(tiny_model, tmp_path / "before", None))
    assert not _is_current(*_built_from(tiny_model, tmp_path / "older", "1"))

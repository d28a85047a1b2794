"""`capgen setup`'s "up to date" check also asks which converter recipe built the folder.

Its sources (model.keras, tokenizer.p, the encoder) did not change when capgen
started writing IR 8 graphs; comparing sources alone would keep a default
model of IR 14 graphs, which onnxruntime < 1.25 refuses, forever.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
from tiny_model import WORDS, TinyModel, encoder_graph, random_weights

from capgen.convert.hashing import sha256_file
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


def _recipe_the_converter_records(folder: Path) -> str:
    """converted_with.recipe in the manifest of a folder the converter writes today."""
    from capgen.convert.delimiters import Delimiters
    from capgen.convert.model_folder import ModelFolderSpec, describe_encoder, write_model_folder

    folder.mkdir()
    encoder = folder / "user-encoder.onnx"
    onnx.save(encoder_graph(), str(encoder))
    spec = ModelFolderSpec(
        weights=random_weights(),
        vocabulary=list(WORDS),
        delimiters=Delimiters.given(list(WORDS), "start", "end"),
        max_length=8,
        sources={"model": {"name": "model_9.h5", "sha256": "ab" * 32}},
        description="recipe probe",
    )
    written = write_model_folder(folder / "model", spec, describe_encoder(encoder))
    return str(json.loads((written / "manifest.json").read_text())["converted_with"]["recipe"])


def test_setup_rebuilds_a_folder_an_older_converter_recipe_wrote(
    tiny_model: TinyModel, tmp_path: Path
) -> None:
    # What the converter writes today is what setup takes for current: were they to disagree,
    # setup would rebuild the default model on every run (or never).
    recipe_now = _recipe_the_converter_records(tmp_path / "converted")
    assert recipe_now != "1"
    assert _is_current(*_built_from(tiny_model, tmp_path / "now", recipe_now))
    assert not _is_current(*_built_from(tiny_model, tmp_path / "before", None))
    assert not _is_current(*_built_from(tiny_model, tmp_path / "older", "1"))

"""The model folder contract (capgen.runtime.manifest): one definition, parse and dump agree byte for byte."""

from __future__ import annotations

import ast
import json
import re
import shutil
import tomllib
from pathlib import Path

import onnx
import pytest
from tiny_model import WORDS, encoder_graph, random_weights, write_tiny_model

from capgen.runtime.errors import ModelError
from capgen.runtime.integrity import verify_files
from capgen.runtime.manifest import (
    FAST_STEP_FILE,
    INT8_ENCODER_FILE,
    MANIFEST_FILE,
    STANDARD_FILES,
    dump_manifest,
    load_manifest,
)
from capgen.runtime.optional_files import OptionalFile, add_optional_file

REPO = Path(__file__).resolve().parents[2]
# Every folder the distribution installs, from pyproject.toml's package-dir (the one source).
PACKAGE_FOLDERS = sorted(
    tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"][
        "package-dir"
    ].values()
)


def _converted(folder: Path) -> Path:
    """A folder written by the converter, with non-ASCII text in its description and vocabulary."""
    from capgen.convert.delimiters import Delimiters
    from capgen.convert.model_folder import ModelFolderSpec, describe_encoder, write_model_folder

    user = folder.parent / "user-encoder.onnx"
    onnx.save(encoder_graph(), str(user))
    words = list(WORDS)
    words[3] = "chien-méchant"
    spec = ModelFolderSpec(
        weights=random_weights(),
        vocabulary=words,
        delimiters=Delimiters.given(words, "start", "end"),
        max_length=8,
        sources={"model": {"name": "modèle_9.h5", "sha256": "ab" * 32}},
        description="naïve – test",
    )
    return write_model_folder(folder, spec, describe_encoder(user))


def test_converted_manifest_round_trips_to_identical_bytes(tmp_path: Path) -> None:
    from capgen.convert.fast_decoder import add_fast_decoder

    folder = _converted(tmp_path / "model")
    written = (folder / MANIFEST_FILE).read_bytes()
    assert dump_manifest(load_manifest(folder)) == written
    assert written.endswith(b"}\n") and "naïve – test".encode() in written  # UTF-8, not \\u escapes
    assert (
        written == (json.dumps(json.loads(written), indent=2, ensure_ascii=False) + "\n").encode()
    )

    add_fast_decoder(folder)
    shutil.copyfile(folder / "encoder.onnx", folder / INT8_ENCODER_FILE)
    add_optional_file(folder, OptionalFile.INT8_ENCODER, INT8_ENCODER_FILE)
    extended = (folder / MANIFEST_FILE).read_bytes()
    assert dump_manifest(load_manifest(folder)) == extended
    data = json.loads(extended)
    assert data["encoder"]["int8_file"] == INT8_ENCODER_FILE
    assert data["decoder"]["int8_step_file"] == FAST_STEP_FILE
    assert list(data["files"])[-2:] == [FAST_STEP_FILE, INT8_ENCODER_FILE]
    verify_files(load_manifest(folder), use_stamps=False)


def test_adding_a_file_keeps_fields_capgen_does_not_know(tmp_path: Path) -> None:
    folder = write_tiny_model(tmp_path / "model").folder
    data = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
    data["licence"] = {"text": "CC-BY 4.0"}
    data["decoder"]["note"] = "trained 2026"
    data["vocabulary"]["language"] = "en"
    (folder / MANIFEST_FILE).write_text(json.dumps(data), encoding="utf-8")
    shutil.copyfile(folder / "encoder.onnx", folder / INT8_ENCODER_FILE)

    add_optional_file(folder, OptionalFile.INT8_ENCODER, INT8_ENCODER_FILE)

    after = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
    assert after["licence"] == {"text": "CC-BY 4.0"}
    assert after["decoder"]["note"] == "trained 2026"
    assert after["vocabulary"]["language"] == "en"
    assert {k: v for k, v in after.items() if k not in ("encoder", "files")} == {
        k: v for k, v in data.items() if k not in ("encoder", "files")
    }


def test_an_optional_file_must_be_a_plain_name(tmp_path: Path) -> None:
    folder = write_tiny_model(tmp_path / "model").folder
    with pytest.raises(ModelError, match="plain name"):
        add_optional_file(folder, OptionalFile.FAST_STEP, "../elsewhere.onnx")


# The contract: runtime/manifest.py and the modules it is split into (runtime/manifest_*.py).
CONTRACT = sorted((REPO / "runtime").glob("manifest*.py"))
# What turns raw JSON into a Manifest without load_manifest's checks of the folder.
RAW_READERS = ("parse_manifest",)


def _is_contract_module(name: str) -> bool:
    return name == "capgen.runtime.manifest" or name.startswith("capgen.runtime.manifest_")


def _offenders(path: str, text: str) -> list[str]:
    """Lines of one source outside the contract that spell a model file or read a manifest raw."""
    names = re.compile(r"[\"'](" + "|".join(re.escape(n) for n in STANDARD_FILES) + r")[\"']")
    lines = text.splitlines()
    found = [
        f"{path}:{number}: {line.strip()}"
        for number, line in enumerate(lines, 1)
        if names.search(line) or ("MANIFEST_FILE" in line and "json.load" in line)
    ]
    for node in ast.walk(ast.parse(text)):
        wrong = []
        if isinstance(node, ast.ImportFrom) and _is_contract_module(node.module or ""):
            wrong = [a.name for a in node.names if a.name.startswith("_") or a.name in RAW_READERS]
        elif isinstance(node, ast.Attribute) and node.attr in RAW_READERS:
            wrong = [node.attr]
        elif isinstance(node, ast.Name) and node.id in RAW_READERS:
            wrong = [node.id]
        found += [f"{path}:{node.lineno}: {name}" for name in wrong]  # type: ignore[attr-defined]
    return found


def test_only_the_contract_names_model_files_or_reads_the_manifest() -> None:
    """File names and raw manifest reading live in the contract; no other source spells them."""
    assert REPO / "runtime" / "manifest.py" in CONTRACT
    # The guarded names are the contract's own, not a copy that can outlive them.
    defined = {
        node.name
        for source in CONTRACT
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef)
    }
    assert set(RAW_READERS) <= defined, set(RAW_READERS) - defined
    assert {MANIFEST_FILE, INT8_ENCODER_FILE, FAST_STEP_FILE} <= set(STANDARD_FILES)
    offenders = []
    scanned = dict.fromkeys(PACKAGE_FOLDERS, 0)
    for package in PACKAGE_FOLDERS:  # every folder pyproject.toml maps, subfolders included
        for source in (REPO / package).rglob("*.py"):
            scanned[package] += 1
            if source not in CONTRACT:
                text = source.read_text(encoding="utf-8")
                offenders += _offenders(str(source.relative_to(REPO)), text)
    assert all(scanned.values()), scanned
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize(
    "line",
    [
        'path = folder / "encoder.int8.onnx"',
        "from capgen.runtime.manifest import parse_manifest",
        "from capgen.runtime.manifest import _read_json",
        "from capgen.runtime.manifest_fields import _REQUIREMENT",
        "data = json.loads((folder / MANIFEST_FILE).read_text())",
        "manifest = manifest_module.parse_manifest(folder, data)",
    ],
)
def test_the_contract_guard_sees_each_way_around_it(line: str) -> None:
    """The check above can fail: each way of spelling a file or reading raw is reported."""
    assert _offenders("serve/example.py", f"import json\n{line}\n")

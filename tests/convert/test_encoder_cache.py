"""The encoder export cache is keyed on recipe versions and inputs' content, never on source bytes.

No TensorFlow here: the export itself is replaced by a recorder, so these
tests check only when the cache decides to export again.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from capgen.convert import encoder
from capgen.convert.encoder_registry import get_encoder_kind
from capgen.convert.hashing import sha256_file


def _weights(tmp_path: Path) -> Path:
    path = tmp_path / "my_xception_notop.h5"
    path.write_bytes(b"not really weights, but content with a sha256")
    return path


def test_second_call_reuses_the_export(home: Path, exports: list[str], tmp_path: Path) -> None:
    weights = _weights(tmp_path)
    first = encoder.ensure_encoder("xception", weights)
    second = encoder.ensure_encoder("xception", weights)
    assert first == second
    assert exports == ["xception"]
    record = json.loads(first.with_name(first.name + ".json").read_text())
    assert record["recipe"] == encoder.export_recipe(get_encoder_kind("xception"))
    assert record["onnx_sha256"] == sha256_file(first)


def test_recipe_version_bump_exports_again(
    home: Path, exports: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = _weights(tmp_path)
    encoder.ensure_encoder("xception", weights)
    monkeypatch.setattr(encoder, "EXPORT_RECIPE_VERSION", encoder.EXPORT_RECIPE_VERSION + 1)
    encoder.ensure_encoder("xception", weights)
    assert exports == ["xception", "xception"]


def test_changed_weights_content_exports_again(
    home: Path, exports: list[str], tmp_path: Path
) -> None:
    weights = _weights(tmp_path)
    encoder.ensure_encoder("xception", weights)
    weights.write_bytes(b"other weights")
    encoder.ensure_encoder("xception", weights)
    assert exports == ["xception", "xception"]


def test_the_key_holds_no_source_file_digest() -> None:
    """Reformatting a module must not invalidate the cache: the key is versions and content."""
    recipe = encoder.export_recipe(get_encoder_kind("xception+colour"))
    sources = [
        Path(encoder.__file__),
        Path(encoder.__file__).parents[1] / "models" / "colour_features.py",
    ]
    digests = {sha256_file(path) for path in sources}
    assert not digests & set(recipe.values())
    assert recipe["export_recipe"] == str(encoder.EXPORT_RECIPE_VERSION)
    assert {"tf2onnx", "opset", "shape_head_sha256", "palette_sha256"} <= set(recipe)


def test_shape_head_content_is_part_of_the_colour_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from capgen.models import shape_head_params

    spec = get_encoder_kind("xception+colour")
    before = encoder.export_recipe(spec)
    monkeypatch.setattr(shape_head_params, "BIAS", [0.0] * len(shape_head_params.BIAS))
    assert encoder.export_recipe(spec)["shape_head_sha256"] != before["shape_head_sha256"]


def test_an_export_under_the_legacy_key_is_reused_and_its_record_upgraded(
    home: Path, exports: list[str], tmp_path: Path
) -> None:
    """Exports cached by capgen up to 6cc2d59 stay usable: tf2onnx does not reproduce an
    export byte for byte, and model folders record the encoder's sha256."""
    weights = _weights(tmp_path)
    target = encoder.ensure_encoder("xception", weights)
    exports.clear()
    record_path = target.with_name(target.name + ".json")
    legacy = {
        "kind": "xception",
        "weights_sha256": sha256_file(weights),
        "recipe": encoder.XCEPTION_LEGACY_RECIPE,
        "weights_file": weights.name,
        "onnx_sha256": sha256_file(target),
        "feature_size": 2048,
    }
    record_path.write_text(json.dumps(legacy))
    before = target.read_bytes()
    assert encoder.ensure_encoder("xception", weights) == target
    assert exports == []
    assert target.read_bytes() == before
    upgraded = json.loads(record_path.read_text())
    assert upgraded["recipe"] == encoder.export_recipe(get_encoder_kind("xception"))


def test_an_unknown_string_key_exports_again(
    home: Path, exports: list[str], tmp_path: Path
) -> None:
    weights = _weights(tmp_path)
    target = encoder.ensure_encoder("xception", weights)
    record_path = target.with_name(target.name + ".json")
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps({**record, "recipe": "0" * 64}))
    encoder.ensure_encoder("xception", weights)
    assert exports == ["xception", "xception"]

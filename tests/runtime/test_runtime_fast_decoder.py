"""The opt-in fast decoder step: added to an existing folder, used only when asked, same words."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_model import TinyModel

from capgen.convert.fast_decoder import FAST_STEP_FILE, add_fast_decoder
from capgen.runtime.captioner import Captioner
from capgen.runtime.errors import ModelError
from capgen.runtime.manifest import load_manifest

IMAGES = [np.random.default_rng(i).integers(0, 256, (40, 50, 3), dtype=np.uint8) for i in range(12)]


def _scored(captioner: Captioner, beam: int) -> list[tuple[tuple[int, ...], float]]:
    results = captioner.caption_batch(IMAGES, beam_size=beam)
    return [(r.tokens, r.log_probability) for r in results]  # type: ignore[union-attr]


@pytest.fixture()
def folder(tiny_model: TinyModel, tmp_path: Path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(tiny_model.folder, copy)
    return copy


def test_a_folder_without_the_fast_step_says_how_to_add_it(folder: Path) -> None:
    with pytest.raises(ModelError, match=r"no fast decoder step.*capgen convert quantize"):
        Captioner(folder, fast_decoder=True)


def test_the_fast_step_gives_the_same_captions_and_is_opt_in(folder: Path) -> None:
    before = _scored(Captioner(folder), 2)
    add_fast_decoder(folder)
    manifest = load_manifest(folder)
    assert manifest.decoder.int8_step_file == FAST_STEP_FILE
    assert manifest.files[FAST_STEP_FILE].bytes == (folder / FAST_STEP_FILE).stat().st_size

    exact = Captioner(folder)
    fast = Captioner(folder, fast_decoder=True)
    assert _scored(exact, 2) == before  # the default stays the exact step
    for beam in (1, 2):
        want, got = _scored(exact, beam), _scored(fast, beam)
        assert [tokens for tokens, _ in got] == [tokens for tokens, _ in want]
        assert max(abs(g[1] - w[1]) for g, w in zip(got, want, strict=True)) < 0.05


def test_a_wrong_fast_step_field_is_named(folder: Path) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["decoder"]["int8_step_file"] = 3
    path.write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match=r"decoder\.int8_step_file should be str"):
        load_manifest(folder)
    manifest["decoder"]["int8_step_file"] = "missing.onnx"
    path.write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match=r"missing\.onnx"):
        load_manifest(folder)


def _cli(*args: object, home: Path) -> subprocess.CompletedProcess[str]:
    script = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "capgen"
    env = {**os.environ, "CAPGEN_HOME": str(home)}
    return subprocess.run(
        [str(script), *map(str, args)], capture_output=True, text=True, env=env, timeout=120
    )


def test_cli_fast_decoder_flag_uses_the_fast_step_or_says_how_to_add_it(
    folder: Path, tmp_path: Path
) -> None:
    image = tmp_path / "photo.png"
    Image.fromarray(IMAGES[0]).save(image)
    missing = _cli("caption", "--fast-decoder", "-m", folder, image, home=tmp_path)
    assert missing.returncode == 3
    assert "capgen convert quantize" in missing.stderr and "Traceback" not in missing.stderr

    add_fast_decoder(folder)
    exact = _cli("caption", "-b", "1", "-m", folder, image, home=tmp_path)
    fast = _cli("caption", "--fast-decoder", "-b", "1", "-m", folder, image, home=tmp_path)
    assert exact.returncode == fast.returncode == 0, fast.stderr
    assert fast.stdout == exact.stdout and fast.stdout.strip()
    info = _cli("info", folder, home=tmp_path)
    assert f"fast decoder: {FAST_STEP_FILE}" in info.stdout

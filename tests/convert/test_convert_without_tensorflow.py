"""Issue 11 item 5: `capgen convert model` without TensorFlow where it is not needed.

Builds a fresh venv with the runtime and the light `convert-decoder` extra
(h5py, onnx; no TensorFlow, Keras or tf2onnx), then converts a real tf_keras
`.h5` decoder (built in the development venv, as a tutorial user saved it)
with `--encoder tiny.onnx`, and with an encoder kind already in the cache,
and captions with the result. Without TensorFlow, an encoder that would have
to be exported is one line naming what to install.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from keras_decoder_builders import (
    fit_small_tokenizer,
    save_small_tutorial_decoder,
    tiny_encoder_onnx,
)
from PIL import Image

sys.path.append(str(Path(__file__).resolve().parents[1] / "runtime"))  # shared test helpers
from runtime_venvs import FLAVOURS, build_runtime_venv

EXPORTER = ("tensorflow", "keras", "tf_keras", "tf2onnx")


@pytest.fixture(scope="module")
def decoder_only_venv(tmp_path_factory: pytest.TempPathFactory, capgen_wheel: Path) -> Path:
    # Python 3.11 with CI's pins, plus only the light extra (h5py, onnx): no TensorFlow.
    return build_runtime_venv(
        FLAVOURS[0], tmp_path_factory.mktemp("decoder_only"), capgen_wheel, "convert-decoder"
    )


@pytest.fixture(scope="module")
def tutorial_files(
    tmp_path_factory: pytest.TempPathFactory, tf_keras_stack: None
) -> dict[str, Path]:
    """A tf_keras tutorial decoder .h5 + its real pickled Tokenizer, for 32 and 2048 features."""
    folder = tmp_path_factory.mktemp("tutorial_files")
    tokenizer = fit_small_tokenizer(folder / "tokenizer.p")
    files = {"tokenizer": folder / "tokenizer.p"}
    for features in (32, 2048):
        path = folder / f"model_{features}.h5"
        files[f"model_{features}"] = save_small_tutorial_decoder(path, tokenizer, features, seed=5)
    files["encoder"] = tiny_encoder_onnx(folder / "tiny.onnx", 32)
    files["encoder_2048"] = tiny_encoder_onnx(folder / "tiny2048.onnx", 2048)
    photo = folder / "photo.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (60, 80, 3), np.uint8)).save(photo)
    files["photo"] = photo
    return files


def _run(script: Path, *args: str | Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CAPGEN_HOME": str(home)}
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        [str(script), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=home.parent,
        check=False,
        timeout=300,
    )


def _assert_progress(done: subprocess.CompletedProcess[str]) -> None:
    """One stdout line per step before the summary; stderr empty (no banners, no warnings)."""
    steps = [line.split("]")[0] for line in done.stdout.splitlines() if line.startswith("[")]
    assert steps == [f"[{n}/5" for n in range(1, 6)], done.stdout
    assert done.stderr == "", done.stderr


@pytest.mark.slow
def test_convert_with_an_onnx_encoder_needs_no_tensorflow(
    decoder_only_venv: Path, tutorial_files: dict[str, Path], tmp_path: Path
) -> None:
    probe = f"import importlib.util as u; print([m for m in {EXPORTER!r} if u.find_spec(m)])"
    python = decoder_only_venv / "bin" / "python"
    present = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=True)
    assert present.stdout.strip() == "[]", present.stdout

    capgen = decoder_only_venv / "bin" / "capgen"
    home = tmp_path / "home"
    out = tmp_path / "mymodel"
    model, tokenizer = tutorial_files["model_32"], tutorial_files["tokenizer"]
    done = _run(capgen, "convert", "model", model, tokenizer, "-o", out, "--encoder",
                tutorial_files["encoder"], home=home)  # fmt: skip
    assert done.returncode == 0, done.stderr
    _assert_progress(done)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["name"] == "mymodel"  # --name defaults to the output folder's name
    assert "tensorflow" not in manifest["converted_with"]

    reference = tmp_path / "reference"
    dev_capgen = Path(sys.executable).parent / "capgen"
    made_here = _run(dev_capgen, "convert", "model", model, tokenizer, "-o", reference,
                     "--encoder", tutorial_files["encoder"], home=home)  # fmt: skip
    assert made_here.returncode == 0, made_here.stderr
    for options in (["-b", "1"], []):
        light = _run(capgen, "caption", "-m", out, *options, tutorial_files["photo"], home=home)
        full = _run(dev_capgen, "caption", "-m", reference, *options, tutorial_files["photo"],
                    home=home)  # fmt: skip
        assert light.returncode == 0 and full.returncode == 0, (light.stderr, full.stderr)
        assert light.stdout.strip() and light.stdout == full.stdout


@pytest.mark.slow
def test_an_encoder_kind_in_the_cache_needs_no_tensorflow(
    decoder_only_venv: Path, tutorial_files: dict[str, Path], tmp_path: Path
) -> None:
    """`--encoder xception` with an export in the cache (made by another TensorFlow) is used as is."""
    from capgen.convert.encoder import XCEPTION, export_recipe
    from capgen.convert.hashing import sha256_file

    home = tmp_path / "home"
    weights = home / "weights" / "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"stand-in weights: only their sha256 keys the export")
    record = {"source": "test", "file_sha256": sha256_file(weights)}
    weights.with_name(weights.name + ".json").write_text(json.dumps(record))
    encoder = home / "encoders" / "xception.onnx"
    encoder.parent.mkdir(parents=True)
    shutil.copyfile(tutorial_files["encoder_2048"], encoder)
    recipe = {**export_recipe(XCEPTION), "tensorflow": "2.0.0-elsewhere"}
    encoder.with_name("xception.onnx.json").write_text(
        json.dumps(
            {
                "kind": "xception",
                "weights_sha256": sha256_file(weights),
                "recipe": recipe,
                "weights_file": weights.name,
                "onnx_sha256": sha256_file(encoder),
                "feature_size": 2048,
            }
        )
    )
    capgen = decoder_only_venv / "bin" / "capgen"
    model, tokenizer = tutorial_files["model_2048"], tutorial_files["tokenizer"]

    done = _run(capgen, "convert", "model", model, tokenizer, "-o", tmp_path / "m", home=home)

    assert done.returncode == 0, done.stderr
    _assert_progress(done)
    caption = _run(capgen, "caption", "-m", tmp_path / "m", tutorial_files["photo"], home=home)
    assert caption.returncode == 0 and caption.stdout.strip(), caption.stderr

    encoder.unlink()  # now it has to be exported: without TensorFlow, from the weights file
    missing = _run(capgen, "convert", "model", model, tokenizer, "-o", tmp_path / "n", home=home)
    assert missing.returncode == 6, missing.stderr
    assert missing.stderr.count("\n") == 1, missing.stderr
    error = missing.stderr.strip()
    # The stand-in weights are refused as weights, not for a missing TensorFlow.
    assert error.startswith("capgen: error: ") and "not a readable Keras Xception weights" in error
    assert "TensorFlow" not in error and "Traceback" not in missing.stderr
    assert not (tmp_path / "n").exists()

"""The base install is the runtime alone, and it captions without TensorFlow.

Builds a fresh virtual environment with `pip install <repo>` (no extras),
exactly what an edge device or a slim server gets, then captions through the
console script and the Python API there. This is the proof behind the README's
"deploy the runtime without TensorFlow" section, so it installs for real
(from the package registry, as CI can) instead of trusting sys.modules in the
fat development venv.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_model import TinyModel
from venv_builder import install_capgen_venv

REPO_ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("tensorflow", "keras", "tf_keras", "h5py", "onnx", "tf2onnx")


@pytest.fixture(scope="module")
def runtime_only_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_capgen_venv(tmp_path_factory.mktemp("runtime_only"))


def _run(venv: Path, *args: str, env_home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CAPGEN_HOME": str(env_home)}
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        list(args), capture_output=True, text=True, env=env, cwd=env_home, check=False, timeout=300
    )


@pytest.mark.slow
def test_base_install_has_no_tensorflow_keras_or_h5py(
    runtime_only_venv: Path, tmp_path: Path
) -> None:
    probe = (
        "import importlib.util, json; "
        f"print(json.dumps({{m: importlib.util.find_spec(m) is not None for m in {HEAVY!r}}}))"
    )
    result = _run(
        runtime_only_venv, str(runtime_only_venv / "bin" / "python"), "-c", probe, env_home=tmp_path
    )
    assert result.returncode == 0, result.stderr
    installed = {name for name, present in json.loads(result.stdout).items() if present}
    assert installed == set(), f"runtime-only install contains {sorted(installed)}"


@pytest.mark.slow
def test_runtime_only_install_captions_via_cli_and_api(
    runtime_only_venv: Path, tiny_model: TinyModel, tmp_path: Path
) -> None:
    image_path = tmp_path / "photo.png"
    rng = np.random.default_rng(7)
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(image_path)

    cli = _run(
        runtime_only_venv,
        str(runtime_only_venv / "bin" / "capgen"),
        "caption",
        "--model",
        str(tiny_model.folder),
        "--beam-size",
        "1",
        str(image_path),
        env_home=tmp_path,
    )
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.strip(), "no caption printed"

    script = textwrap.dedent(f"""
        import sys
        from capgen import Captioner
        result = Captioner({str(tiny_model.folder)!r}).caption({str(image_path)!r}, beam_size=1)
        heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)
        print(result.text)
        print("HEAVY:" + ",".join(heavy))
    """)
    api = _run(
        runtime_only_venv,
        str(runtime_only_venv / "bin" / "python"),
        "-c",
        script,
        env_home=tmp_path,
    )
    assert api.returncode == 0, api.stderr
    caption, heavy_line = api.stdout.strip().splitlines()[-2:]
    assert heavy_line == "HEAVY:"
    assert caption == cli.stdout.strip().split("\t")[-1]


@pytest.mark.slow
def test_convert_on_runtime_only_install_says_what_to_install(
    runtime_only_venv: Path, tmp_path: Path
) -> None:
    model = tmp_path / "model_9.h5"
    model.write_bytes(b"not really a model")
    result = _run(
        runtime_only_venv,
        str(runtime_only_venv / "bin" / "capgen"),
        "convert",
        "model",
        str(model),
        str(model),
        "-o",
        str(tmp_path / "out"),
        env_home=tmp_path,
    )
    assert result.returncode != 0
    assert "capgen[convert]" in result.stderr
    assert "Traceback" not in result.stderr

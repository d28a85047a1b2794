"""The runtime wheel: no Keras files, typed, licensed; repository-only commands say what they need.

The wheel is what `pip install capgen` puts on an edge box: the 5 MB
model.keras (useless without TensorFlow) stays in the repository and the
sdist for `capgen setup`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CAPGEN_SCRIPT = REPO_ROOT / ".venv" / "bin" / "capgen"
KERAS_SUFFIXES = (".keras", ".h5", ".p", ".pkl")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"  # pip builds in-tree: keep build/ out of the working tree
    shutil.copytree(
        REPO_ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "*.egg-info", "build", "dist", "__pycache__"
        ),
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            "-w",
            str(root),
            str(source),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (built,) = root.glob("capgen-*.whl")
    return built


@pytest.fixture(scope="module")
def wheel_names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


@pytest.mark.slow
def test_wheel_has_no_keras_files_and_is_typed_and_licensed(wheel_names: list[str]) -> None:
    assert [name for name in wheel_names if name.endswith(KERAS_SUFFIXES)] == []
    assert not any(
        name.startswith(("capgen/models/photo/", "capgen/models/shapes/")) for name in wheel_names
    )
    assert {"capgen/py.typed", "capgen/runtime/py.typed"} <= set(wheel_names)
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in wheel_names)
    assert "capgen/runtime/captioner.py" in wheel_names


@pytest.mark.slow
def test_wheel_metadata_states_the_spdx_license_and_python_range(
    wheel: Path, wheel_names: list[str]
) -> None:
    (metadata_name,) = [name for name in wheel_names if name.endswith(".dist-info/METADATA")]
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(metadata_name).decode()
    assert "License-Expression: MIT" in metadata.splitlines()
    assert "Requires-Python: >=3.11" in metadata.splitlines()
    # Ranges, not pins: capgen installs beside packages that pin differently.
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    runtime = [line for line in requires if "extra ==" not in line]
    assert runtime and not any("==" in line for line in runtime), runtime


@pytest.mark.skipif(not CAPGEN_SCRIPT.exists(), reason=f"{CAPGEN_SCRIPT} not installed")
def test_setup_without_the_default_sources_says_what_it_needs(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(CAPGEN_SCRIPT), "setup", "--sources", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "capgen setup needs the default model's sources (model_*.h5, tokenizer.p)" in lines[0]
    assert "--sources" in lines[0]

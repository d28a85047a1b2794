"""The base install is the runtime alone, and it captions without TensorFlow.

Builds a fresh virtual environment with capgen's wheel alone (no extras; uv,
resolving as pip would), exactly what an edge device or a slim server gets, then captions through the
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
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement
from PIL import Image
from runtime_venvs import FLAVOURS, RuntimeFlavour
from tiny_model import TinyModel

HEAVY = ("tensorflow", "keras", "tf_keras", "h5py", "onnx", "tf2onnx", "ray", "pyarrow")
FLAVOUR_IDS = [flavour.label for flavour in FLAVOURS]


@pytest.fixture(scope="module")
def runtime_only_venv(runtime_venvs: Callable[[RuntimeFlavour], Path]) -> Path:
    """Python 3.11 with CI's pins: the install the README describes."""
    return runtime_venvs(FLAVOURS[0])


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
@pytest.mark.parametrize("flavour", FLAVOURS, ids=FLAVOUR_IDS)
def test_runtime_only_install_captions_via_cli_and_api(
    flavour: RuntimeFlavour,
    runtime_venvs: Callable[[RuntimeFlavour], Path],
    tiny_model: TinyModel,
    tmp_path: Path,
) -> None:
    """On Python 3.11, 3.12 and 3.13 with CI's pins, and on the oldest claimed dependency set."""
    runtime_only_venv = runtime_venvs(flavour)
    if flavour.constraints.name == "constraints-oldest.txt":
        _assert_installed_at_lower_bounds(runtime_only_venv, flavour.constraints, tmp_path)
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
        print("FINISHED:" + str(result.finished))
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
    caption, finished_line, heavy_line = api.stdout.strip().splitlines()[-3:]
    assert heavy_line == "HEAVY:"
    # Plain output marks a caption cut at max_length; the API says so in `finished`.
    mark = "" if finished_line == "FINISHED:True" else " [max length reached]"
    assert caption + mark == cli.stdout.strip().split("\t")[-1]


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


def _pins(constraints: Path) -> dict[str, str]:
    lines = constraints.read_text(encoding="utf-8").splitlines()
    pairs = (line.split("==") for line in lines if line and not line.startswith("#"))
    return {name.strip().lower(): version.strip() for name, version in pairs}


def _assert_installed_at_lower_bounds(venv: Path, constraints: Path, home: Path) -> None:
    """The oldest set really is what got installed, and it is pyproject's lower bounds."""
    probe = (
        "import json, importlib.metadata as m; "
        f"print(json.dumps({{n: m.version(n) for n in {sorted(_pins(constraints))!r}}}))"
    )
    result = _run(venv, str(venv / "bin" / "python"), "-c", probe, env_home=home)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == _pins(constraints)
    import tomllib

    project = tomllib.loads((constraints.parent / "pyproject.toml").read_text(encoding="utf-8"))
    bounds = {}
    for line in project["project"]["dependencies"]:  # e.g. "typer>=0.16" or "pkg>=1.0,<2"
        requirement = Requirement(line)
        (lower,) = (spec.version for spec in requirement.specifier if spec.operator == ">=")
        bounds[requirement.name.lower()] = lower
    for name, version in bounds.items():
        pinned = _pins(constraints)[name]
        assert pinned == version or pinned.startswith(version + "."), (name, pinned, version)


@pytest.mark.slow
def test_bench_outside_the_repository_says_what_it_needs(
    runtime_only_venv: Path, tmp_path: Path
) -> None:
    result = _run(
        runtime_only_venv, str(runtime_only_venv / "bin" / "capgen"), "bench", env_home=tmp_path
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "capgen bench runs in a capgen repository checkout" in lines[0]
    assert "../shared/data" in lines[0]

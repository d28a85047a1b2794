"""Fresh virtual environments holding capgen's runtime alone, as a user's `pip install capgen` gets it.

Made with uv (`uv venv`, `uv pip install`: the dev extra's installer, which
`make` uses too): it resolves the same metadata and constraints as pip, in
about 1 s per venv instead of 6-7 (measured here), and CI builds six of them.
The documented provider recipe (capgen.benchmarks.provider_venv) stays pip's.

One per interpreter (python3.11, python3.12, python3.13) installed with the
pins CI uses (constraints.txt), and one on the oldest dependency set capgen
claims (constraints-oldest.txt: the lower bounds in pyproject.toml). Built
from the package registry for real (10-30 s each), at most once per test
session. capgen itself goes in from one wheel built once per run for every
venv and every xdist worker (`capgen_wheel`), as a user's `pip install capgen`
gets a wheel: built from a copy of the sources, because pip builds in-tree and
would leave build/ and *.egg-info in the working tree, and the copy also proves
the sdist-relevant files suffice.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from capgen.benchmarks.provider_venv import uv_beside

REPO_ROOT = Path(__file__).resolve().parents[2]
CONSTRAINTS = REPO_ROOT / "constraints.txt"
OLDEST_CONSTRAINTS = REPO_ROOT / "constraints-oldest.txt"
# uv beside this interpreter (the dev extra), else on PATH.
UV = uv_beside() or "uv"


@dataclass(frozen=True)
class RuntimeFlavour:
    """Which interpreter and which pins a runtime-only venv is built with."""

    label: str
    python: str
    constraints: Path


FLAVOURS = (
    RuntimeFlavour("py3.11", "python3.11", CONSTRAINTS),
    RuntimeFlavour("py3.12", "python3.12", CONSTRAINTS),
    RuntimeFlavour("py3.13", "python3.13", CONSTRAINTS),
    RuntimeFlavour("oldest", "python3.11", OLDEST_CONSTRAINTS),
)
OLDEST = FLAVOURS[-1]


def find_interpreter(name: str) -> str | None:
    """`name` on PATH if it runs, else a pyenv build of it (pyenv's shim for a version that
    is installed but not selected exits 127), else None."""
    version = name.removeprefix("python")
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [shutil.which(name), *map(str, sorted(pyenv.glob(f"{version}.*/bin/{name}")))]
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "pass"], capture_output=True, check=False)
        if probe.returncode == 0:
            return candidate
    return None


def build_runtime_venv(flavour: RuntimeFlavour, root: Path, wheel: Path, extras: str = "") -> Path:
    """A venv under `root` with `pip install -c <constraints> <capgen wheel>[extras]`; skips
    with the reason when the interpreter is missing, fails with pip's output."""
    interpreter = find_interpreter(flavour.python)
    if interpreter is None:
        pytest.skip(
            f"{flavour.python} is not installed (not on PATH, no pyenv build): "
            f"cannot prove the {flavour.label} install"
        )
    venv = root / f"venv-{flavour.label}{'-' + extras if extras else ''}"
    if (venv / "bin" / "capgen").exists():
        return venv
    subprocess.run([UV, "venv", "--quiet", "--python", interpreter, str(venv)], check=True)
    result = subprocess.run(
        [
            UV,
            "pip",
            "install",
            "--quiet",
            "--compile-bytecode",  # as pip does: a process under PYTHONDONTWRITEBYTECODE
            "--python",  # (CI) would otherwise recompile numpy and onnxruntime every time
            str(venv / "bin" / "python"),
            "-c",
            str(flavour.constraints),
            f"{wheel}[{extras}]" if extras else str(wheel),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"runtime-only install ({flavour.label}) failed:\n{result.stdout}\n{result.stderr}"
        )
    return venv


def build_openvino_venv(root: Path, wheel: Path) -> Path:
    """A python whose onnxruntime is `onnxruntime-openvino`, installed by the README's recipe
    (capgen.benchmarks.provider_venv) with CI's pins; skips with pip's reason only when the
    package index cannot be reached, fails with pip's output otherwise."""
    from capgen.benchmarks.provider_venv import (
        OPENVINO_BUILD,
        ProviderVenvError,
        build_provider_venv,
        index_problem,
    )

    interpreter = find_interpreter("python3.11")
    if interpreter is None:
        pytest.skip("python3.11 is not installed: cannot build the onnxruntime-openvino venv")
    venv = root / "venv-openvino"
    if not (venv / "bin" / "capgen").exists():
        problem = index_problem(OPENVINO_BUILD)
        if problem is not None:
            pytest.skip(f"the package index cannot serve {OPENVINO_BUILD}: {problem}")
    try:
        return build_provider_venv(venv, OPENVINO_BUILD, str(wheel), interpreter)
    except ProviderVenvError as error:
        pytest.fail(f"onnxruntime-openvino venv: {error}")

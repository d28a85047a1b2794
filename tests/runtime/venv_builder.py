"""A fresh virtual environment with capgen installed from a copy of this repository.

Shared by the install tests (runtime only; runtime + the light convert-decoder
extra): they prove what a user's `pip install` gets, not what the fat
development venv happens to hold. The sources are copied first: pip builds
in-tree and would leave build/ and *.egg-info in the working tree, and the
copy also proves the sdist-relevant files suffice.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def install_capgen_venv(folder: Path, extras: str = "") -> Path:
    """`folder/venv` with `pip install <copy of the repo>[extras]`; fails the test if pip does."""
    venv = folder / "venv"
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base_python, "-m", "venv", str(venv)], check=True)
    source = folder / "source"
    shutil.copytree(
        REPO_ROOT,
        source,
        ignore=shutil.ignore_patterns(".venv", ".git", "*.egg-info", "build", "__pycache__"),
    )
    requirement = f"{source}[{extras}]" if extras else str(source)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    result = subprocess.run(
        [*pip, "--disable-pip-version-check", requirement],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"pip install {requirement} failed:\n{result.stdout}\n{result.stderr}")
    return venv

"""capgen's wheel, built once per test run and installed into every venv the tests build.

A user's `pip install capgen` gets a wheel; building it once (instead of pip
building the sources again for each of five venvs) is what every venv then
installs. Built from a copy of the sources: pip builds in-tree and would leave
build/ and *.egg-info in the working tree, and the copy also proves the
sdist-relevant files suffice.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PIP_WHEEL = (
    sys.executable,
    "-m",
    "pip",
    "wheel",
    "--quiet",
    "--disable-pip-version-check",
    "--no-deps",
)


def source_copy(root: Path) -> Path:
    source = root / "source"
    if not source.exists():
        shutil.copytree(
            REPO_ROOT,
            source,
            ignore=shutil.ignore_patterns(
                ".venv", ".git", "*.egg-info", "build", "dist", "__pycache__", ".*_cache"
            ),
        )
    return source


def build_capgen_wheel(shared: Path) -> Path:
    """capgen's wheel in `shared/wheel`, built once: the first caller builds it under a lock,
    every other caller (another venv, another xdist worker) waits for it and reuses it."""
    folder = shared / "wheel"
    folder.mkdir(parents=True, exist_ok=True)
    with (shared / "wheel.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        wheels = sorted(folder.glob("capgen-*.whl"))
        if wheels:
            return wheels[0]
        result = subprocess.run(
            [*PIP_WHEEL, "-w", str(folder), str(source_copy(shared))],
            capture_output=True,
            text=True,
            check=False,
        )
        wheels = sorted(folder.glob("capgen-*.whl"))
        if result.returncode != 0 or not wheels:
            pytest.fail(f"building capgen's wheel failed:\n{result.stdout}\n{result.stderr}")
        return wheels[0]

"""What a cold `capgen caption` process imports: only what captioning needs.

A one-photo `capgen caption` is mostly start-up, so every library imported
on the way is paid for by every such process (the cold-start benchmark times
exactly this). typer 0.29 started building a pydantic TypeAdapter for every
parameter while parsing the command line, which imported pydantic and cost
0.15-0.2 s of CPU and 11 MB of peak memory per process (measured); the
typer that constraints.txt pins (0.28, what `make` and CI install) does not.
pyproject.toml keeps typer uncapped (capgen lives next to other packages), so
this checks the pinned set: with typer 0.29 it fails, and says why.

Driven through the real console script with PYTHONPROFILEIMPORTTIME, which
makes Python itself list every module the process imports on stderr.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_model import TinyModel

CAPGEN_SCRIPT = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "capgen"
pytestmark = pytest.mark.skipif(
    not CAPGEN_SCRIPT.exists(), reason=f"console script {CAPGEN_SCRIPT} not installed"
)
# Not needed to caption one photo, and each is tens of milliseconds to import.
NOT_FOR_CAPTIONING = ("pydantic", "pydantic_core", "rich")


def _imported_modules(stderr: str) -> set[str]:
    """Top-level module names from `-X importtime` lines: `import time: self | cumulative | name`."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1].strip()
            if name != "package":  # the header line
                names.add(name.split(".")[0])
    return names


def test_capgen_caption_imports_no_pydantic_or_rich(tiny_model: TinyModel, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (32, 40, 3), dtype=np.uint8)).save(photo)
    env = {**os.environ, "CAPGEN_HOME": str(tmp_path / "home"), "PYTHONPROFILEIMPORTTIME": "1"}
    done = subprocess.run(
        [
            str(CAPGEN_SCRIPT),
            "caption",
            "--model",
            str(tiny_model.folder),
            "--beam-size",
            "1",
            str(photo),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip(), "no caption printed"
    imported = _imported_modules(done.stderr)
    assert {"typer", "numpy", "onnxruntime"} <= imported  # the listing itself worked
    from importlib.metadata import version

    assert sorted(imported & set(NOT_FOR_CAPTIONING)) == [], (
        f"typer {version('typer')} (constraints.txt pins 0.28; 0.29 imports pydantic)"
    )

"""What a cold `capgen caption` process imports: only what captioning needs.

One probe of the real console script checks all three things that used to be
three tests (tests/runtime/test_runtime_cli.py, test_cli_verbosity.py and this
file): no terminal-library extras (pydantic, rich), no conversion stack
(TensorFlow, Keras, h5py, onnx, tf2onnx, matplotlib), and no other capgen wing
(converter, models, benchmarks, service): `capgen caption` registers only the
runtime's commands.

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
# The conversion stack: hundreds of milliseconds to seconds, and absent on a runtime install.
CONVERSION_STACK = ("tensorflow", "keras", "tf_keras", "h5py", "onnx", "tf2onnx", "matplotlib")
# capgen's other wings: `capgen caption` must not even register them.
OTHER_WINGS = ("capgen.convert", "capgen.models", "capgen.benchmarks", "capgen.serve", "capgen.ray")


def _imported_modules(stderr: str) -> set[str]:
    """Module names from `-X importtime` lines: `import time: self | cumulative | name`."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1].strip()
            if name != "package":  # the header line
                names.add(name)
    return names


def test_capgen_caption_imports_only_what_captioning_needs(
    tiny_model: TinyModel, tmp_path: Path
) -> None:
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
    modules = _imported_modules(done.stderr)
    top_level = {name.split(".")[0] for name in modules}
    assert {"typer", "numpy", "onnxruntime"} <= top_level  # the listing itself worked
    assert "capgen.runtime.captioner" in modules
    from importlib.metadata import version

    assert sorted(top_level & set(NOT_FOR_CAPTIONING)) == [], (
        f"typer {version('typer')} (constraints.txt pins 0.28; 0.29 imports pydantic)"
    )
    assert sorted(top_level & set(CONVERSION_STACK)) == []
    wings = sorted(
        m for m in modules if m.startswith(tuple(f"{w}." for w in OTHER_WINGS)) or m in OTHER_WINGS
    )
    assert wings == []

"""Registering `capgen serve` costs the other commands nothing: no FastAPI, uvicorn or numpy on import.

Runs without the serve extra too: this is what every `capgen` command line
imports, on a runtime-only install as well.
"""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_serve_command_stays_light() -> None:
    script = (
        "import sys\n"
        "import capgen.serve.cli\n"
        "heavy = ('fastapi', 'starlette', 'uvicorn', 'prometheus_client', 'numpy', 'onnxruntime')\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"

"""A staging folder whose writer was killed with SIGKILL: the leftover every staging test prunes."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

_SCRIPT = (
    "import os, signal, sys\n"
    "from pathlib import Path\n"
    "from capgen.runtime.staging import create_staging\n"
    "staging = create_staging(Path(sys.argv[1]))\n"
    "(staging / 'encoder.onnx').write_bytes(b'x' * 1024)\n"
    "print(staging, flush=True)\n"
    "os.kill(os.getpid(), signal.SIGKILL)\n"
)


def killed_staging(target: Path) -> Path:
    """Create a staging folder for `target` in a child process that is then killed with SIGKILL."""
    run = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(target)], capture_output=True, text=True, check=False
    )
    assert run.returncode == -signal.SIGKILL, run.stderr
    staging = Path(run.stdout.strip())
    assert staging.is_dir() and staging.name.startswith(f".{target.name}.partial-")
    assert staging.parent == target.parent
    return staging

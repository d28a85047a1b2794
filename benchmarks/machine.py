"""The machine a run happened on: CPU, flags, memory, load, versions.

How fast it can compute at best is `ceiling.py`'s job.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

# Xception at 299x299 is 8.36 G multiply-adds (93% of them in its 1x1 pointwise
# convolutions) = 16.7 GFLOP per image.
XCEPTION_GFLOP = 16.72
INTERESTING_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8")
VERSIONED = (
    "onnxruntime",
    "numpy",
    "pillow",
    "tensorflow-cpu",
    "keras",
    "tf-keras",
    "tf2onnx",
    "onnx",
    "capgen",
)


def _cpu_model_and_flags() -> tuple[str, list[str]]:
    model = platform.processor() or "unknown"
    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("unknown", "", "x86_64"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                present = set(line.split(":", 1)[1].split())
                flags = [flag for flag in INTERESTING_FLAGS if flag in present]
    except OSError:
        pass
    return model, flags


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, Any]:
    import psutil

    model, flags = _cpu_model_and_flags()
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu": model,
        "logical_cores": os.cpu_count(),
        "cpu_flags": flags,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_at_start": [round(value, 2) for value in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {name: _version(name) for name in VERSIONED},
        "env": {
            key: os.environ[key]
            for key in ("OPENBLAS_CORETYPE", "OMP_NUM_THREADS", "CAPGEN_NO_SPINNING")
            if key in os.environ
        },
    }

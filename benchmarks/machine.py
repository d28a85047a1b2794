"""The machine a run happened on, and how fast it can multiply matrices at best.

The matmul ceiling is an onnxruntime MatMul (same library, same threads as
the encoder), so "encoder GFLOP/s ÷ matmul GFLOP/s" says how close the
encoder gets to what this CPU does on the friendliest possible workload.
numpy is not used for it: OPENBLAS_CORETYPE may be pinned to an older core
type on these machines, which would understate the ceiling.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

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
            for key in ("OPENBLAS_CORETYPE", "OMP_NUM_THREADS")
            if key in os.environ
        },
    }


def _matmul_session(size: int, threads: int | None) -> Any:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "matmul",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [size, size]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [size, size]),
        ],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _time_matmul(size: int, threads: int | None, repeats: int) -> list[float]:
    session = _matmul_session(size, threads)
    rng = np.random.default_rng(0)
    feeds = {name: rng.standard_normal((size, size), dtype=np.float32) for name in ("a", "b")}
    session.run(None, feeds)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - started)
    return times


def matmul_ceiling(sizes: tuple[int, ...] = (1024, 2048, 3072), repeats: int = 7) -> dict[str, Any]:
    """The best float32 [n x n] @ [n x n] GFLOP/s onnxruntime reaches here, over shapes and threads.

    One shape at one thread setting is a speed, not a ceiling: small squares
    do not fill the cores, large ones fall out of cache, and onnxruntime's
    default pool may not use one thread per core. The best of each
    (shape, threads) pair is the ceiling; every pair is reported.
    """
    cores = os.cpu_count() or 1
    trials: list[dict[str, Any]] = []
    for size in sizes:
        for threads in dict.fromkeys((None, cores)):
            times = _time_matmul(size, threads, repeats)
            flop = 2.0 * size**3
            trials.append(
                {
                    "size": size,
                    "threads": threads or "default",
                    "best_seconds": min(times),
                    "median_seconds": float(np.median(times)),
                    "gflops_best": flop / min(times) / 1e9,
                    "gflops_median": flop / float(np.median(times)) / 1e9,
                }
            )
    best = max(trials, key=lambda trial: trial["gflops_best"])
    return {**best, "trials": trials}

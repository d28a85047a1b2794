"""How many GFLOP/s onnxruntime's CPU provider reaches here at best: the ceiling the encoder is held to.

A ceiling that the encoder beats is not one: a single MatMul shape measured
139 GFLOP/s while Xception itself ran at 194 GFLOP/s, because onnxruntime runs
Xception's 1x1 convolutions (93% of its FLOPs) through its NCHWc AVX-512
kernels, which go faster than its MatMul. So the ceiling is the best over
several kernels (chains of 1x1 Conv at Xception's channel counts and spatial
sizes, at batch 1 and larger, and square MatMuls) and thread settings (1 and
one per core): each (kernel, threads) pair is timed and every pair is
reported. The INT8 encoder is held to its own ceiling (QLinearConv and
MatMulInteger, the kernels a QDQ model runs on), never to the float one.

A theoretical peak is derived only from what the machine lets us read: the
AVX-512 (or AVX2) FMA width and the physical cores are known, the number of
FMA units per core is not, and the clock is known only when cpufreq reports a
maximum (a KVM guest does not; its "cpu MHz" is the nominal TSC rate).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from capgen.benchmarks.stats import summarize

FLOAT_OPS = ("Conv", "MatMul")
INT8_OPS = ("QLinearConv", "MatMulInteger")
CPUFREQ_MAX = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
CPU_TOPOLOGY = Path("/sys/devices/system/cpu")


@dataclass(frozen=True)
class Kernel:
    """One workload: a chain of `depth` 1x1 convolutions of `size` channels on `batch` x `spatial`²
    maps, or one [size x size] @ [size x size] product."""

    op: str  # Conv, MatMul, QLinearConv or MatMulInteger
    size: int  # channels (convolutions) or the square's side (products)
    spatial: int = 1
    batch: int = 1
    depth: int = 6

    @property
    def precision(self) -> str:
        return "int8" if self.op in INT8_OPS else "fp32"

    @property
    def is_conv(self) -> bool:
        return self.op in ("Conv", "QLinearConv")

    @property
    def name(self) -> str:
        if self.is_conv:
            return (
                f"{self.op} 1x1 x{self.depth}, {self.size} channels, "
                f"{self.spatial}x{self.spatial}, batch {self.batch}"
            )
        return f"{self.op} {self.size}x{self.size}x{self.size}"

    @property
    def flop(self) -> float:
        """Multiply-adds x 2 per run (an INT8 multiply-add counts as two operations too)."""
        if self.is_conv:
            return 2.0 * self.batch * self.spatial**2 * self.size**2 * self.depth
        return 2.0 * self.size**3


def _xception_kernels(op: str, batches: Sequence[int]) -> list[Kernel]:
    """The 1x1 convolutions of Xception's middle flow (728 ch, 19x19: most of its FLOPs),
    entry flow (256 ch, 74x74) and exit flow (2048 ch, 10x10)."""
    kernels = [Kernel(op, 728, 19, batch) for batch in batches]
    return [*kernels, Kernel(op, 256, 74, 1), Kernel(op, 2048, 10, 1)]


FULL_KERNELS: tuple[Kernel, ...] = (
    *_xception_kernels("Conv", (1, 8)),
    Kernel("MatMul", 1024),
    Kernel("MatMul", 2048),
    *_xception_kernels("QLinearConv", (1, 8))[:3],
    Kernel("MatMulInteger", 1024),
    Kernel("MatMulInteger", 2048),
)
QUICK_KERNELS: tuple[Kernel, ...] = (
    Kernel("Conv", 728, 19, 1),
    Kernel("Conv", 728, 19, 4),
    Kernel("MatMul", 1024),
    Kernel("QLinearConv", 728, 19, 1),
    Kernel("MatMulInteger", 1024),
)
SMOKE_KERNELS: tuple[Kernel, ...] = (
    Kernel("Conv", 64, 8, 1, depth=2),
    Kernel("MatMul", 128),
    Kernel("QLinearConv", 64, 8, 1, depth=2),
)


def _graph(kernel: Kernel) -> tuple[bytes, dict[str, np.ndarray]]:
    """The kernel as a serialized ONNX model with constant weights (so onnxruntime pre-packs
    them, as it does the encoder's), and its input."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    int8 = kernel.precision == "int8"
    dtype = TensorProto.UINT8 if int8 else TensorProto.FLOAT
    weights: list[Any] = []
    nodes: list[Any] = []
    if kernel.is_conv:
        shape = [kernel.batch, kernel.size, kernel.spatial, kernel.spatial]
        if int8:  # one scale and zero points for all, so each layer's uint8 output feeds the next
            weights += [
                numpy_helper.from_array(np.array(0.02, np.float32), "scale"),
                numpy_helper.from_array(np.array(128, np.uint8), "x_zero"),
                numpy_helper.from_array(np.array(0, np.int8), "w_zero"),
            ]
        source = "x"
        for layer in range(kernel.depth):
            target = "y" if layer == kernel.depth - 1 else f"h{layer}"
            size = (kernel.size, kernel.size, 1, 1)
            if int8:
                kernel_array: np.ndarray = rng.integers(-127, 128, size, dtype=np.int8)
                inputs = [
                    source,
                    "scale",
                    "x_zero",
                    f"w{layer}",
                    "scale",
                    "w_zero",
                    "scale",
                    "x_zero",
                ]
            else:
                kernel_array = (rng.standard_normal(size) * 0.05).astype(np.float32)
                inputs = [source, f"w{layer}"]
            weights.append(numpy_helper.from_array(kernel_array, f"w{layer}"))
            nodes.append(helper.make_node(kernel.op, inputs, [target]))
            source = target
        out_type = dtype
    else:
        shape = [kernel.size, kernel.size]
        size2 = (kernel.size, kernel.size)
        matrix = (
            rng.integers(-127, 128, size2, dtype=np.int8)
            if int8
            else rng.standard_normal(size2, dtype=np.float32)
        )
        weights.append(numpy_helper.from_array(matrix, "w"))
        nodes.append(helper.make_node(kernel.op, ["x", "w"], ["y"]))
        out_type = TensorProto.INT32 if int8 else TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        "ceiling",
        [helper.make_tensor_value_info("x", dtype, shape)],
        [helper.make_tensor_value_info("y", out_type, None)],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feed = (
        rng.integers(0, 256, shape, dtype=np.uint8)
        if int8
        else rng.standard_normal(shape, dtype=np.float32)
    )
    return model.SerializeToString(), {"x": feed}


def time_setting(kernel: Kernel, threads: int, repeats: int) -> dict[str, Any]:
    """Best and median GFLOP/s of `kernel` with `threads` intra-op threads (after one warm-up run)."""
    import onnxruntime as ort

    model, feeds = _graph(kernel)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    session.run(None, feeds)
    times = []
    for _ in range(max(repeats, 1)):
        started = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - started)
    summary = summarize(times)
    best, median = summary["min"], summary["median"]
    return {
        "kernel": kernel.name,
        "op": kernel.op,
        "precision": kernel.precision,
        "threads": threads,
        "best_seconds": best,
        "median_seconds": median,
        "gflops_best": kernel.flop / best / 1e9,
        "gflops_median": kernel.flop / median / 1e9,
    }


def best_trial(trials: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The (kernel, threads) setting with the highest best-run GFLOP/s: that is the ceiling."""
    trials = list(trials)
    if not trials:
        raise ValueError("no ceiling settings were measured")
    return max(trials, key=lambda trial: trial["gflops_best"])


def thread_settings() -> tuple[int, ...]:
    """1 thread, and one per core this process may run on."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return tuple(dict.fromkeys((1, cores or 1)))


def ceilings_from(trials: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per precision: the best setting's figures plus every setting measured for it."""
    found: dict[str, dict[str, Any]] = {}
    for precision in ("fp32", "int8"):
        mine = [trial for trial in trials if trial["precision"] == precision]
        if mine:
            found[precision] = {**best_trial(mine), "trials": mine}
    return found


def physical_cores(root: Path = CPU_TOPOLOGY) -> int | None:
    """Cores, not hyperthreads: distinct thread-sibling sets among the CPUs we may run on."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    siblings = set()
    for cpu in cpus:
        try:
            siblings.add((root / f"cpu{cpu}/topology/thread_siblings_list").read_text().strip())
        except OSError:
            return None
    return len(siblings) or None


def max_clock_mhz(path: Path = CPUFREQ_MAX) -> float | None:
    """The cores' highest clock from cpufreq, or None when the kernel does not report one."""
    try:
        return int(path.read_text().strip()) / 1000.0
    except (OSError, ValueError):
        return None


def theoretical_peak(
    flags: Sequence[str], cores: int | None, clock_mhz: float | None
) -> dict[str, Any]:
    """FP32 peak = cores x FMA lanes x 2 FLOP x FMA units x clock, as far as those are known.

    The FMA units per core (1 or 2 on Xeons) cannot be read, so a known clock
    gives a range; an unknown clock gives only the per-GHz figure, and says so.
    """
    lanes = 16 if "avx512f" in flags else 8 if "fma" in flags else 0
    if not lanes or not cores:
        return {
            "gflops_range": None,
            "why": "no FMA instructions or core count to derive a peak from",
        }
    per_ghz = cores * lanes * 2  # GFLOP/s per GHz per FMA unit per core
    isa = "AVX-512" if lanes == 16 else "AVX2"
    facts = f"{cores} cores x {lanes} float32 lanes ({isa} FMA) x 2 FLOP"
    if clock_mhz is None:
        return {
            "gflops_range": None,
            "gflops_per_ghz_per_fma_unit": per_ghz,
            "why": (
                f"{facts} = {per_ghz} GFLOP/s per GHz per FMA unit; the clock is not knowable here "
                "(no cpufreq maximum; /proc/cpuinfo's MHz is the nominal rate, not the clock under "
                "load) and neither is the number of FMA units per core, so no peak is stated"
            ),
        }
    low, high = per_ghz * clock_mhz / 1000.0, 2 * per_ghz * clock_mhz / 1000.0
    return {
        "gflops_range": [low, high],
        "gflops_per_ghz_per_fma_unit": per_ghz,
        "why": (
            f"{facts} x {clock_mhz / 1000:.2f} GHz (cpufreq maximum) x 1 or 2 FMA units per core "
            "(not readable)"
        ),
    }


def measure_ceilings(
    kernels: Sequence[Kernel], repeats: int, flags: Sequence[str]
) -> dict[str, Any]:
    """Time every (kernel, threads) setting; the best per precision is its ceiling."""
    started = time.monotonic()
    trials = [
        time_setting(kernel, threads, repeats)
        for kernel in kernels
        for threads in thread_settings()
    ]
    return {
        **ceilings_from(trials),
        "theoretical_peak": theoretical_peak(flags, physical_cores(), max_clock_mhz()),
        "seconds": round(time.monotonic() - started, 1),
    }

"""The ceiling is the best setting measured, an arm above it is flagged, INT8 has its own (issue 14).

No timing is asserted: the selection and the report are checked on trials
the test writes, and the one real measurement only for shape (positive
figures, the best being the maximum of the trials).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from capgen.benchmarks import ceiling
from capgen.benchmarks.ceiling import Kernel
from capgen.benchmarks.efficiency import NOT_A_CEILING, encoder_efficiency, share_text
from capgen.benchmarks.report import _markdown, headline_ratios

MACHINE = {
    "date": "2026-12-01T00:00:00+00:00",
    "cpu": "test CPU",
    "logical_cores": 2,
    "cpu_flags": ["fma", "avx512f"],
    "memory_gib": 8.0,
    "load_average_at_start": [0.0, 0.0, 0.0],
    "python": "3.11",
    "platform": "Linux",
    "versions": {"onnxruntime": "1.0"},
    "env": {},
}


def _trial(kernel: str, threads: int, gflops: float, precision: str = "fp32") -> dict[str, Any]:
    return {
        "kernel": kernel,
        "op": kernel.split()[0],
        "precision": precision,
        "threads": threads,
        "best_seconds": 1.0 / gflops,
        "median_seconds": 1.2 / gflops,
        "gflops_best": gflops,
        "gflops_median": gflops / 1.2,
    }


TRIALS = [
    _trial("MatMul 1024x1024x1024", 2, 139.0),
    _trial("Conv 1x1 x6, 728 channels, 19x19, batch 8", 1, 180.0),
    _trial("Conv 1x1 x6, 728 channels, 19x19, batch 8", 2, 402.0),
    _trial("MatMul 2048x2048x2048", 1, 90.0),
    _trial("QLinearConv 1x1 x6, 728 channels, 19x19, batch 1", 2, 700.0, "int8"),
    _trial("MatMulInteger 1024x1024x1024", 2, 1100.0, "int8"),
]


def test_the_ceiling_is_the_best_setting_per_precision() -> None:
    found = ceiling.ceilings_from(TRIALS)
    assert found["fp32"]["kernel"] == "Conv 1x1 x6, 728 channels, 19x19, batch 8"
    assert found["fp32"]["threads"] == 2 and found["fp32"]["gflops_best"] == 402.0
    assert found["int8"]["kernel"] == "MatMulInteger 1024x1024x1024"
    # Every setting is kept, each under its own precision only.
    assert len(found["fp32"]["trials"]) == 4 and len(found["int8"]["trials"]) == 2
    assert {t["precision"] for t in found["fp32"]["trials"]} == {"fp32"}


def test_no_int8_kernels_means_no_int8_ceiling() -> None:
    found = ceiling.ceilings_from([t for t in TRIALS if t["precision"] == "fp32"])
    assert set(found) == {"fp32"}
    with pytest.raises(ValueError, match="no ceiling settings"):
        ceiling.best_trial([])


def test_kernels_count_their_flop_and_precision() -> None:
    conv = Kernel("Conv", 728, 19, 8, depth=6)
    assert conv.flop == 2.0 * 8 * 19 * 19 * 728 * 728 * 6
    assert conv.precision == "fp32" and "728 channels, 19x19, batch 8" in conv.name
    assert Kernel("MatMul", 1024).flop == 2.0 * 1024**3
    assert Kernel("QLinearConv", 64, 8).precision == "int8"
    assert Kernel("MatMulInteger", 64).precision == "int8"
    # The full plan covers Xception's 1x1 convolutions, MatMuls, and both precisions.
    ops = {kernel.op for kernel in ceiling.FULL_KERNELS}
    assert ops == {"Conv", "MatMul", "QLinearConv", "MatMulInteger"}
    assert any(k.op == "Conv" and k.size == 728 and k.batch > 1 for k in ceiling.FULL_KERNELS)


def test_one_real_measurement_has_the_shape_of_a_ceiling() -> None:
    pytest.importorskip("onnx", reason="the ceiling's graphs are built with onnx (convert extra)")
    measured = ceiling.measure_ceilings(ceiling.SMOKE_KERNELS, 1, ["fma", "avx512f"])
    for precision in ("fp32", "int8"):
        best = measured[precision]
        assert best["gflops_best"] > 0
        assert best["gflops_best"] == max(t["gflops_best"] for t in best["trials"])
        assert {t["threads"] for t in best["trials"]} == set(ceiling.thread_settings())
    assert "theoretical_peak" in measured and measured["seconds"] >= 0


def test_the_peak_is_stated_only_when_the_clock_is_known() -> None:
    unknown = ceiling.theoretical_peak(["fma", "avx512f"], 2, None)
    assert unknown["gflops_range"] is None
    assert unknown["gflops_per_ghz_per_fma_unit"] == 64
    assert "not knowable" in unknown["why"] and "no peak is stated" in unknown["why"]
    known = ceiling.theoretical_peak(["fma", "avx512f"], 2, 3000.0)
    assert known["gflops_range"] == [192.0, 384.0]  # 1 or 2 FMA units per core
    assert ceiling.theoretical_peak(["fma", "avx2"], 4, 2000.0)["gflops_range"] == [128.0, 256.0]
    assert ceiling.theoretical_peak([], 2, 3000.0)["gflops_range"] is None


def test_physical_cores_count_thread_sibling_sets(tmp_path: Path) -> None:
    cpus = sorted(ceiling.os.sched_getaffinity(0))
    for cpu in cpus:  # pretend every pair of CPUs is one core's two hyperthreads
        topology = tmp_path / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "thread_siblings_list").write_text(f"{cpu // 2 * 2}-{cpu // 2 * 2 + 1}\n")
    assert ceiling.physical_cores(tmp_path) == len({cpu // 2 for cpu in cpus})
    assert ceiling.physical_cores(tmp_path / "missing") is None
    assert ceiling.max_clock_mhz(tmp_path / "missing") is None
    (tmp_path / "max").write_text("3500000\n")
    assert ceiling.max_clock_mhz(tmp_path / "max") == 3500.0


def _encoder(**arms: float) -> dict[str, Any]:
    """Encoder results at batch 1: arm -> median seconds per image."""
    return {"encoder": {"batch1": {"seconds": {arm: {"median": s} for arm, s in arms.items()}}}}


def test_an_arm_above_its_ceiling_is_flagged_and_int8_is_held_to_int8() -> None:
    fp32_only = ceiling.ceilings_from([_trial("MatMul 1024x1024x1024", 2, 139.0)])
    # 16.72 GFLOP in 86.3 ms = 194 GFLOP/s, the committed run's FP32 encoder.
    efficiency = encoder_efficiency(_encoder(capgen=0.0863, capgen_int8=0.0344), fp32_only)
    fp32 = efficiency["capgen_batch1"]
    assert fp32["precision"] == "fp32" and fp32["exceeds_ceiling"]
    assert fp32["share_of_ceiling"] == pytest.approx(16.72 / 0.0863 / 139.0)
    assert NOT_A_CEILING in share_text(fp32) and "%" not in share_text(fp32)
    int8 = efficiency["capgen_int8_batch1"]
    assert int8["share_of_ceiling"] is None and not int8["exceeds_ceiling"]
    assert share_text(int8) == "(no INT8 ceiling measured)"

    both = ceiling.ceilings_from(TRIALS)
    efficiency = encoder_efficiency(_encoder(capgen=0.0863, capgen_int8=0.0344), both)
    assert not efficiency["capgen_batch1"]["exceeds_ceiling"]
    assert share_text(efficiency["capgen_batch1"]) == "= 48% of the FP32 ceiling"
    assert efficiency["capgen_int8_batch1"]["ceiling_gflops"] == 1100.0
    assert share_text(efficiency["capgen_int8_batch1"]) == "= 44% of the INT8 ceiling"


def _results(trials: list[dict[str, Any]], **arms: float) -> dict[str, Any]:
    ceilings = {
        **ceiling.ceilings_from(trials),
        "theoretical_peak": ceiling.theoretical_peak(["fma", "avx512f"], 2, None),
    }
    return {
        "machine": MACHINE,
        "models": {},
        "ceiling": ceilings,
        "encoder_efficiency": encoder_efficiency(_encoder(**arms), ceilings),
    }


def test_the_report_flags_a_ceiling_the_encoder_beats() -> None:
    results = _results([_trial("MatMul 1024x1024x1024", 2, 139.0)], capgen=0.0863)
    target = headline_ratios(results)["encoder_vs_ceiling@Xception FP32 batch1"]
    assert target["flag"] == NOT_A_CEILING and target["met"] is False
    text = _markdown(results)
    assert "## Distance from the machine's limit" in text
    assert f"| {target['what']} | 1.39: **{NOT_A_CEILING}** |" in text
    assert (
        f"capgen_batch1: 86.3 ms/image = 194 GFLOP/s = 1.39x the FP32 ceiling: **{NOT_A_CEILING}**"
        in text
    )
    assert "- INT8 ceiling: not measured" in text
    assert "- theoretical FP32 peak: not stated:" in text
    assert "needs at least 2.17 GHz x FMA units per core" in text


def test_the_report_gives_a_clean_fraction_under_a_real_ceiling() -> None:
    results = _results(TRIALS, capgen=0.0863, capgen_int8=0.0344)
    target = headline_ratios(results)["encoder_vs_ceiling@Xception FP32 batch1"]
    assert target["flag"] == "" and target["met"] is False  # 0.48 < 0.75
    text = _markdown(results)
    assert NOT_A_CEILING not in text
    assert (
        "- FP32 ceiling: 402 GFLOP/s (median 335), Conv 1x1 x6, 728 channels, 19x19, batch 8, "
        "2 threads: the best of 4 (kernel, threads) settings" in text
    )
    assert "- INT8 ceiling: 1100 GFLOP/s" in text
    assert "capgen_int8_batch1: 34.4 ms/image = 486 GFLOP/s = 44% of the INT8 ceiling" in text
    assert "| FP32 | MatMul 2048x2048x2048 | 1 | 90 | 75 |" in text

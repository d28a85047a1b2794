"""The encoder's GFLOP/s as a fraction of the machine's ceiling, and the report's section on it.

Each arm is held to the ceiling of its own arithmetic: FP32 arms to the
FP32 ceiling, INT8 arms to the INT8 one (or to none, when none was
measured: then only their GFLOP/s are given). A fraction above 1 means the
"ceiling" missed a faster path of this machine, so it is reported as such,
never as a clean-looking percentage.
"""

from __future__ import annotations

from typing import Any

from capgen.benchmarks.machine import XCEPTION_GFLOP

NOT_A_CEILING = "the ceiling is not a ceiling"


def arm_precision(arm: str) -> str:
    """The arithmetic an arm runs its encoder in, from its name (capgen_int8, capgen_openvino_int8, ...)."""
    return "int8" if "int8" in arm else "fp32"


def share_of(gflops: float, ceiling: dict[str, Any] | None) -> dict[str, Any]:
    """`gflops` over the ceiling's best; None when there is no ceiling to compare with."""
    if not ceiling:
        return {"ceiling_gflops": None, "share_of_ceiling": None, "exceeds_ceiling": False}
    share = gflops / float(ceiling["gflops_best"])
    return {
        "ceiling_gflops": float(ceiling["gflops_best"]),
        "share_of_ceiling": share,
        "exceeds_ceiling": share > 1.0,
    }


def encoder_efficiency(model_result: dict[str, Any], ceilings: dict[str, Any]) -> dict[str, Any]:
    """Per arm and batch: ms and GFLOP/s per image (median), and the share of its precision's ceiling."""
    efficiency: dict[str, Any] = {}
    for batch_key, entry in model_result.get("encoder", {}).items():
        batch = int(batch_key.removeprefix("batch"))
        for arm, stats in entry["seconds"].items():
            per_image = float(stats["median"]) / batch
            gflops = XCEPTION_GFLOP / per_image
            precision = arm_precision(arm)
            efficiency[f"{arm}_{batch_key}"] = {
                "ms_per_image": per_image * 1000,
                "gflops": gflops,
                "precision": precision,
                **share_of(gflops, ceilings.get(precision)),
            }
    return efficiency


def share_text(entry: dict[str, Any]) -> str:
    """ "= 47% of the FP32 ceiling", or the flag when the arm beat its ceiling."""
    precision = entry["precision"].upper()
    share = entry["share_of_ceiling"]
    if share is None:
        return f"(no {precision} ceiling measured)"
    if entry["exceeds_ceiling"]:
        return f"= {share:.2f}x the {precision} ceiling: **{NOT_A_CEILING}**"
    return f"= {share * 100:.0f}% of the {precision} ceiling"


def _threads(count: int) -> str:
    return f"{count} thread" + ("" if count == 1 else "s")


def _peak_lines(peak: dict[str, Any], fp32: dict[str, Any] | None) -> list[str]:
    if peak.get("gflops_range"):
        low, high = peak["gflops_range"]
        lines = [f"- theoretical FP32 peak: {low:.0f}–{high:.0f} GFLOP/s ({peak['why']})"]
        if fp32 and fp32["gflops_best"] > high:
            lines.append(
                "  - the measured FP32 ceiling is above it: the peak's inputs (cores, clock) are wrong"
            )
        return lines
    lines = [f"- theoretical FP32 peak: not stated: {peak['why']}"]
    per_ghz = peak.get("gflops_per_ghz_per_fma_unit")
    if fp32 and per_ghz:
        needed = fp32["gflops_best"] / per_ghz
        lines.append(
            f"  - the measured FP32 ceiling needs at least {needed:.2f} GHz x FMA units per core "
            f"(e.g. 2 units at {needed / 2:.2f} GHz)"
        )
    return lines


def markdown(results: dict[str, Any]) -> list[str]:
    """The "Distance from the machine's limit" section."""
    ceilings = results.get("ceiling")
    if not ceilings:
        return []
    lines = ["", "## Distance from the machine's limit"]
    for precision in ("fp32", "int8"):
        best = ceilings.get(precision)
        if best is None:
            lines.append(f"- {precision.upper()} ceiling: not measured")
            continue
        lines.append(
            f"- {precision.upper()} ceiling: {best['gflops_best']:.0f} GFLOP/s (median "
            f"{best['gflops_median']:.0f}), {best['kernel']}, {_threads(best['threads'])}: the best of "
            f"{len(best['trials'])} (kernel, threads) settings in onnxruntime's CPU provider"
        )
    if "seconds" in ceilings:
        lines.append(f"- measuring every setting took {ceilings['seconds']:.0f} s")
    lines += _peak_lines(ceilings.get("theoretical_peak", {}), ceilings.get("fp32"))
    lines.append(
        f"- Xception = {XCEPTION_GFLOP:.1f} GFLOP per 299×299 image (8.36 G multiply-adds)"
    )
    for key, entry in results.get("encoder_efficiency", {}).items():
        lines.append(
            f"- {key}: {entry['ms_per_image']:.1f} ms/image = {entry['gflops']:.0f} GFLOP/s "
            + share_text(entry)
        )
    lines += [
        "",
        "| precision | kernel | threads | best GFLOP/s | median GFLOP/s |",
        "|---|---|---|---|---|",
    ]
    for precision in ("fp32", "int8"):
        for trial in ceilings.get(precision, {}).get("trials", []):
            lines.append(
                f"| {precision.upper()} | {trial['kernel']} | {trial['threads']} | "
                f"{trial['gflops_best']:.0f} | {trial['gflops_median']:.0f} |"
            )
    return lines

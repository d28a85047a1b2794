"""Summaries of repeated timings: medians with their spread, and ratios between arms.

The machine is shared and noisy, so every figure is a median of several
alternating repetitions, reported with its interquartile range and its
min-max; a ratio is the ratio of medians from the same run.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def summarize(values: Sequence[float]) -> dict[str, float | int]:
    """median, q1, q3, min, max and n of a list of measurements."""
    if not values:
        raise ValueError("no measurements to summarize")
    array = np.asarray(values, dtype=np.float64)
    q1, median, q3 = np.percentile(array, [25, 50, 75])
    return {
        "median": float(median),
        "q1": float(q1),
        "q3": float(q3),
        "min": float(array.min()),
        "max": float(array.max()),
        "n": len(values),
    }


def speedup(baseline: dict[str, float | int], capgen: dict[str, float | int]) -> float:
    """How many times faster capgen is: baseline median time / capgen median time."""
    return float(baseline["median"]) / float(capgen["median"])


def ratio_range(
    baseline: dict[str, float | int], capgen: dict[str, float | int]
) -> tuple[float, float]:
    """The most pessimistic and most optimistic speed-up the spreads allow (q1/q3 crossed)."""
    return (
        float(baseline["q1"]) / float(capgen["q3"]),
        float(baseline["q3"]) / float(capgen["q1"]),
    )

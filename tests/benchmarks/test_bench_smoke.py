"""A smoke run of `capgen bench` on tiny inputs: every section runs and reports sane numbers.

No timing is asserted (the machine is shared); only that each figure exists,
is a positive number, and that the written files are complete.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest


def _positive_stats(stats: dict[str, Any]) -> None:
    assert set(stats) >= {"median", "q1", "q3", "min", "max", "n"}
    assert stats["n"] >= 1
    assert 0 < stats["min"] <= stats["median"] <= stats["max"]
    assert math.isfinite(stats["max"])


@pytest.mark.convert
@pytest.mark.slow
def test_smoke_run_writes_every_section(
    tmp_path: Path, shared_data: Path, tf_keras_stack: None
) -> None:
    from capgen.benchmarks.run import run_benchmarks, smoke_plan

    messages: list[str] = []
    results = run_benchmarks(tmp_path, quick=True, echo=messages.append, plan=smoke_plan())

    written = json.loads((tmp_path / "results.json").read_text())
    assert written["models"].keys() == results["models"].keys() == {"tutorial7577"}
    assert (tmp_path / "latency_breakdown.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (tmp_path / "RESULTS.md").read_text()
    for heading in (
        "## Machine",
        "## Targets",
        "### Cold start",
        "### Warm latency",
        "### Encoder alone",
    ):
        assert heading in markdown

    model = written["models"]["tutorial7577"]
    for arm in ("baseline", "capgen"):
        _positive_stats(model["cold_start"]["wall_seconds"][arm])
        _positive_stats(model["cold_start"]["peak_rss_mb"][arm])
        _positive_stats(model["latency"]["beam1"]["seconds"][arm])
        _positive_stats(model["decoder"]["seconds"][arm])
        for batch in ("batch1", "batch2"):
            _positive_stats(model["encoder"][batch]["seconds"][arm])
        _positive_stats(model["throughput"]["images_per_second"][arm])
        for length in ("1", "2"):
            _positive_stats(model["scaling_length"][length][arm])
        assert model["worker_rss_mb"][arm]["peak_rss_mb"] > 0
        for stage in ("imports", "model_load", "encode", "decode"):
            assert model["cold_start"]["stages"][arm][stage] > 0
    # Both arms run the same decoder on the same photo: the same greedy caption.
    assert model["latency"]["beam1"]["same_caption_as_baseline"] == "1/1"
    assert model["decoder"]["words"] == {"baseline": 2, "capgen": 2}
    for beam in ("1", "2"):
        _positive_stats(model["scaling_beam"][beam])
    assert written["ceiling"]["fp32"]["gflops_best"] > 0
    assert written["ceiling"]["int8"]["gflops_best"] > 0
    assert written["encoder_efficiency"]["capgen_batch1"]["gflops"] > 0
    targets = written["targets"]
    metrics = {entry["metric"] for entry in targets.values()}
    assert {
        "warm_latency_fp32",
        "cold_start",
        "decoder",
        "peak_memory",
        "encoder_vs_ceiling",
    } <= metrics
    assert all(isinstance(entry["met"], bool) for entry in targets.values())
    assert written["machine"]["logical_cores"] >= 1
    # Every section says how busy the rest of the machine was while it ran.
    assert set(written["quietness"]) == {
        "tutorial7577 cold start",
        "tutorial7577 warm",
        "ceiling",
    }
    for how in written["quietness"].values():
        assert how["other_cores"] >= 0 and how["attempts"] == 1
        assert isinstance(how["quiet"], bool)
    assert written["noisy_sections"] == [
        name for name, how in written["quietness"].items() if not how["quiet"]
    ]
    assert "other processes' CPU while each section ran" in markdown
    for precision in ("fp32", "int8"):
        ceiling = written["ceiling"][precision]
        assert len(ceiling["trials"]) >= 1
        assert ceiling["gflops_best"] == max(trial["gflops_best"] for trial in ceiling["trials"])
    assert "## Distance from the machine's limit" in markdown
    assert "FP32 ceiling:" in markdown and "theoretical FP32 peak" in markdown

"""The bench's web section (issue 27), smoke size: the site in headless Chromium against Python.

Every example photo, once per arm (REPETITIONS), and no untimed pass before the
timed ones: each caption in the browser is about 0.4 s of CPU, and the numbers
are not what is checked here.

No timing is asserted (the machine is shared): only that every figure exists
and is positive, that the page ran cross-origin isolated with the 2 threads
asked for (and the site's own page isolated too), that the browser's greedy
captions are the Python runtime's, and that the goal row says met or not.
Skips, saying why, without Chromium and chromedriver, `make web` or the
default model (web_bench.why_not).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from capgen.benchmarks import web_bench
from capgen.benchmarks.run import check_sections

REPETITIONS = 1


def _positive(stats: dict[str, Any]) -> None:
    assert stats["n"] > 0
    assert 0 < stats["min"] <= stats["q1"] <= stats["median"] <= stats["q3"] <= stats["max"]


@pytest.fixture(scope="module")
def section() -> dict[str, Any]:
    reason = web_bench.why_not()
    if reason is not None:
        pytest.skip(reason)
    pytest.importorskip("onnx", reason="the default model's site ships the split step: needs onnx")
    lines: list[str] = []
    return web_bench.measure_web(
        None, web_bench.example_photos(), REPETITIONS, lines.append, warmup=False
    )


@pytest.mark.slow
def test_the_web_section_measures_every_stage(section: dict[str, Any]) -> None:
    photos = len(web_bench.example_photos())
    assert section["browser"]["isolated"] is True
    assert section["browser"]["threads"] == web_bench.THREADS == 2
    assert section["page"]["isolated"] is True and section["page"]["threads"] >= 1
    assert section["load_seconds"] > 0 and section["load_cached_seconds"] > 0
    assert section["load_cached_files"] == len(section["browser"]["files"])
    for stage in web_bench.WEB_STAGES:
        assert section["first_caption"][stage] >= 0
    assert section["first_caption"]["caption"] > 0
    for key in ("greedy", "beam3"):
        entry = section[key]
        for stage in ("caption", "encode", "search"):
            _positive(entry["web"][stage])
            _positive(entry["python"][stage])
            assert entry["web"][stage]["n"] == photos * REPETITIONS
        assert entry["ratio"] > 0
        assert 0 < entry["ratio_range"][0] <= entry["ratio_range"][1]
    assert section["greedy"]["same_tokens"] == f"{photos}/{photos}"
    goal = section["goal"]
    assert goal["value"] == section["greedy"]["web"]["caption"]["median"]
    assert goal["target"] == "<= 0.5" and isinstance(goal["met"], bool)
    text = "\n".join(web_bench.markdown(section))
    assert "## Web: captions in Chromium" in text and "### Goal (issue 27)" in text


def test_web_is_a_bench_section() -> None:
    assert "web" in check_sections(["web"])


def test_the_goal_is_not_met_without_isolation_or_two_threads() -> None:
    stats = {"median": 0.2, "q1": 0.2, "q3": 0.2, "min": 0.2, "max": 0.2, "n": 4}
    section: dict[str, Any] = {
        "browser": {"isolated": True, "threads": 2},
        "photos": ["a.jpg"] * 4,
        "repetitions": 1,
        "greedy": {"web": {"caption": stats}, "python": {"caption": stats}, "ratio": 1.0},
    }
    assert web_bench.goal_row(section)["met"] is True
    single = copy.deepcopy(section)
    single["browser"]["threads"] = 1
    assert web_bench.goal_row(single)["met"] is False
    assert "1 thread(s)" in web_bench.goal_row(single)["detail"]
    slow = copy.deepcopy(section)
    slow["greedy"]["web"]["caption"]["median"] = 0.6
    assert web_bench.goal_row(slow)["met"] is False


def test_a_skipped_section_says_why_in_results_md() -> None:
    lines = web_bench.markdown({"skipped": "no chromium"})
    assert lines[-1].endswith("**Not run: no chromium**")

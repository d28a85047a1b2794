"""SERVE.md says plainly when the soak stopped short of its request count, and the soak's
time bound follows from that count (issue 14: the last run ended at 9,040 of 10,000).

Pure report and plan checks on results the test writes: no server, no timing.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from capgen.benchmarks.serve_load import QUICK, Plan, soak_limit_seconds
from capgen.benchmarks.serve_report import SOAK, goals, markdown


def _results(ok: int, planned: int | None, seconds: float = 390.1) -> dict[str, Any]:
    soak: dict[str, Any] = {
        "server": "capgen serve INT8, batching on, 16 clients",
        "level": {
            "clients": 16,
            "ok": ok,
            "refused_503": 0,
            "failed": 0,
            "unfinished": 16,
            "seconds": seconds,
            "throughput_rps": ok / seconds,
        },
        "rss_start_mb": 300.0,
        "rss_end_mb": 300.1,
        "rss_max_mb": 301.0,
        "rss_growth_pct": 0.04,
        "samples": [{"answers": 0, "seconds": 0.0, "rss_mb": 300.0}],
    }
    plan: dict[str, Any] = {"seconds": 6.0, "baseline_seconds": 10.0, "soak_seconds": 390.0}
    if planned is not None:  # runs from before these fields recorded only the plan
        soak.update(requests_planned=planned, limit_seconds=625.0, stopped_short=ok < planned)
        plan = {"seconds": 6.0, "baseline_seconds": 10.0, "soak_requests": planned}
    else:
        plan["soak_requests"] = 10_000
    return {
        "quick": False,
        "plan": plan,
        "machine": {"cpu": "test CPU", "logical_cores": 2},
        "model": "test model",
        "photos": 3,
        "wall_seconds": 600.0,
        "servers": {},
        "quietness": {},
        "http_overhead": None,
        "soak": soak,
    }


def _soak_goal(results: dict[str, Any]) -> dict[str, Any]:
    return next(goal for goal in goals(results) if goal["goal"] == SOAK)


def test_a_short_soak_is_said_to_have_stopped_short() -> None:
    results = _results(9_040, 10_000)
    text = markdown(results)
    soak_section = text.split("## Soak", 1)[1].split("##", 1)[0]
    assert (
        "**The soak stopped short of its request count: 9,040 of 10,000 requests answered in "
        "390 s (its time bound of 625 s; 0 failed, 16 unfinished, 0 refused), so the memory "
        "figure covers only those.**"
    ) in soak_section
    goal = _soak_goal(results)
    assert goal["met"] is None  # not judged on a short soak, however flat the memory
    assert goal["value"].startswith("the soak stopped short of its request count: 9,040 of 10,000")
    assert "- not measured: " + SOAK in text


def test_an_older_run_without_the_new_fields_is_judged_the_same_way() -> None:
    text = markdown(_results(9_040, None))
    assert "stopped short of its request count: 9,040 of 10,000" in text
    assert "its time bound of 390 s" in text


def test_a_complete_soak_has_no_warning_and_a_smaller_plan_says_so() -> None:
    complete = _results(10_000, 10_000)
    assert "stopped short" not in markdown(complete)
    assert _soak_goal(complete)["met"] is True
    small = _results(200, 200, seconds=20.0)
    text = markdown(small)
    assert "stopped short" not in text
    assert "(This run asked for 200 requests, fewer than the goal's 10,000.)" in text
    assert _soak_goal(small)["value"].startswith("this run asked for 200 requests only")


def test_the_soak_bound_leaves_room_for_its_requests() -> None:
    full = Plan()
    # The last full run answered 23.2 req/s: at that rate 10,000 requests need 431 s.
    assert soak_limit_seconds(full) >= full.soak_requests / 23.2
    assert soak_limit_seconds(full) >= 480.0
    assert soak_limit_seconds(replace(full, soak_requests=20_000)) == 20_000 / full.soak_slowest_rps
    assert soak_limit_seconds(replace(full, soak_requests=100)) == 480.0
    assert soak_limit_seconds(QUICK) == 60.0

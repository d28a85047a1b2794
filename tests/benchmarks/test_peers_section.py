"""The bench's peers section on 1 photo and 1 round: every row has its figures, absences say why.

The section's precision-mode costs (benchmarks/mode_costs.py) run too; their own
checks are in test_mode_costs.py, on the same run (conftest's `peers_run`, once
per xdist worker, both tests in one xdist group), here only that they are part
of the section.

No timing is asserted (the machine is shared): only that each row exists with
a positive median, a cosine against Keras and a caption agreement, that the
capgen fp32 row is the reference (it agrees with itself), and that an engine
that cannot be imported is listed with its reason instead of failing the run.
LiteRT is blocked in that run the way a missing package is seen (None in
sys.modules: find_spec answers "not installed"), which also keeps its
minute-long conversions out of the test.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
from bench_shared import SHARES_PEERS_RUN, PeersRun


@SHARES_PEERS_RUN
@pytest.mark.convert
@pytest.mark.slow
def test_peers_rows_and_absent_engines(tensorflow_stack: None, peers_run: PeersRun) -> None:
    from capgen.benchmarks import goals, peers

    section, messages = peers_run.section, peers_run.messages
    rows: dict[str, Any] = section["rows"]
    expected = {"onnxruntime_fp32", "onnxruntime_int8", "capgen_fp32", "capgen_int8"}
    if importlib.util.find_spec("openvino") is not None:
        expected |= {"openvino_f32", "openvino_default", "openvino_int8"}
    assert expected <= set(rows)
    for name, row in rows.items():
        assert row["ms"]["n"] == 1 and row["ms"]["median"] > 0, name
        assert 0.9 < row["cosine_vs_keras"]["min"] <= 1.0 + 1e-6, name
        assert row["identical"] in (0, 1) and row["identical_share"] == row["identical"], name
        assert row["note"], name
    # The reference agrees with itself; FP32 on onnxruntime is Keras's Xception to ~1e-6.
    assert rows["capgen_fp32"]["identical_share"] == 1.0
    assert rows["onnxruntime_fp32"]["cosine_vs_keras"]["min"] > 0.9999

    absent = section["absent"]
    for name in ("litert_fp32", "litert_dynamic_int8", "litert_full_int8"):
        assert "ai-edge-litert is not installed" in absent[name]["reason"]
        assert name not in rows
    # One photo is too few to tune `auto` on: said, not crashed.
    assert "at least 10 photos" in absent["capgen_auto"]["reason"]
    assert any("litert_fp32: left out" in line for line in messages)

    lines = peers.markdown(section)
    modes_at = next(i for i, line in enumerate(lines) if line.startswith("## Precision modes"))
    table = [line for line in lines[:modes_at] if line.startswith("| ") and "---" not in line]
    assert table[0].startswith("| engine | median ms")
    assert len(table) == 1 + len(rows)
    for row in rows.values():
        assert any(line.startswith(f"| {row['label']} |") for line in table)
    not_run = sum(line.startswith("- not run: ") for line in lines)
    assert not_run == len(absent) + len(section["mode_costs"]["absent"])

    # The precision modes' cold start runs in the same section, after the arms; auto's
    # absence carries the peers table's reason (no decision was tuned on one photo).
    costs = section["mode_costs"]
    assert {"fp32", "int8"} <= set(costs["modes"])
    assert costs["absent"]["auto"] == absent["capgen_auto"]["reason"]
    assert costs["modes"]["fp32"]["cold"]["wall_seconds"]["n"] == 1
    assert any(line.startswith("| mode | runs as | cold start s") for line in lines)
    assert any(line.startswith("- not run: `--precision auto`: ") for line in lines)

    found = goals.goal_rows(section, None, None)
    for key in ("encoder_best", "encoder_int8"):
        assert found[key]["value"] is not None and found[key]["value"] > 0
        assert found[key]["met"] == (found[key]["value"] <= 1.0)


def test_goal_rows_pick_the_fastest_accurate_rows_and_say_what_is_missing() -> None:
    from capgen.benchmarks.goals import goal_rows

    def row(ms: float, share: float, kind: str, peer: bool) -> dict[str, Any]:
        return {"label": f"{kind}-{ms}", "ms": {"median": ms}, "identical_share": share, "kind": kind, "peer": peer}  # fmt: skip

    section = {
        "rows": {
            "a": row(70.0, 1.0, "fp32", False),
            "b": row(20.0, 0.5, "int8", False),  # fast but not accurate enough
            "c": row(30.0, 1.0, "bf16", False),
            "d": row(25.0, 1.0, "bf16", True),
            "e": row(10.0, 0.9, "int8", True),
        }
    }
    found = goal_rows(section, {"error": "no tutorial"}, None)
    assert found["encoder_best"]["value"] == pytest.approx(30.0 / 25.0)
    assert not found["encoder_best"]["met"]
    assert found["encoder_int8"]["value"] == pytest.approx(20.0 / 10.0)
    assert (
        found["warm_latency"]["value"] is None and "no tutorial" in found["warm_latency"]["detail"]
    )
    assert not found["warm_latency"]["met"]


def test_an_unknown_section_is_one_line() -> None:
    from capgen.benchmarks.run import SECTIONS, check_sections
    from capgen.runtime.errors import InputError

    assert check_sections(None) == set(SECTIONS)
    assert check_sections(["peers"]) == {"peers"}
    with pytest.raises(InputError, match="unknown bench section peer; sections: tutorial"):
        check_sections(["peer"])


def test_many_cores_script_refuses_bad_input_in_one_line(tmp_path: Path) -> None:
    """Runnable by path from any checkout or wheel: its usage errors are one line and exit 2."""
    import subprocess

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "many_cores.py"
    taken = tmp_path / "taken.json"
    taken.write_text("{}")
    for extra, message in (
        (["--cores", "0"], "--cores must be from 1 to"),
        (["--json", str(taken)], "exists; give a new file"),
    ):
        done = subprocess.run(
            [
                sys.executable,
                str(script),
                "--model",
                str(tmp_path),
                "--photos",
                str(tmp_path),
                *extra,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 2, done.stderr
        assert message in done.stderr and "Traceback" not in done.stderr
    assert taken.read_text() == "{}"

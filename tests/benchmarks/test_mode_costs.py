"""Each `--precision` mode's cold start, memory, first and warm caption (benchmarks/mode_costs.py).

No timing is asserted (the machine is shared): the smoke run (1 photo, 1 round)
checks that every mode that can run here has every figure, that the figures
are consistent with each other (the load is part of the cold start; the one
cold caption was parsed from `-v`; what ran is the mode asked for), that the
table has one row per mode, and that a mode that cannot run is reported with
its reason. The sentence the docs print is checked on made-up numbers, where
the answer is known.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from bench_shared import SHARES_PEERS_RUN, PeersRun

from capgen.benchmarks import mode_costs


@pytest.fixture
def without_openvino(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """OpenVINO as a machine without it sees it: `import openvino` fails (None in sys.modules)."""
    from capgen.runtime import engines

    cached = (engines._openvino_module, engines.bf16_supported, engines._core)
    for function in cached:
        function.cache_clear()
    monkeypatch.setitem(sys.modules, "openvino", None)
    yield
    monkeypatch.undo()
    for function in cached:
        function.cache_clear()


def _runnable(manifest: Any, mode: str) -> bool:
    from capgen.runtime.errors import CapgenError
    from capgen.runtime.precision import mode_plan

    try:
        mode_plan(manifest, mode)
    except CapgenError:
        return False
    return True


@SHARES_PEERS_RUN
@pytest.mark.slow
def test_every_mode_has_its_costs_and_an_absent_mode_its_reason(
    default_model: Path, peers_run: PeersRun
) -> None:
    """The modes' costs as the peers section measures them (1 photo, 1 round), from the same
    run test_peers_section.py checks (conftest's `peers_run`): running them once more alone
    would start the same dozen processes again. `auto` is absent there with the reason the
    section gives it (one photo is too few to tune on)."""
    from capgen.runtime.manifest import load_manifest

    manifest = load_manifest(default_model)
    messages = peers_run.messages
    section = peers_run.section["mode_costs"]
    assert "error" not in section, section.get("error")
    assert section["photos"] == 1 and section["rounds"] == 1

    expected = [m for m in ("fp32", "bf16", "int8") if _runnable(manifest, m)]
    assert "fp32" in expected
    assert list(section["modes"]) == expected
    assert section["absent"]["auto"] == "capgen tune needs at least 10 photos; this run has 1"
    assert any("auto left out (capgen tune needs" in line for line in messages)
    for mode in ("bf16", "int8"):  # what cannot run here says why, in mode_plan's words
        assert (mode in section["modes"]) != (mode in section["absent"]), mode
    for mode, entry in section["modes"].items():
        cold, warm = entry["cold"], entry["warm"]
        assert cold["wall_seconds"]["n"] == 1, mode
        assert 0 < cold["load_seconds"]["median"] < cold["wall_seconds"]["median"], mode
        assert cold["first_caption_ms"]["median"] > 0, mode
        assert cold["peak_rss_mb"]["median"] > 50, mode  # a real process, not the launcher's
        assert cold["runs_as"].startswith(f"precision {mode}:"), cold["runs_as"]
        assert warm["caption_ms"]["n"] == 1 and warm["caption_ms"]["median"] > 0, mode
        assert warm["first_caption_ms"] > 0 and warm["load_seconds"] > 0, mode
        assert warm["peak_rss_mb"] > 50, mode
        even = entry["break_even"]
        if mode == "fp32":
            assert even == {"extra_seconds": None, "saving_ms": None, "photos": None}
        else:
            assert even["extra_seconds"] is not None and even["saving_ms"] is not None
            assert (even["photos"] is None) == (even["saving_ms"] <= 0), mode

    lines = mode_costs.markdown(section)
    table = [line for line in lines if line.startswith("| ") and "---" not in line]
    assert table[0].startswith("| mode | runs as | cold start s")
    assert [row.split(" | ")[0] for row in table[1:]] == [f"| {mode}" for mode in expected]
    assert "- not run: `--precision auto`: capgen tune needs at least 10 photos" in lines[-1]
    assert any(
        line.startswith("For one-shot captions (`capgen caption photo.jpg`)") for line in lines
    )


def test_an_unavailable_mode_is_reported_with_its_reason(
    default_model: Path, without_openvino: None
) -> None:
    """bf16 without OpenVINO, int8 without an INT8 graph, auto without a tuned decision."""
    from capgen.runtime.manifest import load_manifest

    manifest = load_manifest(default_model)
    no_int8 = replace(manifest, encoder=replace(manifest.encoder, int8_file=None))
    absent = mode_costs.mode_absences(no_int8, "no decision: tuned on too few photos")
    assert set(absent) == {"bf16", "int8", "auto"}
    assert "OpenVINO, which is not installed: pip install 'capgen[openvino]'" in absent["bf16"]
    assert "no INT8 encoder" in absent["int8"] and "capgen convert quantize" in absent["int8"]
    assert absent["auto"] == "no decision: tuned on too few photos"
    assert "fp32" not in absent


def _mode(cold_s: float, load_s: float, warm_ms: float) -> dict[str, Any]:
    def stats(value: float) -> dict[str, float]:
        return {"median": value, "q1": value, "q3": value, "min": value, "max": value, "n": 1}

    return {
        "cold": {
            "wall_seconds": stats(cold_s),
            "load_seconds": stats(load_s),
            "first_caption_ms": stats(warm_ms * 1.5),
            "peak_rss_mb": stats(200.0),
            "runs_as": "precision …",
        },
        "warm": {"caption_ms": stats(warm_ms), "peak_rss_mb": 210.0},
    }


def test_the_sentence_says_which_modes_suit_one_shot_captions_and_which_serve() -> None:
    modes = {
        "fp32": _mode(0.60, 0.25, 130.0),
        "bf16": _mode(1.60, 1.20, 80.0),  # +1.0 s to start, 50 ms saved a photo: 20 photos
        "int8": _mode(0.55, 0.20, 60.0),  # starts sooner and runs faster: from the first photo
        "auto": _mode(0.70, 0.30, 140.0),  # slower once warm: never pays back
    }
    for mode in modes:
        modes[mode]["break_even"] = mode_costs.break_even(modes, mode)
    assert modes["bf16"]["break_even"]["photos"] == 20
    assert modes["int8"]["break_even"]["photos"] == 1
    assert modes["auto"]["break_even"]["photos"] is None
    section = {
        "modes": modes,
        "absent": {},
        "rounds": 3,
        "photos": 12,
        "photo": "x.jpg",
        "command": "capgen caption PHOTO --precision MODE --beam-size 1 -v",
    }
    text = mode_costs.verdict(section)
    assert "int8 starts quickest (0.55 s for one photo)" in text
    assert "int8 captions fastest (60 ms a photo)" in text
    assert "bf16 loads in 1.20 s (fp32 0.25 s), +1.00 s of cold start against fp32" in text
    assert "worth it after about 20 photos in one process" in text
    assert "int8 loads in 0.20 s (fp32 0.25 s), -0.05 s" in text
    assert "worth it from the first photo, one-shot captions included" in text
    assert "auto loads in 0.30 s (fp32 0.25 s), +0.10 s of cold start against fp32, and is not faster once warm" in text  # fmt: skip
    rows = [line for line in mode_costs.markdown(section) if line.startswith("| bf16 |")]
    assert rows and rows[0].endswith("| 200 / 210 | after about 20 photos |")


def test_parse_verbose_reads_the_cli_lines() -> None:
    stderr = (
        "capgen: model default (7318 words) from /m: encoder.onnx; CPUExecutionProvider; "
        "precision auto → bf16: encoder.onnx on openvino 2026.4.1 (bf16); loaded in 0.69 s\n"
        "capgen: /p.jpg: preprocess 4.7 ms, encode 92.3 ms, decode 3.1 ms, total 100.1 ms\n"
        "capgen: 1 image(s) captioned in 0.10 s (100.9 ms per image); 0.77 s since the command started\n"
    )
    assert mode_costs.parse_verbose(stderr) == {
        "load_seconds": 0.69,
        "caption_ms": 100.9,
        "runs_as": "precision auto → bf16: encoder.onnx on openvino 2026.4.1 (bf16)",
    }
    assert mode_costs.parse_verbose("nothing verbose\n") == {}


def test_results_md_and_the_docs_carry_the_table_and_its_sentence() -> None:
    """Both generators print it from results.json's peers entry, one heading level apart."""
    from capgen.benchmarks import docs_figures, goals
    from capgen.benchmarks.peers import markdown
    from capgen.benchmarks.report import _peers_markdown

    modes = {"fp32": _mode(0.60, 0.25, 130.0), "bf16": _mode(1.60, 1.20, 80.0)}
    for mode in modes:
        modes[mode]["break_even"] = mode_costs.break_even(modes, mode)
    costs = {
        "modes": modes,
        "absent": {"int8": "this model has no INT8 encoder"},
        "rounds": 3,
        "photos": 12,
        "photo": "x.jpg",
        "command": "capgen caption PHOTO --precision MODE --beam-size 1 -v",
    }
    row = {"label": "capgen --precision fp32", "ms": {"median": 70.0, "q1": 69.0, "q3": 71.0},
           "identical": 1, "identical_share": 1.0, "kind": "fp32", "peer": False, "note": "n"}  # fmt: skip
    peers = {"encoder_kind": "xception", "photos": ["x.jpg"], "rounds": 1, "threads": 2,
             "rows": {"capgen_fp32": row}, "absent": {}, "keras": {}, "mode_costs": costs}  # fmt: skip
    section = {"run": {"date": "2026-12-05T00:00"}, "peers": peers,
               "goals": goals.goal_rows(peers, None, None)}  # fmt: skip
    docs = docs_figures.peers({"peers": section}).splitlines()
    results_md = _peers_markdown({"peers": section})
    sentence = mode_costs.verdict(costs)
    assert "worth it after about 20 photos in one process" in sentence
    for lines, heading in ((docs, "### Precision modes"), (results_md, "## Precision modes")):
        assert any(line.startswith(heading) for line in lines)
        assert sentence in lines
        assert any(line.startswith("| bf16 | precision … | 1.60 (1.60–1.60) | 1.20 |") for line in lines)  # fmt: skip
        assert "- not run: `--precision int8`: this model has no INT8 encoder" in lines
    failed = dict(peers, mode_costs={"error": "capgen caption -v printed no load_seconds"})
    assert any("not measured: capgen caption -v printed no" in line for line in markdown(failed))


def test_a_mode_whose_process_fails_is_left_out_with_its_last_words(tmp_path: Path) -> None:
    """An engine that refuses the graph at load fails its untimed run, alone, with the reason."""
    import os

    def command(mode: str) -> list[str]:
        code = "import sys; sys.exit('capgen: OpenVINO cannot run this graph')" if mode == "bf16" else "pass"  # fmt: skip
        return [sys.executable, "-c", code]

    failed = mode_costs._untimed(["fp32", "bf16"], command, tmp_path, dict(os.environ))
    assert failed == {
        "bf16": "capgen caption --precision bf16 failed: capgen: OpenVINO cannot run this graph"
    }

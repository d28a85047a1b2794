"""The docs' benchmark figures are what the committed results generate (issue 26 item 10).

Every figure the README, docs/benchmarks.md and docs/convert.md quote sits in a
marked block that benchmarks/docs_figures.py writes from
benchmarks/results/results.json; a hand edit, or results committed without
regenerating the docs, fails here.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from capgen.benchmarks import docs_figures

REPO = Path(__file__).resolve().parents[2]


def _results() -> dict:
    return json.loads(docs_figures.RESULTS.read_text())


@pytest.mark.parametrize("name", sorted(docs_figures.DOCS))
def test_committed_docs_equal_what_the_committed_results_generate(name: str) -> None:
    text = (REPO / name).read_text()
    assert tuple(docs_figures.block_names(text)) == docs_figures.DOCS[name]
    assert docs_figures.render(text, _results()) == text, (
        f"{name} is out of date with benchmarks/results/results.json: "
        "run `python benchmarks/docs_figures.py --write`"
    )


def test_a_changed_result_changes_the_docs_figures() -> None:
    """The blocks really come from the results: another cold-start median, another text."""
    results = _results()
    changed = copy.deepcopy(results)
    changed["models"]["tutorial7577"]["cold_start"]["wall_seconds"]["capgen"]["median"] = 1.234
    changed["encoder_kinds"]["xception"]["ms"]["fp32"]["median"] = 999.0
    for name in ("README.md", "docs/benchmarks.md"):
        text = (REPO / name).read_text()
        fresh = docs_figures.render(text, changed)
        assert fresh != text and "1.23 s" in fresh
    convert = (REPO / "docs/convert.md").read_text()
    row = next(
        line
        for line in docs_figures.render(convert, changed).splitlines()
        if line.startswith("| `xception`")
    )
    assert row.endswith("| 999 / 50 |")


def test_the_encoder_kinds_table_and_convert_md_agree_with_results_json() -> None:
    """The disagreement issue 26 found: convert.md's 156 / 70 ms against results.json's 130.5 / 49.8."""
    kinds = _results()["encoder_kinds"]
    convert = (REPO / "docs/convert.md").read_text()
    for kind, entry in kinds.items():
        row = next(line for line in convert.splitlines() if line.startswith(f"| `{kind}` |"))
        fp32, int8 = (round(entry["ms"][arm]["median"]) for arm in ("fp32", "int8"))
        assert row.endswith(f"| {fp32} / {int8} |")


def test_an_unknown_block_is_an_error() -> None:
    text = "<!-- figures: nonsense (x) -->\nold\n<!-- end figures: nonsense -->\n"
    with pytest.raises(ValueError, match="nonsense"):
        docs_figures.render(text, _results())


def test_the_chart_stacks_to_the_median_wall_time() -> None:
    """The chart's bars end where the measured cold starts do (it said 13.65 s for 14.64 s)."""
    from capgen.benchmarks.report import _stage_rows

    results = _results()
    for label, stages in _stage_rows(results).items():
        arm = "baseline" if label.startswith("tutorial") else "capgen"
        model = label.split("\n")[1]
        wall = results["models"][model]["cold_start"]["wall_seconds"][arm]["median"]
        assert sum(stages.values()) == pytest.approx(wall)

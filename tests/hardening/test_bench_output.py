"""`capgen bench --output DIR` replaces only the result files it wrote there, and says so first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import Run, assert_one_line_error

from capgen.benchmarks.results_folder import REGISTER, ResultsFolder
from capgen.cli_support.exit_codes import ExitCode
from capgen.runtime.errors import InputError


def test_a_users_own_results_file_stops_the_run_before_it_starts(
    run: Run, tmp_path: Path, shared_data: Path
) -> None:
    (tmp_path / "RESULTS.md").write_text("my own notes\n")
    done = run("bench", "--output", tmp_path, timeout=300)
    assert_one_line_error(done, ExitCode.USAGE, "RESULTS.md", "capgen did not write it")
    assert (tmp_path / "RESULTS.md").read_text() == "my own notes\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RESULTS.md"]


def test_a_link_in_place_of_a_result_is_refused(
    run: Run, tmp_path: Path, shared_data: Path
) -> None:
    victim = tmp_path / "victim.json"
    victim.write_text("{}")
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").symlink_to(victim)
    done = run("bench", "--output", out, timeout=300)
    assert_one_line_error(done, ExitCode.USAGE, "results.json", "link")
    assert victim.read_text() == "{}"


def test_files_capgen_wrote_are_replaced_and_others_are_not(tmp_path: Path) -> None:
    folder = ResultsFolder(tmp_path)
    folder.write_text("serve.json", "1")
    folder.write_text("serve.json", "2")  # registered: replaced
    assert (tmp_path / "serve.json").read_text() == "2"
    register = json.loads((tmp_path / REGISTER).read_text())
    assert list(register["files"]) == ["serve.json"]  # with its sha256 (issue 24)
    folder.write_with("chart.png", lambda path: path.write_bytes(b"png"))
    assert (tmp_path / "chart.png").read_bytes() == b"png"
    (tmp_path / "notes.md").write_text("mine")
    with pytest.raises(InputError, match="capgen did not write it"):
        folder.write_text("notes.md", "overwritten")
    assert (tmp_path / "notes.md").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") and p.name != REGISTER]

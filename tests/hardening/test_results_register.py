"""Issue 24, finding 10: a results register vouches only for bytes capgen wrote.

A crafted or copied `.capgen-results.json` beside a user's RESULTS.md let
`capgen bench --output` replace it: the register was a list of names. It now
records each file's sha256, a file is replaced only while its bytes match,
and a register that is not exactly what capgen writes counts as nothing.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from cli_helpers import Run, assert_one_line_error

from capgen.benchmarks.results_folder import REGISTER, ResultsFolder
from capgen.cli_support.exit_codes import ExitCode
from capgen.runtime.errors import InputError

MINE = "# my own results\n"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _registers_claiming_results_md() -> dict[str, str]:
    """Registers that name RESULTS.md without capgen having written the file beside them."""
    return {
        "list (the old format)": json.dumps({"files": ["RESULTS.md"]}, indent=1) + "\n",
        "list, other spacing": json.dumps({"files": ["RESULTS.md"]}),
        "wrong checksum": json.dumps(
            {"format": "capgen-results", "version": 2, "files": {"RESULTS.md": "0" * 64}},
            indent=1,
        )
        + "\n",
        "right checksum, not capgen's bytes": json.dumps(
            {"files": {"RESULTS.md": _sha(MINE)}, "format": "capgen-results", "version": 2}
        ),
    }


@pytest.mark.parametrize("label", list(_registers_claiming_results_md()))
def test_a_crafted_register_never_lets_a_users_file_be_replaced(tmp_path: Path, label: str) -> None:
    (tmp_path / "RESULTS.md").write_text(MINE)
    (tmp_path / REGISTER).write_text(_registers_claiming_results_md()[label])
    folder = ResultsFolder(tmp_path)
    with pytest.raises(InputError, match=r"RESULTS\.md|not a register capgen wrote"):
        folder.check(["RESULTS.md"])
    with pytest.raises(InputError):
        folder.write_text("RESULTS.md", "capgen's table\n")
    assert (tmp_path / "RESULTS.md").read_text() == MINE


def test_a_copied_register_vouches_for_nothing_the_user_rewrote(tmp_path: Path) -> None:
    ours = tmp_path / "ours"
    ResultsFolder(ours).write_text("RESULTS.md", "capgen's table\n")
    copy = tmp_path / "copy"
    shutil.copytree(ours, copy)
    (copy / "RESULTS.md").write_text(MINE)  # the user's own file, under the copied register
    with pytest.raises(InputError, match="changed since"):
        ResultsFolder(copy).check(["RESULTS.md"])
    ResultsFolder(ours).write_text("RESULTS.md", "capgen's second table\n")  # unchanged: replaced
    assert (ours / "RESULTS.md").read_text() == "capgen's second table\n"


def test_a_register_capgen_did_not_write_is_not_replaced_either(tmp_path: Path) -> None:
    (tmp_path / REGISTER).write_text('{"my": "own json"}\n')
    with pytest.raises(InputError, match="not a register capgen wrote"):
        ResultsFolder(tmp_path).write_text("results.json", "{}")
    assert (tmp_path / REGISTER).read_text() == '{"my": "own json"}\n'
    assert not (tmp_path / "results.json").exists()


def test_cli_crafted_register_beside_results_md(
    run: Run, tmp_path: Path, shared_data: Path
) -> None:
    (tmp_path / "RESULTS.md").write_text(MINE)
    (tmp_path / REGISTER).write_text(json.dumps({"files": ["RESULTS.md"]}, indent=1) + "\n")
    done = run("bench", "--output", tmp_path, timeout=300)
    assert_one_line_error(done, ExitCode.USAGE, "RESULTS.md")
    assert (tmp_path / "RESULTS.md").read_text() == MINE

"""Small things a newcomer hits first (issue 11, "First contact"), through the real console script."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from capgen_cli import assert_one_line_error
from capgen_cli import capgen as run_capgen
from PIL import Image
from tiny_model import TinyModel, write_tiny_model

from capgen.cli_support.exit_codes import ExitCode

# Not `from conftest import …`: with several test folders in one run, "conftest" is whichever folder's loaded last.
CAPGEN_SCRIPT = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "capgen"
pytestmark = pytest.mark.skipif(
    not CAPGEN_SCRIPT.exists(), reason=f"console script {CAPGEN_SCRIPT} not installed"
)


def capgen(
    *args: str | Path, cwd: Path, stdin: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`capgen ARGS` in `cwd` (in-process unless marked `subprocess`: tests/capgen_cli.py), as text."""
    data = stdin.read_bytes() if stdin is not None else None
    done = run_capgen(*args, cwd=cwd, input=data, timeout=120)
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    rng = np.random.default_rng(11)
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(path)
    return path


def test_a_caption_cut_at_max_length_is_marked_in_plain_output(
    tiny_model: TinyModel, photo: Path, tmp_path: Path
) -> None:
    model = ("-m", tiny_model.folder, "-b", "1")
    cut = json.loads(
        capgen("caption", *model, "--max-length", "1", "--json", photo, cwd=tmp_path).stdout
    )
    assert cut["finished"] is False
    plain = capgen("caption", *model, "--max-length", "1", photo, cwd=tmp_path)
    assert plain.stdout == f"{cut['caption']} [max length reached]\n"
    raw = capgen("caption", *model, "--max-length", "1", "--raw", photo, cwd=tmp_path)
    assert "[max length reached]" not in raw.stdout  # the tutorial's exact string
    whole = json.loads(capgen("caption", *model, "--json", photo, cwd=tmp_path).stdout)
    if whole["finished"]:
        assert capgen("caption", *model, photo, cwd=tmp_path).stdout == whole["caption"] + "\n"


def test_n_best_without_json_is_refused_and_honoured_with_it(
    tiny_model: TinyModel, photo: Path, tmp_path: Path
) -> None:
    refused = capgen("caption", "-m", tiny_model.folder, "--n-best", "2", photo, cwd=tmp_path)
    assert "--n-best" in assert_one_line_error(refused, ExitCode.USAGE)
    assert refused.stdout == ""
    shown = capgen(
        "caption", "-m", tiny_model.folder, "--n-best", "2", "--json", photo, cwd=tmp_path
    )
    assert shown.returncode == 0, shown.stderr
    assert len(json.loads(shown.stdout)["alternatives"]) == 1


def test_int8_without_an_int8_encoder_says_to_quantize(photo: Path, tmp_path: Path) -> None:
    folder = write_tiny_model(tmp_path / "plain").folder  # no encoder.int8.onnx
    result = capgen("caption", "-m", folder, "--int8", photo, cwd=tmp_path)
    line = assert_one_line_error(result, ExitCode.MODEL)
    assert "no INT8 encoder" in line and f"capgen convert quantize {folder}" in line


def test_dash_reads_one_image_from_standard_input(
    tiny_model: TinyModel, photo: Path, tmp_path: Path
) -> None:
    by_path = capgen("caption", "-m", tiny_model.folder, photo, cwd=tmp_path)
    by_stdin = capgen("caption", "-m", tiny_model.folder, "-", cwd=tmp_path, stdin=photo)
    assert by_stdin.returncode == 0, by_stdin.stderr
    assert by_stdin.stdout == by_path.stdout and by_path.stdout.strip()
    both = capgen("caption", "-m", tiny_model.folder, "-", photo, cwd=tmp_path, stdin=photo)
    assert both.stdout.splitlines() == [
        f"-\t{by_path.stdout.strip()}",
        f"{photo}\t{by_path.stdout.strip()}",
    ]
    twice = capgen("caption", "-m", tiny_model.folder, "-", "-", cwd=tmp_path, stdin=photo)
    assert "only once" in assert_one_line_error(twice, ExitCode.USAGE)
    annotate = capgen(
        "caption",
        "-m",
        tiny_model.folder,
        "-",
        "--annotate",
        tmp_path / "out",
        cwd=tmp_path,
        stdin=photo,
    )
    assert "--annotate" in assert_one_line_error(annotate, ExitCode.USAGE)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("typed", "meant"), [("captoin", "caption"), ("infoo", "info"), ("setpu", "setup")]
)
def test_a_mistyped_command_gets_a_suggestion_not_an_image_error(
    tmp_path: Path, typed: str, meant: str
) -> None:
    line = assert_one_line_error(capgen(typed, "x.jpg", cwd=tmp_path), ExitCode.USAGE)
    assert f"did you mean '{meant}'?" in line


def test_an_image_path_first_is_still_the_tutorials_habit(
    tiny_model: TinyModel, tmp_path: Path, photo: Path
) -> None:
    named = tmp_path / "captoin"  # an existing file is a path, however it is spelled
    named.write_bytes(photo.read_bytes())
    result = capgen("captoin", "-m", tiny_model.folder, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_help_texts_quote_the_extra_hide_internals_and_explain_the_beam_default(
    tmp_path: Path,
) -> None:
    quantize = capgen("convert", "quantize", "--help", cwd=tmp_path).stdout
    assert "pip install 'capgen[convert]'" in quantize
    assert "--scenes" not in quantize and "Captioner(" not in quantize
    caption = " ".join(capgen("caption", "--help", cwd=tmp_path).stdout.split())
    assert "default 3" in caption and "greedy" in caption and "-b 1" in caption
    assert "[max length reached]" in caption


HELP_PAGES = (
    (),
    ("caption",),
    ("info",),
    ("models",),
    ("setup",),
    ("convert",),
    ("convert", "model"),
    ("convert", "quantize"),
)


@pytest.mark.parametrize("page", HELP_PAGES, ids=lambda page: " ".join(page) or "capgen")
def test_every_pip_install_in_help_names_its_extra_quoted(
    page: tuple[str, ...], tmp_path: Path
) -> None:
    """Rich reads `[convert-decoder]` as markup and drops it: 'capgen' alone is the wrong advice."""
    text = " ".join(capgen(*page, "--help", cwd=tmp_path).stdout.split())
    assert "pip install 'capgen'" not in text
    for advice in re.findall(r"pip install (\S+)", text):
        if "capgen" in advice:
            assert re.fullmatch(r"'capgen\[[a-z-]+\]'[);.,]*", advice), advice

"""`capgen caption -q/--quiet` and `-v/--verbose` (issue 11, first contact), and the light runtime path (issue 14)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from capgen_cli import capgen
from PIL import Image
from tiny_model import TinyModel

CAPGEN_SCRIPT = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "capgen"
pytestmark = pytest.mark.skipif(
    not CAPGEN_SCRIPT.exists(), reason=f"console script {CAPGEN_SCRIPT} not installed"
)


def run(*args: str | Path, home: Path) -> subprocess.CompletedProcess[bytes]:
    """`capgen ARGS`, in-process unless the test is marked `subprocess` (tests/capgen_cli.py)."""
    return capgen(*args, env={**os.environ, "CAPGEN_HOME": str(home)})


@pytest.fixture()
def photos(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(3)
    paths = []
    for index in range(2):
        path = tmp_path / f"p{index}.png"
        Image.fromarray((rng.random((30, 40, 3)) * 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture()
def demo_home(tmp_path: Path, tiny_model: TinyModel) -> Path:
    """A CAPGEN_HOME whose default model is marked as the demonstration (so captions come with a note)."""
    home = tmp_path / "home"
    default = home / "models" / "default"
    shutil.copytree(tiny_model.folder, default)
    manifest = json.loads((default / "manifest.json").read_text())
    (default / "manifest.json").write_text(json.dumps({**manifest, "demonstration": True}))
    return home


def test_quiet_drops_the_note_and_keeps_the_captions(demo_home: Path, photos: list[Path]) -> None:
    normal = run("caption", *photos, home=demo_home)
    assert normal.returncode == 0 and b"note:" in normal.stderr
    for flag in ("-q", "--quiet"):
        quiet = run("caption", flag, *photos, home=demo_home)
        assert quiet.returncode == 0, quiet.stderr
        assert quiet.stderr == b""
        assert quiet.stdout == normal.stdout and len(quiet.stdout.splitlines()) == 2


def test_quiet_keeps_errors(demo_home: Path, photos: list[Path], tmp_path: Path) -> None:
    done = run("caption", "-q", photos[0], tmp_path / "missing.jpg", home=demo_home)
    assert done.returncode == 1
    assert b"note:" not in done.stderr
    assert done.stderr.count(b"\n") == 1 and b"missing.jpg" in done.stderr
    assert len(done.stdout.splitlines()) == 1


def test_tutorial_form_takes_quiet_too(demo_home: Path, photos: list[Path]) -> None:
    """`capgen -q photo.jpg` is `capgen caption -q photo.jpg`, like `capgen -i photo.jpg`."""
    done = run("-q", photos[0], home=demo_home)
    assert done.returncode == 0 and done.stderr == b"" and done.stdout.strip()


def test_verbose_says_what_runs_and_where_time_goes(
    demo_home: Path, photos: list[Path], tiny_model: TinyModel
) -> None:
    normal = run("caption", "-m", tiny_model.folder, *photos, home=demo_home)
    for flag in ("-v", "--verbose"):
        done = run("caption", flag, "-m", tiny_model.folder, *photos, home=demo_home)
        assert done.returncode == 0, done.stderr
        assert done.stdout == normal.stdout  # stdout is the same at every verbosity
        lines = done.stderr.decode().splitlines()
        assert any("encoder.onnx" in line and "loaded in" in line for line in lines), lines
        for photo in photos:
            timing = [line for line in lines if str(photo) in line]
            assert len(timing) == 1 and "encode" in timing[0] and "decode" in timing[0], lines
        assert any("2 image(s) captioned" in line for line in lines), lines


def test_verbose_names_the_int8_files(
    photos: list[Path], tiny_model: TinyModel, tmp_path: Path
) -> None:
    done = run("caption", "-v", "--int8", "-m", tiny_model.folder, photos[0], home=tmp_path / "h")
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tiny_model.folder / "manifest.json").read_text())
    assert manifest["encoder"]["int8_file"] in done.stderr.decode()


def test_quiet_and_verbose_together_is_a_usage_error(demo_home: Path, photos: list[Path]) -> None:
    done = run("caption", "-q", "-v", photos[0], home=demo_home)
    assert done.returncode == 2 and done.stdout == b""
    assert done.stderr.startswith(b"capgen: error:") and done.stderr.count(b"\n") == 1
    assert b"--quiet" in done.stderr and b"--verbose" in done.stderr


def test_help_documents_both(tmp_path: Path) -> None:
    done = run("caption", "--help", home=tmp_path / "h")
    text = done.stdout.decode()
    assert done.returncode == 0
    for option in ("--quiet", "-q", "--verbose", "-v"):
        assert option in text, text


def test_root_help_lists_every_command(tmp_path: Path) -> None:
    """The root's help lists every command, though `capgen caption` imports none of the others
    (tests/runtime/test_cold_start_imports.py)."""
    whole = run("--help", home=tmp_path / "h").stdout.decode()
    for command in ("convert", "setup", "bench", "serve", "models"):
        assert command in whole  # the root's help still lists every command

"""The real `capgen` console script: output formats, exit codes, failures, crashes and resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from capgen_cli import capgen
from PIL import Image
from tiny_model import TinyModel

# Not `from conftest import …`: with several test folders in one run, "conftest" is whichever folder's loaded last.
CAPGEN_SCRIPT = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "capgen"
pytestmark = pytest.mark.skipif(
    not CAPGEN_SCRIPT.exists(), reason=f"console script {CAPGEN_SCRIPT} not installed"
)


def run(*args: str | Path, home: Path, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    """`capgen ARGS`, in-process unless the test is marked `subprocess` (tests/capgen_cli.py)."""
    return capgen(*args, env={**os.environ, "CAPGEN_HOME": str(home)}, timeout=timeout)


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture()
def photos(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for index in range(3):
        path = folder / f"p{index}.jpg"
        Image.fromarray((rng.random((40, 50, 3)) * 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def _no_traceback(done: subprocess.CompletedProcess[bytes]) -> None:
    assert b"Traceback" not in done.stderr, done.stderr.decode(errors="replace")


def test_one_image_prints_just_its_caption(
    tiny_model: TinyModel, photos: list[Path], home: Path
) -> None:
    done = run("caption", "--model", tiny_model.folder, photos[0], home=home)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert len(lines) == 1 and "\t" not in lines[0] and lines[0]
    raw = run("-i", photos[0], "--model", tiny_model.folder, "--raw", "--beam-size", "1", home=home)
    assert raw.returncode == 0 and raw.stdout.decode().startswith("start ")


def test_folder_expands_to_sorted_images_with_paths(
    tiny_model: TinyModel, photos: list[Path], home: Path
) -> None:
    (photos[0].parent / "notes.txt").write_text("not an image, and not picked up from a folder")
    done = run("caption", "-m", tiny_model.folder, photos[0].parent, home=home)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(p) for p in photos]
    globbed = run("caption", "-m", tiny_model.folder, str(photos[0].parent / "p*.jpg"), home=home)
    assert globbed.stdout == done.stdout


def test_a_folder_without_images_is_reported(
    tiny_model: TinyModel, photos: list[Path], home: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    done = run("caption", "-m", tiny_model.folder, empty, photos[0], home=home)
    assert done.returncode == 1
    assert done.stderr.decode().startswith(f"capgen: {empty}: no images in this folder")
    assert done.stdout.decode().count("\t") == 1


def test_batch_with_a_corrupt_file_captions_the_rest_and_exits_1(
    tiny_model: TinyModel, photos: list[Path], home: Path
) -> None:
    corrupt = photos[0].parent / "corrupt.jpg"
    corrupt.write_bytes(photos[1].read_bytes()[:100])
    done = run(
        "caption",
        "-m",
        tiny_model.folder,
        photos[0],
        corrupt,
        photos[1],
        photos[0].parent / "nope.png",
        "--json",
        home=home,
    )
    _no_traceback(done)
    assert done.returncode == 1
    records = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert [("caption" in r, "error" in r) for r in records] == [
        (True, False),
        (False, True),
        (True, False),
        (False, True),
    ]
    assert set(records[0]) >= {"path", "caption", "log_probability", "tokens", "timings"}
    stderr = done.stderr.decode().splitlines()
    assert f"capgen: {corrupt}: " in stderr[0] and "nope.png: no such file" in stderr[1]


def test_model_errors_are_one_line_with_their_exit_code(
    photos: list[Path], home: Path, tmp_path: Path
) -> None:
    missing_default = run("caption", photos[0], home=home)
    _no_traceback(missing_default)
    assert missing_default.returncode == 3
    assert missing_default.stderr.decode().startswith("capgen: error: no default model")
    not_a_model = run("caption", "--model", tmp_path, photos[0], home=home)
    assert not_a_model.returncode == 3 and b"no manifest.json" in not_a_model.stderr
    no_images = run("caption", home=home)
    assert no_images.returncode == 2 and b"no images given" in no_images.stderr


def test_bad_options_are_clean_errors(
    tiny_model: TinyModel, photos: list[Path], home: Path
) -> None:
    for options in (
        ["--beam-size", "0"],
        ["--n-best", "5"],
        ["--batch-size", "0"],
        ["--threads", "0"],
    ):
        done = run("caption", "-m", tiny_model.folder, photos[0], *options, home=home)
        _no_traceback(done)
        assert done.returncode == 2 and done.stderr.startswith(b"capgen: error:"), options
    resume_alone = run("caption", "-m", tiny_model.folder, photos[0], "--resume", home=home)
    assert resume_alone.returncode == 2 and b"--output" in resume_alone.stderr


def test_default_model_says_it_is_a_demonstration(
    tiny_model: TinyModel, photos: list[Path], home: Path
) -> None:
    """The manifest's `"demonstration": true` says so (issue 11 item 6), not the folder's location."""
    default = home / "models" / "default"
    shutil.copytree(tiny_model.folder, default)
    users_own = run("caption", photos[0], home=home)  # a user's model placed at models/default
    assert users_own.returncode == 0 and users_own.stderr == b"", users_own.stderr
    manifest = json.loads((default / "manifest.json").read_text())
    (default / "manifest.json").write_text(json.dumps({**manifest, "demonstration": True}))
    done = run("caption", photos[0], home=home)
    assert done.returncode == 0
    assert b"demonstration model" in done.stderr and b"capgen convert model" in done.stderr
    by_path = run("caption", "-m", default, photos[0], home=home)
    assert b"demonstration model" in by_path.stderr
    explicit = run("caption", "-m", tiny_model.folder, photos[0], home=home)
    assert explicit.stderr == b""


def test_int8_needs_an_int8_encoder(
    tiny_model: TinyModel, photos: list[Path], home: Path, tmp_path: Path
) -> None:
    assert run("caption", "-m", tiny_model.folder, "--int8", photos[0], home=home).returncode == 0
    plain = tmp_path / "plain"
    shutil.copytree(tiny_model.folder, plain)
    manifest = json.loads((plain / "manifest.json").read_text())
    del manifest["encoder"]["int8_file"]
    (plain / "manifest.json").write_text(json.dumps(manifest))
    done = run("caption", "-m", plain, "--int8", photos[0], home=home)
    assert done.returncode == 3 and b"INT8" in done.stderr


@pytest.mark.subprocess
def test_non_utf8_file_name_is_captioned_and_printed(
    tiny_model: TinyModel, photos: list[Path], home: Path
) -> None:
    odd = os.fsencode(photos[0].parent) + b"/\xff\xfe.jpg"
    with open(odd, "wb") as handle:
        handle.write(photos[0].read_bytes())
    env = {**os.environ, "CAPGEN_HOME": str(home)}
    done = subprocess.run(
        [
            os.fsencode(CAPGEN_SCRIPT),
            b"caption",
            b"-m",
            os.fsencode(tiny_model.folder),
            odd,
            os.fsencode(photos[1]),
        ],
        capture_output=True,
        env=env,
        timeout=120,
    )
    _no_traceback(done)
    assert done.returncode == 0
    first = done.stdout.decode("utf-8").splitlines()[0]
    assert first.split("\t")[0].endswith("/\ufffd\ufffd.jpg")
    as_json = subprocess.run(
        [
            os.fsencode(CAPGEN_SCRIPT),
            b"caption",
            b"-m",
            os.fsencode(tiny_model.folder),
            odd,
            b"--json",
        ],
        capture_output=True,
        env=env,
        timeout=120,
    )
    record = json.loads(as_json.stdout)
    assert os.fsencode(record["path"]) == odd  # exact round trip, usable for --resume


def test_annotate_writes_captioned_images(
    tiny_model: TinyModel, photos: list[Path], home: Path, tmp_path: Path
) -> None:
    out = tmp_path / "annotated"
    done = run("caption", "-m", tiny_model.folder, *photos, "--annotate", out, home=home)
    assert done.returncode == 0, done.stderr
    written = sorted(out.iterdir())
    assert [p.name for p in written] == ["p0.jpg", "p1.jpg", "p2.jpg"]
    with Image.open(written[0]) as annotated:
        assert (
            annotated.width >= 50 and annotated.height > 40
        )  # the caption band is beneath the photo


def test_info_verifies_files(tiny_model: TinyModel, home: Path, tmp_path: Path) -> None:
    done = run("info", tiny_model.folder, home=home)
    assert done.returncode == 0, done.stderr
    text = done.stdout.decode()
    assert "vocabulary:" in text and text.count(" ok") == 5
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model.folder, broken)
    with (broken / "vocabulary.json").open("ab") as handle:
        handle.write(b" ")
    failed = run("info", broken, home=home)
    _no_traceback(failed)
    assert (
        failed.returncode == 3
        and b"FAILED" in failed.stdout
        and failed.stderr.startswith(b"capgen: error:")
    )


@pytest.fixture()
def many_photos(tmp_path: Path) -> list[Path]:
    """Enough full-size photos that captioning takes a few seconds (same bytes, many names)."""
    folder = tmp_path / "many"
    folder.mkdir()
    rng = np.random.default_rng(1)
    template = folder / "template.bin"
    Image.fromarray((rng.random((900, 1200, 3)) * 255).astype(np.uint8)).save(
        template, "JPEG", quality=92
    )
    paths = []
    for index in range(150):
        path = folder / f"img{index:03d}.jpg"
        shutil.copyfile(template, path)
        paths.append(path)
    return paths


def _stop_after_first_lines(
    args: list[str], output: Path, home: Path, sig: int
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CAPGEN_HOME": str(home)}
    process = subprocess.Popen(
        [str(CAPGEN_SCRIPT), *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if output.exists() and output.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.005)
    process.send_signal(sig)
    process.wait(timeout=60)
    return process


def _records(output: Path) -> list[dict]:  # type: ignore[type-arg]
    data = output.read_bytes()
    assert data.endswith(b"\n") or data == b""
    return [json.loads(line) for line in data.splitlines()]


def _batch_args(model: TinyModel, photos: list[Path], output: Path) -> list[str]:
    return [
        "caption",
        "-m",
        str(model.folder),
        str(photos[0].parent),
        "-o",
        str(output),
        "--batch-size",
        "1",
    ]


@pytest.mark.slow
@pytest.mark.subprocess
def test_killed_batch_keeps_finished_lines_and_resume_finishes(
    tiny_model: TinyModel, many_photos: list[Path], home: Path, tmp_path: Path
) -> None:
    output = tmp_path / "captions.jsonl"
    args = _batch_args(tiny_model, many_photos, output)
    _stop_after_first_lines(args, output, home, signal.SIGKILL)
    first = _records(output)
    assert 3 <= len(first) < len(many_photos), "the batch finished before it could be killed"
    resumed = run(*args, "--resume", "--json", home=home)
    assert resumed.returncode == 0, resumed.stderr
    redone = [json.loads(line)["path"] for line in resumed.stdout.decode().splitlines()]
    assert not set(redone) & {r["path"] for r in first}
    final = _records(output)
    assert sorted(r["path"] for r in final) == [str(p) for p in many_photos]


@pytest.mark.slow
@pytest.mark.subprocess
def test_ctrl_c_exits_130_with_finished_work_written(
    tiny_model: TinyModel, many_photos: list[Path], home: Path, tmp_path: Path
) -> None:
    output = tmp_path / "captions.jsonl"
    process = _stop_after_first_lines(
        _batch_args(tiny_model, many_photos, output), output, home, signal.SIGINT
    )
    assert process.returncode == 130
    stderr = process.stderr.read() if process.stderr else b""
    assert b"Traceback" not in stderr and b"interrupted" in stderr
    assert 3 <= len(_records(output)) < len(many_photos)


@pytest.mark.parametrize(
    "payload", [b"", b"GIF89a\x01", b"<html>", b"\xff\xd8\xff\xe0" + b"\x00" * 50, b"BM" * 40]
)
def test_garbage_files_at_the_cli(
    tiny_model: TinyModel, home: Path, tmp_path: Path, payload: bytes
) -> None:
    path = tmp_path / "garbage.png"
    path.write_bytes(payload)
    done = run("caption", "-m", tiny_model.folder, path, home=home)
    _no_traceback(done)
    assert done.returncode == 5  # one image given alone: its failure's own code (ImageError)
    assert done.stderr.decode().count("\n") == 1 and done.stderr.startswith(
        f"capgen: {path}: ".encode()
    )


def test_an_annotation_that_cannot_be_written_fails_only_that_image(
    tiny_model: TinyModel, photos: list[Path], home: Path, tmp_path: Path
) -> None:
    out = tmp_path / "annotated"
    out.mkdir()
    (out / "p1.jpg").mkdir()  # a folder where p1's picture should go
    done = run("caption", "-m", tiny_model.folder, *photos, "--annotate", out, home=home)
    _no_traceback(done)
    assert done.returncode == 1
    assert len(done.stdout.decode().splitlines()) == 3  # every caption still printed
    assert "p1.jpg: annotate: " in done.stderr.decode()
    assert (out / "p0.jpg").is_file() and (out / "p2.jpg").is_file()


@pytest.mark.subprocess
def test_ctrl_c_while_loading_the_model_is_130_without_traceback(
    monkeypatch: pytest.MonkeyPatch, photos: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    import typer

    from capgen.cli_support.commands import register_runtime_commands
    from capgen.cli_support.presenter import run
    from capgen.runtime import captioner

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(captioner.Captioner, "__init__", interrupted)
    app = typer.Typer()
    register_runtime_commands(app)
    assert run(app, ["caption", str(photos[0])]) == 130
    assert capsys.readouterr().err == "capgen: interrupted\n"


def _run_in_terminal(args: list[str], home: Path) -> bytes:
    """Run the console script with stdout and stderr on a pseudo-terminal 100 columns wide."""
    import fcntl
    import pty
    import struct
    import termios

    pid, fd = pty.fork()
    if pid == 0:  # child: become the capgen process
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
        os.execve(
            str(CAPGEN_SCRIPT),
            [str(CAPGEN_SCRIPT), *args],
            {**os.environ, "CAPGEN_HOME": str(home)},
        )
    output = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.waitpid(pid, 0)
    return output


@pytest.mark.subprocess
def test_progress_bar_only_on_a_terminal(
    tiny_model: TinyModel, photos: list[Path], home: Path
) -> None:
    on_terminal = _run_in_terminal(
        ["caption", "-m", str(tiny_model.folder), str(photos[0].parent)], home
    )
    assert b"100%" in on_terminal and b"3/3" in on_terminal
    assert on_terminal.count(b".jpg\t") == 3  # every caption printed around the bar
    piped = run("caption", "-m", tiny_model.folder, photos[0].parent, home=home)
    assert b"%" not in piped.stderr and b"%" not in piped.stdout


@pytest.mark.subprocess
def test_importing_the_runtime_cli_stays_light() -> None:
    """`capgen --help` and the convert commands import this module; numpy & co. wait for `caption`."""
    script = (
        "import sys\n"
        "import capgen.cli_support.commands\n"
        "print([m for m in ('numpy', 'onnxruntime', 'PIL', 'tqdm') if m in sys.modules])\n"
    )
    done = subprocess.run(
        [str(CAPGEN_SCRIPT.parent / "python"), "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"

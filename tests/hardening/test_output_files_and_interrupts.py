"""Issue 10 (data loss, tracebacks, contract): capgen's output files, interrupts, escaping, exit codes.

Each test drives the real console script the way the finding's user did and
names the finding it covers (test_fNN_…).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from capgen_cli import capgen
from cli_helpers import Run, assert_one_line_error, write_photos
from tiny_model import TinyModel, write_tiny_model

from capgen.cli_support.exit_codes import ExitCode

ERRORS_DOCS = Path(__file__).resolve().parents[2] / "docs" / "errors.md"


@pytest.fixture()
def photo(tmp_path: Path) -> Path:
    return write_photos(tmp_path / "photos", 1, seed=10)[0]


@pytest.fixture()
def launch(capgen_script: Path, home: Path) -> Run:
    """Like `run`, but `env` adds to the environment and stdout/stderr may be given (then, or
    for a test marked `subprocess`, a real child process: tests/capgen_cli.py)."""

    def launcher(
        *args: str | Path, env: dict[str, str] | None = None, **kwargs: object
    ) -> subprocess.CompletedProcess[bytes]:
        environment = {**os.environ, "CAPGEN_HOME": str(home), **(env or {})}
        if "stdout" in kwargs or "stderr" in kwargs:
            return subprocess.run(  # type: ignore[call-overload, no-any-return]
                [str(capgen_script), *map(str, args)], env=environment, timeout=120, **kwargs
            )
        return capgen(*args, env=environment, script=capgen_script, timeout=120, **kwargs)

    return launcher


def _without_root_override() -> None:
    """A preexec_fn: as root, drop the capabilities that ignore file modes, so 0o444 binds."""
    if os.getuid() != 0:
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP: gone after exec too
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _capgen_lines(run: Run, model: TinyModel, photos: list[Path], output: Path) -> bytes:
    """A genuine capgen --output file for `photos`."""
    done = run("caption", "-m", model.folder, *photos, "-o", output)
    assert done.returncode == 0, done.stderr
    return output.read_bytes()


# Finding 1: --resume truncated a file before knowing it was capgen's ---------


@pytest.mark.parametrize(
    "content",
    [
        b"\xff\xd8\xff\xe0 JPEG bytes\nwith a newline in them\x00\x01",
        b'{"name": "config", "debug": true}',  # one line, no newline at all
        b'{"path": "train/1.jpg", "label": "cat"}\n{"path": "half',
    ],
    ids=["photo", "one-line-config", "foreign-then-partial"],
)
def test_resume_never_truncates_a_file_that_is_not_capgen_output(
    run: Run, hardening_model: TinyModel, photo: Path, tmp_path: Path, content: bytes
) -> None:
    victim = tmp_path / "victim.jpg"
    victim.write_bytes(content)
    done = run("caption", "-m", hardening_model.folder, photo, "-o", victim, "--resume")
    assert_one_line_error(done, ExitCode.USAGE, "not a capgen JSON Lines file", "refusing")
    assert victim.read_bytes() == content


def test_resume_checks_every_line_before_cutting_the_last(
    run: Run, hardening_model: TinyModel, tmp_path: Path
) -> None:
    """A capgen file with a foreign line in the middle is not capgen's: nothing is cut."""
    photos = write_photos(tmp_path / "photos", 2, seed=11)
    output = tmp_path / "out.jsonl"
    good = _capgen_lines(run, hardening_model, photos[:1], output)
    content = good + b'{"id": 7}\n' + good[:15]
    output.write_bytes(content)
    done = run("caption", "-m", hardening_model.folder, *photos, "-o", output, "--resume")
    assert_one_line_error(done, ExitCode.USAGE, f"{output}:2: not a JSON line capgen writes")
    assert output.read_bytes() == content


def test_resume_cuts_only_a_half_written_capgen_line_and_keeps_whole_records(
    run: Run, hardening_model: TinyModel, tmp_path: Path
) -> None:
    photos = write_photos(tmp_path / "photos", 3, seed=12)
    output = tmp_path / "out.jsonl"
    first = _capgen_lines(run, hardening_model, photos[:1], output)
    second = _capgen_lines(run, hardening_model, photos[1:2], tmp_path / "second.jsonl")
    # a whole record whose newline was lost, then half of a record
    output.write_bytes(first + second.rstrip(b"\n"))
    done = run("caption", "-m", hardening_model.folder, *photos, "-o", output, "--resume", "--json")
    assert done.returncode == 0, done.stderr
    redone = [json.loads(line)["path"] for line in done.stdout.splitlines()]
    assert redone == [str(photos[2])]  # the record without its newline was kept, not redone
    records = [json.loads(line) for line in output.read_bytes().splitlines()]
    assert [r["path"] for r in records] == [str(p) for p in photos]


def test_a_second_capgen_on_the_same_output_is_refused(
    run: Run, hardening_model: TinyModel, photo: Path, tmp_path: Path
) -> None:
    """Two runs sharing one --output --resume used to caption the same images twice."""
    import fcntl

    output = tmp_path / "out.jsonl"
    content = _capgen_lines(run, hardening_model, [photo], output)
    with output.open("ab") as holder:
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX)  # what a running capgen holds
        done = run("caption", "-m", hardening_model.folder, photo, "-o", output, "--resume")
    assert_one_line_error(done, ExitCode.USAGE, "another capgen process is writing to it")
    assert output.read_bytes() == content


# Finding 2: another tool's JSON Lines was taken for capgen's -----------------


@pytest.mark.parametrize("resume", [False, True], ids=["overwrite", "resume"])
@pytest.mark.parametrize(
    "lines",
    [
        [{"path": "train/1.jpg", "label": "cat"}],
        [{"path": "train/1.jpg", "caption": "a cat"}],  # capgen's keys, not all of them
        [{"path": "a.jpg", "error": "bad", "label": 3}],
        [{"path": 7, "error": "bad"}],
    ],
    ids=["label", "caption-only", "error-plus", "path-not-str"],
)
def test_output_refuses_another_tools_json_lines(
    run: Run,
    hardening_model: TinyModel,
    photo: Path,
    tmp_path: Path,
    lines: list[dict[str, object]],
    resume: bool,
) -> None:
    metadata = tmp_path / "metadata.jsonl"
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    metadata.write_bytes(content)
    extra = ["--resume"] if resume else []
    done = run("caption", "-m", hardening_model.folder, photo, "-o", metadata, *extra)
    assert_one_line_error(done, ExitCode.USAGE, "not a capgen JSON Lines file")
    assert metadata.read_bytes() == content


def test_a_foreign_line_after_capgen_lines_is_refused_too(
    run: Run, hardening_model: TinyModel, photo: Path, tmp_path: Path
) -> None:
    """The old check read only the first line."""
    output = tmp_path / "mixed.jsonl"
    content = _capgen_lines(run, hardening_model, [photo], output) + b'{"path": "x", "label": 1}\n'
    output.write_bytes(content)
    done = run("caption", "-m", hardening_model.folder, photo, "-o", output)
    assert_one_line_error(done, ExitCode.USAGE, f"{output}:2:")
    assert output.read_bytes() == content


def test_output_is_never_a_link_or_an_input(
    run: Run, hardening_model: TinyModel, photo: Path, tmp_path: Path
) -> None:
    real = tmp_path / "real.jsonl"
    content = _capgen_lines(run, hardening_model, [photo], real)
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    done = run("caption", "-m", hardening_model.folder, photo, "-o", link)
    assert_one_line_error(done, ExitCode.USAGE, "is a symbolic link")
    assert real.read_bytes() == content and link.is_symlink()
    before = photo.read_bytes()
    done = run("caption", "-m", hardening_model.folder, photo, "-o", photo)
    assert_one_line_error(done, ExitCode.USAGE, "is one of the input images")
    assert photo.read_bytes() == before


# Finding 3: --annotate overwrote files, wrote through links -------------------


def test_annotate_keeps_a_file_capgen_did_not_write(
    run: Run, hardening_model: TinyModel, tmp_path: Path
) -> None:
    photos = write_photos(tmp_path / "photos", 2, seed=13)
    out = tmp_path / "annotated"
    out.mkdir()
    mine = out / "photo00.jpg"
    mine.write_bytes(b"the user's own picture")
    done = run("caption", "-m", hardening_model.folder, *photos, "--annotate", out)
    assert done.returncode == ExitCode.SOME_FAILED
    assert len(done.stdout.splitlines()) == 2  # both captions still printed
    stderr = done.stderr.decode()
    assert stderr.count("\n") == 1 and "exists and capgen did not write it" in stderr, stderr
    assert mine.read_bytes() == b"the user's own picture"
    assert (out / "photo01.jpg").is_file()


def test_annotate_replaces_only_its_own_earlier_copy(
    run: Run, hardening_model: TinyModel, tmp_path: Path
) -> None:
    photos = write_photos(tmp_path / "photos", 2, seed=14)
    out = tmp_path / "annotated"
    assert run("caption", "-m", hardening_model.folder, *photos, "--annotate", out).returncode == 0
    again = run("caption", "-m", hardening_model.folder, *photos, "--annotate", out)
    assert again.returncode == 0 and again.stderr == b"", again.stderr
    assert sorted(p.name for p in out.iterdir()) == ["photo00.jpg", "photo01.jpg"]  # no temp left


def test_annotate_never_writes_through_a_planted_link(
    run: Run, hardening_model: TinyModel, photo: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    out = tmp_path / "annotated"
    out.mkdir()
    (out / f"{photo.stem}.jpg").symlink_to(victim)
    done = run("caption", "-m", hardening_model.folder, photo, "--annotate", out)
    stderr = done.stderr.decode()
    assert b"Traceback" not in done.stderr and "is a symbolic link" in stderr, stderr
    assert done.returncode == ExitCode.USAGE  # one image alone: its failure's code
    assert victim.read_bytes() == b"precious" and (out / f"{photo.stem}.jpg").is_symlink()


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_annotate_sees_an_input_given_through_a_link(
    run: Run, hardening_model: TinyModel, tmp_path: Path, link: str
) -> None:
    photos = tmp_path / "photos"
    holiday = write_photos(photos, 1, seed=15)[0].rename(photos / "holiday.jpg")
    links = tmp_path / "links"
    links.mkdir()
    given = links / "holiday.jpg"
    if link == "symlink":
        given.symlink_to(holiday)
    else:
        os.link(holiday, given)
    before = holiday.read_bytes()
    done = run("caption", "-m", hardening_model.folder, given, "--annotate", photos)
    assert b"Traceback" not in done.stderr and done.returncode != 0, done.stderr
    assert b"input image" in done.stderr, done.stderr
    assert holiday.read_bytes() == before and sorted(os.listdir(photos)) == ["holiday.jpg"]


def test_annotate_into_a_folder_it_cannot_write_is_one_line(
    launch: Run, hardening_model: TinyModel, photo: Path, tmp_path: Path
) -> None:
    out = tmp_path / "annotated"
    out.mkdir()
    out.chmod(0o555)
    done = launch(
        "caption", "-m", hardening_model.folder, photo, "--annotate", out,
        preexec_fn=_without_root_override,
    )  # fmt: skip
    stderr = done.stderr.decode()
    assert b"Traceback" not in done.stderr and stderr.count("\n") == 1, stderr
    assert "cannot write annotated image" in stderr and done.returncode == ExitCode.USAGE
    assert len(done.stdout.splitlines()) == 1 and os.listdir(out) == []


# Finding 10: a read-only --output with a partial last line -------------------


def test_read_only_output_with_a_partial_last_line_is_one_line(
    run: Run, launch: Run, hardening_model: TinyModel, photo: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out.jsonl"
    content = _capgen_lines(run, hardening_model, [photo], output) + b'{"path": "half'
    output.write_bytes(content)
    output.chmod(0o444)
    done = launch(
        "caption", "-m", hardening_model.folder, photo, "-o", output, "--resume",
        preexec_fn=_without_root_override,
    )  # fmt: skip
    assert_one_line_error(done, ExitCode.USAGE, "cannot open for writing", "ermission denied")
    assert output.read_bytes() == content


# Finding 16: Ctrl-C during the imports, and a second one at exit --------------


def _interrupting_site(folder: Path, body: str) -> dict[str, str]:
    """An environment whose sitecustomize sends this process SIGINT at a chosen moment.

    The signal is raised from inside the running interpreter, so the moment is
    exact: no timing, no race.
    """
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(
        "import os, signal, sys, threading\n"
        "def interrupt():\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n" + body
    )
    return {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))
    }


@pytest.mark.parametrize("module", ["typer", "numpy", "onnxruntime"])
def test_ctrl_c_during_the_imports_is_one_line(
    launch: Run, hardening_model: TinyModel, photo: Path, tmp_path: Path, module: str
) -> None:
    env = _interrupting_site(
        tmp_path / "site",
        "fired = []\n"
        "def hook(event, args):\n"
        f"    if event == 'import' and args[0] == {module!r} and not fired:\n"
        "        fired.append(1)\n"
        "        interrupt()\n"
        "sys.addaudithook(hook)\n",
    )
    done = launch("caption", "-m", hardening_model.folder, photo, env=env)
    assert done.returncode == ExitCode.INTERRUPTED, done.stderr
    assert done.stderr == b"capgen: interrupted\n"


def test_a_ctrl_c_while_the_interpreter_shuts_down_adds_no_traceback(
    launch: Run, hardening_model: TinyModel, tmp_path: Path
) -> None:
    """threading's shutdown (which joins the decode-ahead thread) ran the KeyboardInterrupt."""
    photos = write_photos(tmp_path / "photos", 3, seed=17)
    env = _interrupting_site(tmp_path / "site", "threading._register_atexit(interrupt)\n")
    done = launch("caption", "-m", hardening_model.folder, *photos, env=env)
    assert done.stderr == b"", done.stderr.decode()
    assert done.returncode == ExitCode.OK
    assert len(done.stdout.splitlines()) == 3


# Finding 20: control characters in file names and vocabulary words ------------

_HOSTILE_NAMES = ["new\nline.png", "tab\there.png", "esc\x1b]0;pwned\x07.png", "bidi\u202egnp.png"]


def _controls(text: str) -> list[str]:
    return [c for c in text if (ord(c) < 0x20 and c not in "\t\n") or c in "\x7f\u202e"]


def test_control_characters_in_file_names_are_escaped(
    run: Run, hardening_model: TinyModel, tmp_path: Path
) -> None:
    folder = tmp_path / "hostile"
    source = write_photos(tmp_path / "photos", 1, seed=18)[0]
    folder.mkdir()
    for name in _HOSTILE_NAMES:
        shutil.copyfile(source, folder / name)
    (folder / "bad\x1b[2J.png").write_bytes(b"<html>not an image</html>")
    done = run("caption", "-m", hardening_model.folder, folder)
    assert done.returncode == ExitCode.SOME_FAILED
    lines = done.stdout.decode().split("\n")
    assert lines[-1] == "" and len(lines[:-1]) == len(_HOSTILE_NAMES), lines
    for line in lines[:-1]:
        assert line.count("\t") == 1 and not _controls(line), repr(line)
    assert "\\x1b]0;pwned\\x07" in done.stdout.decode()
    stderr = done.stderr.decode()
    assert stderr.count("\n") == 1 and not _controls(stderr.rstrip("\n")), repr(stderr)
    assert "bad\\x1b[2J.png" in stderr
    as_json = run("caption", "-m", hardening_model.folder, folder, "--json")
    paths = {json.loads(line)["path"] for line in as_json.stdout.splitlines()}
    assert {str(folder / name) for name in _HOSTILE_NAMES} <= paths  # --json stays exact


def test_control_characters_in_vocabulary_words_are_escaped(run: Run, tmp_path: Path) -> None:
    words: list[str | None] = [None, "start", "a\x1b[2Jb", "tab\tword", "new\nline", "end", None]
    model = write_tiny_model(tmp_path / "model", words=words)
    photos = write_photos(tmp_path / "photos", 3, seed=19)
    done = run("caption", "-m", model.folder, *photos, "--beam-size", "1")
    assert done.returncode == ExitCode.OK, done.stderr
    lines = done.stdout.decode().split("\n")[:-1]
    assert len(lines) == 3
    for line in lines:
        assert line.count("\t") == 1 and not _controls(line), repr(line)


def test_info_escapes_control_characters_from_the_manifest(
    run: Run, hardening_model: TinyModel, tmp_path: Path
) -> None:
    folder = tmp_path / "model"
    shutil.copytree(hardening_model.folder, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["description"] = "fine\x1b]0;pwned\x07\nfiles:\n  fake ok"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    done = run("info", folder)
    assert done.returncode == ExitCode.OK, done.stderr
    stdout = done.stdout.decode()
    assert "\x1b" not in stdout and "fine\\x1b]0;pwned\\x07\\x0afiles:" in stdout, stdout


# Finding 21: one exit-code table, tested row by row --------------------------


def _documented_rows() -> list[tuple[int, str]]:
    text = ERRORS_DOCS.read_text(encoding="utf-8")
    section = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d+) \| (.+?) \|", section, flags=re.MULTILINE)
    return [(int(code), meaning) for code, meaning in rows]


def test_the_documented_table_is_the_exit_code_table() -> None:
    assert _documented_rows() == [(int(code), code.meaning) for code in ExitCode]


def _one_bad_of_two(
    run: Run, model: TinyModel, tmp_path: Path
) -> subprocess.CompletedProcess[bytes]:
    good = write_photos(tmp_path / "photos", 1, seed=20)[0]
    return run("caption", "-m", model.folder, good, tmp_path / "missing.jpg")


def _one_bad_image(
    run: Run, model: TinyModel, tmp_path: Path
) -> subprocess.CompletedProcess[bytes]:
    bad = tmp_path / "page.jpg"
    bad.write_bytes(b"<html>a failed download</html>")
    return run("caption", "-m", model.folder, bad)


def _unknown_resize_filter(
    run: Run, model: TinyModel, tmp_path: Path
) -> subprocess.CompletedProcess[bytes]:
    folder = tmp_path / "model"
    shutil.copytree(model.folder, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["encoder"]["input"]["resize_filter"] = "SINC"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return run("caption", "-m", folder, write_photos(tmp_path / "photos", 1, seed=21)[0])


def _hostile_tokenizer(
    run: Run, model: TinyModel, tmp_path: Path
) -> subprocess.CompletedProcess[bytes]:
    pytest.importorskip("keras", reason="needs the conversion stack to read a Keras model")
    from keras_decoder_builders import DecoderShape, build_keras3_decoder, tiny_encoder_onnx

    shape = DecoderShape(
        feature_size=8,
        max_length=6,
        vocab_size=6,
        embedding_size=4,
        units=4,
        projection_size=4,
        hidden_size=4,
    )
    build_keras3_decoder(shape).save(tmp_path / "model_9.h5")
    evil = tmp_path / "tokenizer.p"
    evil.write_bytes(b"cos\nsystem\n(S'true'\ntR.")
    encoder = tiny_encoder_onnx(tmp_path / "encoder.onnx", 8)
    return run(
        "convert", "model", tmp_path / "model_9.h5", evil, "-o", tmp_path / "out",
        "--encoder", encoder,
    )  # fmt: skip


def _conversion_stack_missing(
    run: Run, model: TinyModel, tmp_path: Path
) -> subprocess.CompletedProcess[bytes]:
    env = _interrupting_site(tmp_path / "site", "sys.modules['h5py'] = None\n")
    return run("convert", "model", "m.h5", "t.p", "-o", tmp_path / "out", env=env)


def _closed_pipe(run: Run, model: TinyModel, tmp_path: Path) -> subprocess.CompletedProcess[bytes]:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before capgen writes a byte
    try:
        return run("caption", "-m", model.folder, *write_photos(tmp_path / "p", 2, seed=22),
                   stdout=write_end, stderr=subprocess.PIPE)  # fmt: skip
    finally:
        os.close(write_end)


def _interrupted(run: Run, model: TinyModel, tmp_path: Path) -> subprocess.CompletedProcess[bytes]:
    env = _interrupting_site(
        tmp_path / "site",
        "def hook(event, args):\n"
        "    if event == 'import' and args[0] == 'onnxruntime':\n"
        "        interrupt()\n"
        "sys.addaudithook(hook)\n",
    )
    return run("caption", "-m", model.folder, tmp_path / "x.jpg", env=env)


_ROWS: dict[ExitCode, Callable[[Run, TinyModel, Path], subprocess.CompletedProcess[bytes]]] = {
    ExitCode.OK: lambda run, model, tmp: run(
        "caption", "-m", model.folder, write_photos(tmp / "p", 1, seed=23)[0]
    ),
    ExitCode.SOME_FAILED: _one_bad_of_two,
    ExitCode.USAGE: lambda run, model, tmp: run("caption", "--beam-size", "many", "x.jpg"),
    ExitCode.MODEL: _unknown_resize_filter,
    ExitCode.TOKENIZER: _hostile_tokenizer,
    ExitCode.IMAGE: _one_bad_image,
    ExitCode.CONVERSION: _conversion_stack_missing,
    ExitCode.INTERRUPTED: _interrupted,
    ExitCode.BROKEN_PIPE: _closed_pipe,
}


def test_every_row_has_a_case() -> None:
    assert set(_ROWS) == set(ExitCode)


@pytest.mark.subprocess
@pytest.mark.parametrize(
    "code",
    # The TOKENIZER row builds a Keras decoder to convert: the conversion stack, in this process.
    [
        pytest.param(c, marks=pytest.mark.convert) if c == ExitCode.TOKENIZER else c
        for c in ExitCode
    ],
    ids=[code.name for code in ExitCode],
)
def test_every_exit_code_row_is_what_the_console_script_returns(
    launch: Run, hardening_model: TinyModel, tmp_path: Path, code: ExitCode
) -> None:
    done = _ROWS[code](launch, hardening_model, tmp_path)
    stderr = (done.stderr or b"").decode("utf-8", "replace")
    assert "Traceback" not in stderr, stderr
    assert done.returncode == code, (done.returncode, stderr)
    if code not in (ExitCode.OK, ExitCode.BROKEN_PIPE):
        assert stderr.count("\n") == 1 and stderr.startswith("capgen: "), stderr
    if code == ExitCode.MODEL:
        assert "unknown resize filter 'SINC'" in stderr


# Issue 15 item 6: --annotate reuses the decoded image ------------------------


def test_i15_annotate_decodes_each_image_once_with_the_same_captions(
    launch: Run, hardening_model: TinyModel, tmp_path: Path
) -> None:
    photos = write_photos(tmp_path / "photos", 3, seed=24)
    env = _interrupting_site(
        tmp_path / "site",
        "import atexit, collections, json\n"
        "opened = collections.Counter()\n"
        "def hook(event, args):\n"
        "    if event == 'open' and str(args[0]).endswith('.png'):\n"
        "        opened[str(args[0])] += 1\n"
        "sys.addaudithook(hook)\n"
        "atexit.register(lambda: sys.stderr.write('OPENED ' + json.dumps(opened) + '\\n'))\n",
    )
    plain = launch("caption", "-m", hardening_model.folder, *photos, "--json", env=env)
    annotated = launch(
        "caption", "-m", hardening_model.folder, *photos, "--json",
        "--annotate", tmp_path / "annotated", env=env,
    )  # fmt: skip
    assert plain.returncode == annotated.returncode == ExitCode.OK, annotated.stderr

    def captions(done: subprocess.CompletedProcess[bytes]) -> list[tuple[str, float]]:
        records = [json.loads(line) for line in done.stdout.splitlines()]
        return [(r["caption"], r["log_probability"]) for r in records]

    def opened(done: subprocess.CompletedProcess[bytes]) -> dict[str, int]:
        line = done.stderr.decode().splitlines()[-1]
        assert line.startswith("OPENED "), done.stderr
        return json.loads(line.removeprefix("OPENED "))  # type: ignore[no-any-return]

    assert captions(annotated) == captions(plain)
    assert opened(annotated) == {str(photo): 1 for photo in photos} == opened(plain)
    assert len(os.listdir(tmp_path / "annotated")) == 3

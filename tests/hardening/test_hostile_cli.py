"""A hostile user at the real `capgen` command line: options, special files, and files not to lose.

Each run has a timeout, so a hang fails the test; each failure must be one
`capgen: …` line with the documented exit code (README "Errors and exit codes").
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import Run, assert_one_line_error, limit_file_size, write_photos
from PIL import Image
from tiny_model import TinyModel


@pytest.fixture()
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.jpg"
    Image.fromarray((np.random.default_rng(3).random((40, 50, 3)) * 255).astype(np.uint8)).save(
        path
    )
    return path


@pytest.mark.parametrize(
    "option,value,fragment",
    [
        # each of these used to hang (max-length, threads) or die of MemoryError with a traceback (beam-size)
        ("--max-length", "100000000", "max_length must be an integer from 1 to 1000"),
        ("--threads", "1000", "threads must be an integer from 1 to"),
        ("--beam-size", "1000000", "beam_size must be an integer from 1 to 100"),
        ("--batch-size", "100000", "batch_size must be an integer from 1 to 64"),
    ],
)
def test_resource_hungry_options_are_refused_at_once(
    run: Run, hardening_model: TinyModel, photo: Path, option: str, value: str, fragment: str
) -> None:
    done = run("caption", "-m", hardening_model.folder, photo, option, value, timeout=60)
    assert_one_line_error(done, 2, fragment)
    assert done.stdout == b""


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["caption", "--beam-size", "abc"], "Invalid value for '--beam-size'"),
        (["caption", "--bogus"], "No such option: --bogus"),
        (["info", "--bogus"], "No such option: --bogus"),
        (["caption", "--json=maybe"], "--json"),
    ],
)
def test_usage_mistakes_are_one_line(
    run: Run, hardening_model: TinyModel, photo: Path, args: list[str], fragment: str
) -> None:
    done = run(*args, "-m", hardening_model.folder, photo) if args[0] == "caption" else run(*args)
    assert_one_line_error(done, 2, fragment)
    assert "╭" not in done.stderr.decode()  # no boxed usage block


def test_convert_model_usage_mistake_is_one_line(run: Run) -> None:
    assert_one_line_error(
        run("convert", "model", "model_9.h5", "tokenizer.p"), 2, "Missing option '--output'"
    )


def test_a_named_pipe_is_refused_instead_of_waiting_forever(
    run: Run, hardening_model: TinyModel, photo: Path, tmp_path: Path
) -> None:
    pipe = tmp_path / "camera.jpg"
    os.mkfifo(pipe)
    done = run("caption", "-m", hardening_model.folder, pipe, photo, timeout=60)
    assert b"Traceback" not in done.stderr
    assert done.returncode == 1
    assert done.stderr.decode() == f"capgen: {pipe}: is a named pipe (FIFO), not an image file\n"
    assert done.stdout.decode().startswith(f"{photo}\t")


def test_a_device_is_refused(run: Run, hardening_model: TinyModel) -> None:
    done = run("caption", "-m", hardening_model.folder, "/dev/zero", timeout=60)
    assert done.returncode == 2  # one input given alone: its failure's own code (InputError)
    assert done.stderr.decode() == "capgen: /dev/zero: is a device, not an image file\n"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_output_never_overwrites_a_file_that_is_not_capgen_output(
    run: Run, hardening_model: TinyModel, photo: Path, tmp_path: Path
) -> None:
    """`capgen caption -o photo.jpg other.jpg` (a slip) must not empty the photo."""
    precious = tmp_path / "precious.jpg"
    shutil.copyfile(photo, precious)
    before = _digest(precious)
    done = run("caption", "-m", hardening_model.folder, "-o", precious, photo)
    assert_one_line_error(done, 2, "not a capgen JSON Lines file")
    assert _digest(precious) == before
    # a previous capgen output is fine to replace, and is replaced
    output = tmp_path / "captions.jsonl"
    assert run("caption", "-m", hardening_model.folder, "-o", output, photo).returncode == 0
    assert (
        run("caption", "-m", hardening_model.folder, "-o", output, photo, precious).returncode == 0
    )
    assert [json.loads(line)["path"] for line in output.read_text().splitlines()] == [
        str(photo),
        str(precious),
    ]


def test_a_bad_option_leaves_the_previous_output_alone(
    run: Run, hardening_model: TinyModel, photo: Path, tmp_path: Path
) -> None:
    output = tmp_path / "captions.jsonl"
    assert run("caption", "-m", hardening_model.folder, "-o", output, photo).returncode == 0
    before = output.read_bytes()
    for bad in (["--batch-size", "0"], ["--beam-size", "0"], ["--threads", "0"]):
        done = run("caption", "-m", hardening_model.folder, "-o", output, photo, *bad)
        assert_one_line_error(done, 2)
        assert output.read_bytes() == before, bad


def test_annotate_into_the_photos_folder_is_refused(
    run: Run, hardening_model: TinyModel, photo: Path
) -> None:
    before = _digest(photo)
    done = run("caption", "-m", hardening_model.folder, photo.parent, "--annotate", photo.parent)
    assert_one_line_error(done, 2, "would overwrite them")
    assert _digest(photo) == before


def test_an_empty_folder_is_a_json_error_line_too(
    run: Run, hardening_model: TinyModel, photo: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    output = tmp_path / "out.jsonl"
    done = run("caption", "-m", hardening_model.folder, empty, photo, "--json", "-o", output)
    assert done.returncode == 1
    for text in (done.stdout.decode(), output.read_text()):
        records = [json.loads(line) for line in text.splitlines()]
        assert records[0] == {
            "path": str(empty),
            "error": "no images in this folder (not searched recursively)",
        }
        assert records[1]["path"] == str(photo) and "caption" in records[1]


def _edited_copy(model: TinyModel, target: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    shutil.copytree(model.folder, target)
    manifest = json.loads((target / "manifest.json").read_text())
    edit(manifest)
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


@pytest.mark.parametrize(
    "edit,fragment",
    [
        (
            lambda m: m.update(max_length=10**9),
            "field max_length is 1000000000, more than capgen's limit of 1000",
        ),
        (lambda m: m["encoder"]["input"].update(height=100000), "encoder.input.height"),
        (lambda m: m.update(format_version=7), "format_version 7 is not supported"),
    ],
)
def test_a_manifest_asking_for_absurd_work_is_a_model_error(
    run: Run,
    hardening_model: TinyModel,
    photo: Path,
    tmp_path: Path,
    edit,
    fragment: str,  # type: ignore[no-untyped-def]
) -> None:
    folder = _edited_copy(hardening_model, tmp_path / "model", edit)
    done = run("caption", "-m", folder, photo, timeout=60)
    assert_one_line_error(done, 3, fragment)


def _without_root_file_powers() -> list[str]:
    """A command prefix under which even root obeys file permissions (tests run as root in CI).

    Root reads any file whatever its mode, so a chmod 000 file proves nothing;
    dropping CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set
    makes the capgen process a root that permissions apply to, like a user.
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip(
            "running as root without util-linux setpriv, so a chmod 000 file stays readable"
        )
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search"]


def test_a_file_without_read_permission(
    capgen_script: Path, hardening_model: TinyModel, photo: Path, home: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.jpg"
    shutil.copyfile(photo, secret)
    secret.chmod(0)
    env = {**os.environ, "CAPGEN_HOME": str(home)}
    argv = [
        *_without_root_file_powers(),
        str(capgen_script),
        "caption",
        "-m",
        str(hardening_model.folder),
        str(secret),
        str(photo),
    ]
    done = subprocess.run(argv, capture_output=True, env=env, timeout=120)
    assert b"Traceback" not in done.stderr, done.stderr
    assert done.returncode == 1, done.stderr
    assert done.stderr.decode() == f"capgen: {secret}: permission denied\n"
    assert done.stdout.decode().startswith(f"{photo}\t")
    assert stat.S_IMODE(secret.stat().st_mode) == 0


def test_absurdly_nested_json_in_a_model_folder_or_resume_file(
    run: Run, hardening_model: TinyModel, photo: Path, tmp_path: Path
) -> None:
    """json.loads raises RecursionError, not ValueError, on '[' * 200000: it used to escape as a traceback."""
    nested = ("[" * 200_000 + "]" * 200_000).encode()
    manifest = _edited_copy(hardening_model, tmp_path / "manifest", lambda m: None)
    (manifest / "manifest.json").write_bytes(nested)
    assert_one_line_error(run("caption", "-m", manifest, photo), 3, "manifest.json: not valid JSON")

    def nested_vocabulary(m: dict) -> None:  # type: ignore[type-arg]
        m["files"]["vocabulary.json"] = {
            "sha256": hashlib.sha256(nested).hexdigest(),
            "bytes": len(nested),
        }

    vocabulary = _edited_copy(hardening_model, tmp_path / "vocabulary", nested_vocabulary)
    (vocabulary / "vocabulary.json").write_bytes(nested)
    assert_one_line_error(run("caption", "-m", vocabulary, photo), 3, "cannot read the vocabulary")
    output = tmp_path / "captions.jsonl"
    output.write_bytes(nested + b"\n")
    resumed = run("caption", "-m", hardening_model.folder, photo, "-o", output, "--resume")
    assert_one_line_error(resumed, 2, "not a JSON line")
    assert_one_line_error(
        run("caption", "-m", hardening_model.folder, photo, "-o", output), 2, "refusing"
    )
    assert output.read_bytes() == nested + b"\n"


def test_output_that_is_not_a_regular_file(
    run: Run, hardening_model: TinyModel, photo: Path
) -> None:
    """`-o /dev/zero --resume` read zeros until MemoryError; a FIFO would block the overwrite check."""
    for extra in (["--resume"], []):
        done = run(
            "caption", "-m", hardening_model.folder, photo, "-o", "/dev/zero", *extra, timeout=60
        )
        assert_one_line_error(done, 2, "/dev/zero: is not a regular file")


def test_a_full_disk_stops_the_batch_keeping_whole_lines_and_resume_finishes(
    run: Run, hardening_model: TinyModel, tmp_path: Path
) -> None:
    """A write error mid-batch (here RLIMIT_FSIZE, like a full disk) used to be an OSError traceback."""
    photos = write_photos(tmp_path / "photos", 12, seed=4, size=(20, 20))
    output = tmp_path / "captions.jsonl"
    # The cache off: under the limit its entries, and the private copy a cache hit loads,
    # could not be written either (a warning line of its own; tests/hardening/
    # test_graph_cache_poisoning.py covers that), and this test is about the captions' file.
    done = run(
        "caption",
        "-m",
        hardening_model.folder,
        *photos,
        "-o",
        output,
        "--batch-size",
        "1",
        preexec_fn=limit_file_size(1500),
        extra_env={"CAPGEN_NO_CACHE": "1"},
    )
    assert_one_line_error(done, 2, f"{output}: cannot write", "--resume")
    kept = [json.loads(line) for line in output.read_text().splitlines()]  # whole lines only
    assert 1 <= len(kept) < len(photos)
    resumed = run("caption", "-m", hardening_model.folder, *photos, "-o", output, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert [json.loads(line)["path"] for line in output.read_text().splitlines()] == [
        str(p) for p in photos
    ]


@pytest.mark.parametrize(
    "command,suffix", [("caption", "; stopped"), ("info", "")], ids=["caption", "info"]
)
def test_a_full_stdout_is_one_line(
    capgen_script: Path,
    hardening_model: TinyModel,
    photo: Path,
    home: Path,
    command: str,
    suffix: str,
) -> None:
    """`capgen caption … > /dev/full` (or info) used to be an OSError traceback."""
    args = (
        ["-m", str(hardening_model.folder), str(photo)]
        if command == "caption"
        else [str(hardening_model.folder)]
    )
    with open("/dev/full", "wb") as full:
        done = subprocess.run(
            [str(capgen_script), command, *args],
            stdout=full,
            stderr=subprocess.PIPE,
            env={**os.environ, "CAPGEN_HOME": str(home)},
            timeout=60,
        )
    assert done.returncode == 2
    assert (
        done.stderr.decode()
        == f"capgen: error: cannot write to standard output (No space left on device){suffix}\n"
    )


def test_model_files_replaced_by_a_folder_a_fifo_or_an_unreadable_file(
    capgen_script: Path,
    run: Run,
    hardening_model: TinyModel,
    photo: Path,
    home: Path,
    tmp_path: Path,
) -> None:
    """A FIFO in a model folder used to hang the size check; a folder was an IsADirectoryError traceback."""
    folder = _edited_copy(hardening_model, tmp_path / "folder", lambda m: None)
    (folder / "vocabulary.json").unlink()
    (folder / "vocabulary.json").mkdir()
    assert_one_line_error(
        run("caption", "-m", folder, photo, timeout=60), 3, "vocabulary.json: is not a regular file"
    )
    fifo = _edited_copy(hardening_model, tmp_path / "fifo", lambda m: None)
    (fifo / "encoder.onnx").unlink()
    os.mkfifo(fifo / "encoder.onnx")
    assert_one_line_error(
        run("caption", "-m", fifo, photo, timeout=60), 3, "encoder.onnx: is not a regular file"
    )
    locked = _edited_copy(hardening_model, tmp_path / "locked", lambda m: None)
    (locked / "decoder_step.onnx").chmod(0)
    argv = [
        *_without_root_file_powers(),
        str(capgen_script),
        "caption",
        "-m",
        str(locked),
        str(photo),
    ]
    done = subprocess.run(
        argv, capture_output=True, env={**os.environ, "CAPGEN_HOME": str(home)}, timeout=60
    )
    assert_one_line_error(done, 3, "decoder_step.onnx: cannot read (Permission denied)")


def test_a_terminal_that_cannot_show_a_file_name(
    capgen_script: Path, hardening_model: TinyModel, photo: Path, home: Path
) -> None:
    """On an ASCII terminal, a non-UTF-8 file name (shown as U+FFFD) was a UnicodeEncodeError traceback."""
    odd = os.fsencode(photo.parent) + b"/caf\xe9.jpg"
    with open(odd, "wb") as handle:
        handle.write(photo.read_bytes())
    env = {**os.environ, "CAPGEN_HOME": str(home), "PYTHONIOENCODING": "ascii"}
    done = subprocess.run(
        [
            os.fsencode(capgen_script),
            b"caption",
            b"-m",
            os.fsencode(hardening_model.folder),
            odd,
            b"missing-\xe9.jpg",
        ],
        capture_output=True,
        env=env,
        timeout=60,
    )
    assert b"Traceback" not in done.stderr, done.stderr
    assert done.returncode == 1
    assert done.stdout.decode("ascii").startswith(f"{photo.parent}/caf?.jpg\t")
    assert done.stderr.decode("ascii") == "capgen: missing-?.jpg: no such file\n"


def test_a_folder_without_read_permission(
    capgen_script: Path, hardening_model: TinyModel, photo: Path, home: Path, tmp_path: Path
) -> None:
    """An unlistable folder argument was a PermissionError traceback before any image was captioned."""
    locked = tmp_path / "locked"
    locked.mkdir()
    shutil.copyfile(photo, locked / "inside.jpg")
    locked.chmod(0)
    try:
        argv = [
            *_without_root_file_powers(),
            str(capgen_script),
            "caption",
            "-m",
            str(hardening_model.folder),
            str(locked),
            str(photo),
        ]
        done = subprocess.run(
            argv, capture_output=True, env={**os.environ, "CAPGEN_HOME": str(home)}, timeout=60
        )
    finally:
        locked.chmod(0o755)
    assert b"Traceback" not in done.stderr, done.stderr
    assert done.returncode == 1
    assert (
        done.stderr.decode() == f"capgen: {locked}: cannot list this folder (Permission denied)\n"
    )
    assert done.stdout.decode().startswith(f"{photo}\t")

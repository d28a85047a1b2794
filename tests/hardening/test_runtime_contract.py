"""Issue 4 promises that had no test of their own: the tutorial's `python -m capgen -i`,
a configurable thread count, a closed stdout, and a vocabulary that is never scanned per word."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import Run, write_photos
from tiny_model import TinyModel

from capgen.runtime.captioner import Captioner
from capgen.runtime.decoding import DecodingOptions
from capgen.runtime.vocabulary import Vocabulary


@pytest.fixture()
def photos(tmp_path: Path) -> list[Path]:
    return write_photos(tmp_path / "photos", 12, seed=21)


def test_python_dash_m_capgen_dash_i_like_the_tutorial(
    run: Run, hardening_model: TinyModel, photos: list[Path], home: Path
) -> None:
    via_script = run("caption", "-m", hardening_model.folder, photos[0])
    env = {**os.environ, "CAPGEN_HOME": str(home)}
    via_module = subprocess.run(
        [sys.executable, "-m", "capgen", "-i", str(photos[0]), "-m", str(hardening_model.folder)],
        capture_output=True,
        env=env,
        timeout=120,
    )
    assert via_module.returncode == 0, via_module.stderr
    assert via_module.stdout == via_script.stdout and via_module.stdout.strip()


def test_thread_count_is_configurable_and_changes_no_caption(
    run: Run, hardening_model: TinyModel, photos: list[Path]
) -> None:
    default = run("caption", "-m", hardening_model.folder, *photos[:3], "--beam-size", "1")
    single = run(
        "caption", "-m", hardening_model.folder, *photos[:3], "--beam-size", "1", "--threads", "1"
    )
    assert default.returncode == single.returncode == 0, single.stderr
    assert single.stdout == default.stdout and single.stdout.count(b"\n") == 3


def test_stdout_closed_early_exits_quietly(
    capgen_script: Path, hardening_model: TinyModel, photos: list[Path], home: Path
) -> None:
    """`capgen caption folder | head -1`: no BrokenPipeError traceback, exit 141 like other Unix tools."""
    env = {**os.environ, "CAPGEN_HOME": str(home)}
    process = subprocess.Popen(
        [
            str(capgen_script),
            "caption",
            "-m",
            str(hardening_model.folder),
            str(photos[0].parent),
            "--batch-size",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert process.stdout is not None and process.stderr is not None
    first = process.stdout.readline()
    process.stdout.close()  # the reader leaves, as `head -1` does
    stderr = process.stderr.read()
    process.wait(timeout=120)
    assert first.startswith(str(photos[0]).encode())
    assert b"Traceback" not in stderr and b"BrokenPipe" not in stderr, stderr
    assert process.returncode in (
        0,
        141,
    )  # 0 only if every caption fitted in the pipe before it closed


class _CountingWords(tuple):  # type: ignore[type-arg]
    """The vocabulary's word list, counting every full pass over it."""

    passes = 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        type(self).passes += 1
        return super().__iter__()


def test_the_vocabulary_is_indexed_never_scanned_per_word(hardening_model: TinyModel) -> None:
    """The tutorial's word_for_id scans the tokenizer for every word; capgen may pass over it once."""
    captioner = Captioner(hardening_model.folder)
    vocabulary = captioner.vocabulary
    counting = Vocabulary(_CountingWords(vocabulary.words), vocabulary.start_id, vocabulary.end_id)
    object.__setattr__(captioner, "vocabulary", counting)
    rng = np.random.default_rng(5)
    features = rng.normal(size=(16, captioner.manifest.encoder.feature_size)).astype(np.float32)
    _CountingWords.passes = 0
    for beam_size in (1, 3):
        results = captioner.decode_features(
            features, DecodingOptions(beam_size=beam_size, max_length=20)
        )
        assert sum(len(result.tokens) for result in results) > 16  # many words were decoded
    assert _CountingWords.passes <= 1  # the no-word id set, built once and cached


def test_caption_batch_given_one_image_says_so(
    hardening_model: TinyModel, photos: list[Path]
) -> None:
    """`caption_batch("photo.jpg")` used to try the paths 'p', 'h', 'o', … one letter at a time."""
    from capgen.runtime.errors import InputError

    captioner = Captioner(hardening_model.folder)
    for single in (str(photos[0]), photos[0], photos[0].read_bytes()):
        with pytest.raises(InputError, match=r"use caption\(\) for one image"):
            captioner.caption_batch(single)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="errors must be"):
        captioner.caption_batch([photos[0]], errors="ignore")  # type: ignore[arg-type]
    assert len(captioner.caption_batch([photos[0], str(photos[1])])) == 2
    assert (
        len(captioner.caption_batch(np.zeros((3, 8, 8, 3), np.uint8))) == 3
    )  # a stacked array is N images

"""Issue 24, findings 11 and 12: images that cost memory out of all proportion to their size.

11: `capgen caption - < /dev/zero` buffered 2.4 GB before refusing; a stream is
now read in chunks and refused once it passes limits.MAX_IMAGE_BYTES.
12: a 29 kB PNG of 1 x 30,000,000 pixels (under the pixel limit) took 1.1 GB
to resize; every side is now bounded by limits.MAX_IMAGE_SIDE.
"""

from __future__ import annotations

import io
import resource
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import Run
from PIL import Image
from tiny_model import TinyModel

from capgen.cli_support.exit_codes import ExitCode
from capgen.runtime import limits
from capgen.runtime.errors import ImageTooLargeError
from capgen.runtime.preprocess import load_image, prepare


class _EndlessZeros:
    """A binary stream that never ends (like /dev/zero) and counts what was taken from it."""

    def __init__(self) -> None:
        self.taken = 0

    def read(self, size: int = -1) -> bytes:
        # read() without a size (the old, unbounded read) gets a bounded stand-in for
        # "everything", so the old code fails this test instead of hanging it.
        count = size if size is not None and size >= 0 else 64 << 20
        self.taken += count
        return bytes(count)


def test_stream_is_refused_once_past_the_byte_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_IMAGE_BYTES", 4 << 20)
    stream = _EndlessZeros()
    with pytest.raises(ImageTooLargeError, match="more than 4,194,304 bytes"):
        load_image(stream)
    assert stream.taken <= (4 << 20) + (1 << 20), stream.taken  # at most one chunk past the limit


def test_bytes_and_files_get_the_same_limit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(limits, "MAX_IMAGE_BYTES", 1000)
    path = tmp_path / "big.png"
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
        buffer, "PNG"
    )
    path.write_bytes(buffer.getvalue())
    assert path.stat().st_size > 1000
    for source in (path, str(path), buffer.getvalue(), io.BytesIO(buffer.getvalue())):
        with pytest.raises(ImageTooLargeError, match="1,000 bytes"):
            load_image(source)


def _cap_memory(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def test_cli_stdin_from_dev_zero_is_one_line(run: Run, hardening_model: TinyModel) -> None:
    """Before the fix this read until memory ran out (here: the child's 2 GiB address-space cap)."""
    with open("/dev/zero", "rb") as zeros:
        done = run(
            "caption",
            "--model",
            hardening_model.folder,
            "-",
            stdin=zeros,
            timeout=120,
            preexec_fn=lambda: _cap_memory(limits.MAX_IMAGE_BYTES + (2 << 30)),
        )
    stderr = done.stderr.decode("utf-8", "replace")
    assert b"Traceback" not in done.stderr, stderr
    assert done.returncode == ExitCode.IMAGE, (done.returncode, stderr)
    assert stderr.count("\n") == 1 and "bytes, the most capgen reads" in stderr, stderr


def _thin_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), 128).save(buffer, "PNG")
    return buffer.getvalue()


def test_thin_image_is_refused_before_decoding() -> None:
    data = _thin_png(1, limits.MAX_IMAGE_SIDE + 1)
    assert len(data) < 1 << 20  # tiny file, far under every byte and pixel limit
    with pytest.raises(ImageTooLargeError, match="no side longer than 65535"):
        prepare(data, 299, 299)


def test_side_limit_covers_arrays_and_pil_images() -> None:
    wide = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (2, limits.MAX_IMAGE_SIDE + 1, 3))
    with pytest.raises(ImageTooLargeError):
        prepare(wide, 299, 299)
    with pytest.raises(ImageTooLargeError):
        prepare(Image.new("L", (limits.MAX_IMAGE_SIDE + 1, 1)), 299, 299)


def test_longest_allowed_side_still_captions() -> None:
    pixels = prepare(_thin_png(1, limits.MAX_IMAGE_SIDE), 32, 32)
    assert pixels.shape == (32, 32, 3)


def test_cli_thin_image_is_one_line(run: Run, hardening_model: TinyModel, tmp_path: Path) -> None:
    path = tmp_path / "strip.png"
    path.write_bytes(_thin_png(1, 200_000))
    done = run("caption", "--model", hardening_model.folder, path)
    stderr = done.stderr.decode("utf-8", "replace")
    assert b"Traceback" not in done.stderr, stderr
    assert done.returncode == ExitCode.IMAGE, (done.returncode, stderr)
    assert stderr.count("\n") == 1 and "no side longer than" in stderr, stderr

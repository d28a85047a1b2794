"""Issue 10, the readers' findings: hostile Keras files, tokenizer pickles, step graphs, API inputs.

Conversion findings drive `capgen convert model` through the real console
script (one `capgen: error:` line, the family's exit code, never a traceback
or a hang); API findings drive `Captioner`, whose per-image failures must be
that image's CapgenError so `caption_batch(errors="return")` keeps the rest.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import write_photos
from tiny_model import TinyModel

from capgen import Captioner
from capgen.runtime.errors import CapgenError, ImageError, ImageTooLargeError, InputError

# ---- F15 and the max_pixels note: every per-image failure is that image's CapgenError ----


class _FailingRead(io.RawIOBase):
    """A user's file object whose read() fails with something that is not an OSError."""

    def read(self, size: int = -1) -> bytes:
        raise RuntimeError("the network share went away")


class _BadPath:
    """An os.PathLike whose __fspath__ fails."""

    def __fspath__(self) -> str:
        raise RuntimeError("no path today")


def test_f15_bad_items_are_their_own_errors_and_the_batch_keeps_the_rest(
    hardening_model: TinyModel, tmp_path: Path
) -> None:
    good = write_photos(tmp_path, 2, seed=15)
    closed = open(good[0], "rb")  # noqa: SIM115 - closed on purpose
    closed.close()
    captioner = Captioner(hardening_model.folder)
    images = [
        good[0],
        closed,
        _FailingRead(),
        str(tmp_path / "photo\x00.png"),
        _BadPath(),
        good[1].read_bytes(),
    ]
    results = captioner.caption_batch(images, beam_size=1, batch_size=2, errors="return")
    assert len(results) == len(images)
    expected = captioner.caption(good[0], beam_size=1).text
    assert not isinstance(results[0], CapgenError) and results[0].text == expected
    assert not isinstance(results[-1], CapgenError)
    closed_error, read_error, nul_error, path_error = results[1:5]
    assert isinstance(closed_error, ImageError), closed_error
    assert "closed file" in str(closed_error)
    assert isinstance(read_error, ImageError), read_error
    assert "RuntimeError: the network share went away" in str(read_error)
    assert isinstance(read_error.__cause__, RuntimeError)  # chained, for the caller's debugging
    assert isinstance(nul_error, InputError) and "NUL" in str(nul_error), nul_error
    assert isinstance(path_error, InputError) and "no path today" in str(path_error), path_error
    with pytest.raises(InputError, match="NUL"):
        captioner.caption("photo\x00.png")


def test_noted_max_pixels_applies_to_arrays_and_pil_images(
    hardening_model: TinyModel, tmp_path: Path
) -> None:
    """A broadcast 20000x20000x3 view costs no memory until capgen copies it: refuse it first."""
    from PIL import Image

    captioner = Captioner(hardening_model.folder, max_pixels=10_000)
    huge = np.broadcast_to(np.uint8(7), (20_000, 20_000, 3))
    with pytest.raises(ImageTooLargeError, match="20000x20000"):
        captioner.caption(huge)
    with pytest.raises(ImageTooLargeError, match="200x100"):
        captioner.caption(np.zeros((100, 200, 3), dtype=np.float32))
    with pytest.raises(ImageTooLargeError, match="200x100"):
        captioner.caption(Image.new("RGB", (200, 100)))
    (path,) = write_photos(tmp_path, 1, seed=3, size=(200, 100))
    with Image.open(path) as lazy, pytest.raises(ImageTooLargeError):
        captioner.caption(lazy)  # refused from its header, before load() decodes it
    assert captioner.caption(np.zeros((50, 60, 3), dtype=np.uint8), beam_size=1).text is not None

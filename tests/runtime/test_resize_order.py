"""capgen's resize runs the horizontal pass first on every Pillow (runtime/preprocess.py `resize`).

Pillow's resampler rounds to uint8 between its two passes, so the pass order
changes pixels. Pillow 10 and 11 always ran the horizontal pass first; 12.3
runs the vertical one first for some very narrow images, 13 for every image
whose height shrinks enough more than its width (a 333x500 portrait to
299x299 is one). capgen fixes the order, so the expected pixels below are
sha256 prefixes of Pillow 10.0.1's and 11.3.0's combined `image.resize` (they
agree), computed once with those versions on a deterministic pattern; the
browser runtime (web/resample.mjs) is tested against the same function.
"""

from __future__ import annotations

import hashlib
import io
import random

import numpy as np
import pytest
from PIL import Image

from capgen.runtime.preprocess import prepare, resize

FILTERS = ("NEAREST", "BOX", "BILINEAR", "HAMMING", "BICUBIC", "LANCZOS")

# (width, height, new width, new height) -> per filter in FILTERS order, Pillow 10/11's bytes.
PILLOW_11 = {
    (500, 375, 299, 299): ['aafec42913bebb65', '46731e633dd791a1', '7714cbba9ec3eceb', '099ae7b5970a171e', '4a18068d3f63bc1e', '3703dc258d6c6ea5'],
    (333, 500, 299, 299): ['cf2545897ffdc91b', '567f9299d8956a67', '4643df767032128d', '68f77afdd94dbc08', 'e0052c98bf3f1315', '0051d4ef5e93134c'],
    (3, 457, 137, 370): ['e3dae7bb6c2c1fa4', '513928a721c46446', 'a238755def0f58f3', '9b21f1e5a605ad30', '893ad286d3456288', '2aa4c4c3461ac17a'],
    (640, 2000, 299, 299): ['f1cf42f77aa168eb', '6bb8be5b61a6b795', 'd783e7a7e6633e2f', 'c6c680b0da3785ae', '89a99349390d7d5c', 'ced3cce79082e6ae'],
    (1200, 300, 299, 299): ['cb4504b33cb1b791', '4bf3e244c6f8a4a5', '8715e935de77199f', '72c3e65c7d48aaea', 'f972e3a32dbe5f6f', '81335d90cc895d8d'],
    (120, 90, 299, 299): ['7224e5127ce67f6c', 'b221a583186b3e3a', '9c5f8915270908cc', 'e6615d53cc678001', 'f5d14dae924d4276', 'bc41ca363875cfcd'],
    (4000, 700, 224, 224): ['4eaef6acc06f46c5', 'a4b3ee867d8cb4c8', '79fbe18f9609138f', '1685ef7fbffdfe80', 'eadb918195153155', '44f7dbf1193d27f6'],
    (299, 900, 299, 299): ['c917a22c9d9700e7', '3733f526ba632746', '21e60637854e63d1', 'bd37062be190e74d', 'b5877476ccdbcd6c', 'da42d160402e86a4'],
}  # fmt: skip


def pattern(width: int, height: int) -> Image.Image:
    """A deterministic RGB image with detail in both directions (no RNG whose stream could change)."""
    y, x = np.mgrid[0:height, 0:width]
    channels = [(x * 7 + y * 13) % 256, (x * y + 3 * x) % 256, (x ^ (y * 5)) % 256]
    return Image.fromarray(np.stack(channels, axis=2).astype(np.uint8))


def _digest(pixels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()[:16]


@pytest.mark.parametrize("case", sorted(PILLOW_11))
def test_resize_gives_pillow_11_pixels_for_every_filter(case: tuple[int, int, int, int]) -> None:
    width, height, new_width, new_height = case
    image = pattern(width, height)
    got = [
        _digest(np.asarray(resize(image, new_width, new_height, Image.Resampling[name])))
        for name in FILTERS
    ]
    assert got == PILLOW_11[case]


def test_prepare_uses_the_fixed_order() -> None:
    """The encoder's pixels, through a PNG file, are the horizontal-first ones."""
    buffer = io.BytesIO()
    pattern(333, 500).save(buffer, format="PNG")
    pixels = prepare(buffer.getvalue(), 299, 299, Image.Resampling.BICUBIC)
    assert _digest(pixels) == PILLOW_11[(333, 500, 299, 299)][FILTERS.index("BICUBIC")]


def test_the_order_matters_for_these_cases() -> None:
    """The goldens could not pass with the vertical pass first: the two orders differ here."""
    image = pattern(333, 500)
    bicubic = Image.Resampling.BICUBIC
    vertical_first = image.resize((333, 299), bicubic).resize((299, 299), bicubic)
    assert not np.array_equal(
        np.asarray(vertical_first), np.asarray(resize(image, 299, 299, bicubic))
    )


@pytest.mark.parametrize("name", FILTERS)
def test_one_axis_resizes_equal_pillows_own(name: str) -> None:
    """With one axis unchanged there is no order question: the result is exactly Pillow's."""
    rng = random.Random(name)
    for _ in range(20):
        width, height = rng.randint(1, 300), rng.randint(1, 300)
        image = pattern(width, height)
        new_width, new_height = rng.randint(1, 300), rng.randint(1, 300)
        for size in ((new_width, height), (width, new_height)):
            ours = resize(image, *size, Image.Resampling[name])
            assert ours.size == size
            assert np.array_equal(
                np.asarray(ours), np.asarray(image.resize(size, Image.Resampling[name]))
            )


def test_same_size_is_a_no_op() -> None:
    image = pattern(31, 17)
    assert resize(image, 31, 17, Image.Resampling.BICUBIC) is image

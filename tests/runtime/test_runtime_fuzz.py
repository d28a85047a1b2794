"""Fuzzing: mutated image bytes only ever produce pixels or a CapgenError, never a crash or hang."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from capgen.runtime.errors import CapgenError
from capgen.runtime.preprocess import prepare


def _seed_images() -> list[bytes]:
    rng = np.random.default_rng(0)
    photo = Image.fromarray((rng.random((24, 32, 3)) * 255).astype(np.uint8))
    seeds = []
    for fmt, image, kwargs in (
        ("JPEG", photo, {"quality": 80}),
        ("PNG", photo, {}),
        ("PNG", photo.convert("P"), {"transparency": 0}),
        ("GIF", photo, {"save_all": True, "append_images": [photo.rotate(90)]}),
        ("TIFF", photo, {"save_all": True, "append_images": [photo]}),
        ("WEBP", photo, {"quality": 60}),
        ("BMP", photo, {}),
        ("PNG", Image.fromarray((rng.random((16, 16)) * 65535).astype(np.uint16)), {}),
        ("JPEG", photo.convert("CMYK"), {}),
    ):
        buffer = io.BytesIO()
        image.save(buffer, fmt, **kwargs)
        seeds.append(buffer.getvalue())
    return seeds


SEEDS = _seed_images()


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        position = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "set", "insert", "delete"]))
        value = draw(st.integers(0, 255))
        if action == "flip":
            data[position] ^= 1 << (value % 8)
        elif action == "set":
            data[position] = value
        elif action == "insert":
            data[position:position] = bytes([value]) * draw(st.integers(1, 64))
        elif len(data) > 1:
            del data[position]
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's notes on the corrupt EXIF we feed it
@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_images())
def test_mutated_bytes_give_pixels_or_a_capgen_error(data: bytes) -> None:
    try:
        pixels = prepare(data, 17, 13)
    except CapgenError as err:
        assert str(err) and "\n" not in str(err)
    else:
        assert pixels.shape == (13, 17, 3) and pixels.dtype == np.uint8

"""web/resample.mjs gives Pillow's bytes (capgen's horizontal-first order) on random sizes x every filter.

The expected bytes come from capgen's own Python `resize` at test time; Node
runs the port over the same pixels. Skips, saying why, when node is missing.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from capgen.runtime.preprocess import resize, to_rgb

HERE = Path(__file__).resolve().parent
NODE = shutil.which("node")
FILTERS = ("NEAREST", "BOX", "BILINEAR", "HAMMING", "BICUBIC", "LANCZOS")
SIZES = 40

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed (Node.js 20 runs web/)")


def _random_image(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Noise plus smooth gradients: noise alone hides rounding of smooth regions."""
    y, x = np.mgrid[0:height, 0:width]
    smooth = np.stack([x * 255 // max(width, 1), y * 255 // max(height, 1), (x + y) % 256], axis=2)
    noise = rng.integers(0, 256, (height, width, 3))
    mask = rng.random((height, width, 1)) < 0.5
    return np.where(mask, noise, smooth).astype(np.uint8)


def test_resampler_is_byte_exact_on_random_sizes_and_every_filter(tmp_path: Path) -> None:
    rng = np.random.default_rng(27)
    sizes = random.Random(27)
    jobs, expected = [], []
    for index in range(SIZES):
        width, height = sizes.randint(1, 640), sizes.randint(1, 640)
        # Mostly the encoder's sizes, some upscales and odd shapes.
        out_width, out_height = sizes.choice(
            [(299, 299), (224, 224), (sizes.randint(1, 400), sizes.randint(1, 400))]
        )
        pixels = _random_image(rng, width, height)
        source = tmp_path / f"in-{index}.rgb"
        source.write_bytes(pixels.tobytes())
        image = Image.fromarray(pixels)
        for name in FILTERS:
            want = np.asarray(resize(image, out_width, out_height, Image.Resampling[name]))
            output = tmp_path / f"out-{index}-{name}.rgb"
            jobs.append(
                {"input": str(source), "width": width, "height": height, "outWidth": out_width,
                 "outHeight": out_height, "filter": name, "output": str(output)}
            )  # fmt: skip
            expected.append((output, want, f"{width}x{height}->{out_width}x{out_height} {name}"))
    job_file = tmp_path / "jobs.json"
    job_file.write_text(json.dumps(jobs))
    assert NODE is not None
    subprocess.run([NODE, str(HERE / "resize_files.mjs"), str(job_file)], check=True, timeout=600)
    mismatches = [
        label for output, want, label in expected if output.read_bytes() != want.tobytes()
    ]
    assert mismatches == [], (
        f"{len(mismatches)} of {len(expected)} resizes differ: {mismatches[:5]}"
    )


def test_a_wrong_resampler_would_be_caught(tmp_path: Path) -> None:
    """The comparison is sensitive: the vertical-first order differs from what the port gives."""
    rng = np.random.default_rng(1)
    pixels = _random_image(rng, 333, 500)
    source = tmp_path / "in.rgb"
    source.write_bytes(pixels.tobytes())
    output = tmp_path / "out.rgb"
    job = {"input": str(source), "width": 333, "height": 500, "outWidth": 299, "outHeight": 299,
           "filter": "BICUBIC", "output": str(output)}  # fmt: skip
    (tmp_path / "job.json").write_text(json.dumps([job]))
    assert NODE is not None
    subprocess.run(
        [NODE, str(HERE / "resize_files.mjs"), str(tmp_path / "job.json")], check=True, timeout=120
    )
    image = Image.fromarray(pixels)
    bicubic = Image.Resampling.BICUBIC
    vertical_first = np.asarray(image.resize((333, 299), bicubic).resize((299, 299), bicubic))
    assert output.read_bytes() == np.asarray(resize(image, 299, 299, bicubic)).tobytes()
    assert output.read_bytes() != vertical_first.tobytes()


def test_alpha_onto_white_is_pillows_for_every_value_and_alpha(tmp_path: Path) -> None:
    """alphaOntoWhite (for images the browser decodes with transparency) vs preprocess.to_rgb."""
    value, alpha = np.meshgrid(np.arange(256), np.arange(256))
    rgba = np.stack([value, 255 - value, (value * 7) % 256, alpha], axis=2).astype(np.uint8)
    source = tmp_path / "in.rgba"
    source.write_bytes(rgba.tobytes())
    output = tmp_path / "out.rgb"
    (tmp_path / "job.json").write_text(
        json.dumps([{"alpha": True, "input": str(source), "output": str(output)}])
    )
    assert NODE is not None
    subprocess.run(
        [NODE, str(HERE / "resize_files.mjs"), str(tmp_path / "job.json")], check=True, timeout=120
    )
    want = np.asarray(to_rgb(Image.fromarray(rgba, "RGBA")))
    got = np.frombuffer(output.read_bytes(), dtype=np.uint8).reshape(want.shape)
    assert np.array_equal(got, want)

"""The demonstration model's `xception+colour` encoder kind: its layout, recipe and registration.

Xception's 2048 features followed by the colour features of
`capgen.models.colour_features`, exported as one ONNX graph by the generic
converter. The converter learns about this kind through the `capgen.encoders`
entry point (see pyproject.toml), which names `XCEPTION_COLOUR` below. This
module is free of TensorFlow, so registering the kind, or stating its
feature size in an error message, costs nothing; the TensorFlow function is
imported only when the encoder is built.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from capgen.convert.encoder import XCEPTION_FEATURES, XCEPTION_INPUT_SIZE
from capgen.convert.encoder_registry import EncoderKindSpec, register_encoder_kind
from capgen.models import shape_head_params
from capgen.models.palette import PALETTE

KIND = "xception+colour"
# Bump whenever colour_features.py changes what it computes: with the shape
# head's and the palette's content (recipe_inputs) it keys the export cache.
# 2: the Euler number and the orientation spectrum in fewer passes (features
# within 4e-7 of recipe 1's, the Euler numbers identical).
COLOUR_RECIPE_VERSION = 2
# The cache key capgen 0.1.0 (up to commit 6cc2d59) wrote for this export: a
# hash of the converter's and the colour features' sources, for recipe version 1.
LEGACY_RECIPE = "3266ed6d3ae4b4c37f4e5e7d465e923b2a1607e65fdbdc384ae358656d8c7a6c"

INPUT_SIZE = XCEPTION_INPUT_SIZE
PROTOTYPES = PALETTE
HARMONICS = tuple(range(2, 11))
GRID = 3
PER_COLOUR_BASIC = 13
DESCRIPTOR_SIZE = PER_COLOUR_BASIC + 2 * len(HARMONICS)
COUNTS = 3
PER_COLOUR_SIZE = DESCRIPTOR_SIZE + len(shape_head_params.SHAPES) + COUNTS
GLOBAL_SIZE = 4
SLOTS = 3
SLOT_SIZE = len(PROTOTYPES) + PER_COLOUR_SIZE
COLOUR_FEATURE_SIZE = (
    len(PROTOTYPES) * (PER_COLOUR_SIZE + GRID * GRID) + SLOTS * SLOT_SIZE + GLOBAL_SIZE
)
# Calibration scenes come from the start of the index range, which
# `capgen.models.scenes.generate` always assigns to the train split.
CALIBRATION_SCENE_SEED = 8


def _content_sha256(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def recipe_inputs() -> dict[str, str]:
    """The data the colour features' graph is built from, by content (not by source file bytes)."""
    head = {
        name: getattr(shape_head_params, name)
        for name in ("SHAPES", "MEAN", "SCALE", "WEIGHTS", "BIAS")
    }
    return {
        "colour_recipe": str(COLOUR_RECIPE_VERSION),
        "shape_head_sha256": _content_sha256(head),
        "palette_sha256": _content_sha256(PALETTE),
    }


def build_xception_colour(weights_path: Path) -> Any:
    """Xception followed by the colour features, as one TensorFlow function of uint8 images."""
    from capgen.convert.encoder import build_xception_encoder
    from capgen.models.colour_features import colour_features

    return build_xception_encoder(
        weights_path, extra_features=colour_features, input_size=INPUT_SIZE
    )


def train_scene_pixels(count: int, seed: int = CALIBRATION_SCENE_SEED) -> list[Any]:
    """Rendered TRAIN-split synthetic scenes (indices 0..count-1), as encoder-ready pixels."""
    import io

    from capgen.models.scenes import render, sample_scene
    from capgen.runtime.preprocess import prepare

    pixels = []
    for index in range(count):
        scene = sample_scene(seed, index)
        pixels.append(prepare(io.BytesIO(render(scene, seed, index)), INPUT_SIZE, INPUT_SIZE))
    return pixels


XCEPTION_COLOUR = register_encoder_kind(
    EncoderKindSpec(
        name=KIND,
        feature_size=XCEPTION_FEATURES + COLOUR_FEATURE_SIZE,
        build=build_xception_colour,
        recipe_version=COLOUR_RECIPE_VERSION,
        input_size=INPUT_SIZE,
        recipe_inputs=recipe_inputs,
        calibration_pixels=train_scene_pixels,
        legacy_recipes=frozenset({LEGACY_RECIPE}),
    )
)

"""The shape head's fitting code, and the pin that ties the generated head to the encoder."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from capgen.models.shape_head import accuracy, fit_softmax


def test_fit_softmax_separates_separable_classes() -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0, 0.0], [4.0, 0.0, 1.0], [0.0, 4.0, -1.0]])
    labels = rng.integers(0, 3, 600)
    points = centres[labels] + rng.normal(0, 0.5, (600, 3))
    fitted = fit_softmax(points[:400], labels[:400], 3, steps=500)
    assert accuracy(points[400:], labels[400:], *fitted) > 0.97


def test_generated_head_matches_its_pin(tensorflow_stack: None) -> None:
    from capgen.convert import colour_features, shape_head
    from capgen.models.scenes import SHAPES

    digest = hashlib.sha256(Path(shape_head.__file__).read_bytes()).hexdigest()
    assert digest == colour_features.SHAPE_HEAD_SHA256
    assert tuple(shape_head.SHAPES) == SHAPES
    assert np.array(shape_head.WEIGHTS).shape == (colour_features.DESCRIPTOR_SIZE, len(SHAPES))
    assert len(shape_head.MEAN) == len(shape_head.SCALE) == colour_features.DESCRIPTOR_SIZE
    assert min(shape_head.SCALE) > 0


@pytest.mark.parametrize("steps", [1, 50])
def test_fit_softmax_returns_finite_parameters(steps: int) -> None:
    points = np.array([[1.0, 2.0], [1.0, 3.0], [2.0, 2.0], [2.0, 3.0]])
    for value in fit_softmax(points, np.array([0, 1, 0, 1]), 2, steps=steps):
        assert np.isfinite(value).all()

"""The shape head's fitting code, and the generated head it writes for the encoder."""

from __future__ import annotations

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


def test_generated_head_fits_the_descriptors() -> None:
    from capgen.models import shape_head_params
    from capgen.models.colour_encoder import DESCRIPTOR_SIZE
    from capgen.models.scenes import SHAPES

    assert tuple(shape_head_params.SHAPES) == SHAPES
    assert np.array(shape_head_params.WEIGHTS).shape == (DESCRIPTOR_SIZE, len(SHAPES))
    assert len(shape_head_params.MEAN) == len(shape_head_params.SCALE) == DESCRIPTOR_SIZE
    assert min(shape_head_params.SCALE) > 0


def test_committed_head_is_exactly_what_the_generator_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regenerating from the same parameters reproduces the file byte for byte, formatted as
    `ruff format` leaves it, so the formatter and the generator never fight over it."""
    from capgen.models import shape_head, shape_head_params

    committed = Path(shape_head_params.__file__).read_text()
    note = shape_head_params.__doc__.split("\n\n", 1)[1].strip()
    monkeypatch.setattr(shape_head, "TARGET", tmp_path / "shape_head_params.py")
    written = shape_head.write_module(
        np.array(shape_head_params.MEAN),
        np.array(shape_head_params.SCALE),
        np.array(shape_head_params.WEIGHTS),
        np.array(shape_head_params.BIAS),
        note,
    )
    assert written.read_text() == committed


@pytest.mark.parametrize("steps", [1, 50])
def test_fit_softmax_returns_finite_parameters(steps: int) -> None:
    points = np.array([[1.0, 2.0], [1.0, 3.0], [2.0, 2.0], [2.0, 3.0]])
    for value in fit_softmax(points, np.array([0, 1, 0, 1]), 2, steps=steps):
        assert np.isfinite(value).all()

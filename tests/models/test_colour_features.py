"""The colour-binding features: they convert to ONNX unchanged and describe what was drawn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from capgen.models import scenes
from capgen.models.features import load_image_uint8

pytestmark = pytest.mark.convert


@pytest.fixture(scope="module")
def drawn(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, list[dict]]:
    """A handful of generated scenes as the encoder sees them, with what was drawn."""
    root = tmp_path_factory.mktemp("colour-scenes")
    generated = scenes.generate(root, seed=21, counts={"train": 10, "dev": 0, "test": 0})
    names = sorted(generated)
    images = np.stack([load_image_uint8(root / scenes.IMAGES_DIRNAME / n) for n in names])
    truth = scenes.load_ground_truth(root)
    return images, [truth[n] for n in names]


@pytest.fixture(scope="module")
def computed(tensorflow_stack: None, drawn: tuple[np.ndarray, list[dict]]) -> np.ndarray:
    import tensorflow as tf

    from capgen.models.colour_features import colour_features

    return colour_features(tf.constant(drawn[0])).numpy()


def _per_colour(features: np.ndarray) -> np.ndarray:
    from capgen.models.colour_encoder import GRID, PER_COLOUR_SIZE, PROTOTYPES

    block = len(PROTOTYPES) * (PER_COLOUR_SIZE + GRID * GRID)
    return features[:, :block].reshape(len(features), len(PROTOTYPES), -1)


def test_size_matches_the_declared_constant(computed: np.ndarray) -> None:
    from capgen.models.colour_encoder import COLOUR_FEATURE_SIZE

    assert computed.shape[1] == COLOUR_FEATURE_SIZE
    assert computed.dtype == np.float32
    assert np.isfinite(computed).all()


def test_drawn_colours_are_present_and_others_are_zero(
    computed: np.ndarray, drawn: tuple[np.ndarray, list[dict]]
) -> None:
    from capgen.models.colour_encoder import PROTOTYPES

    per_colour = _per_colour(computed)
    for row, scene in enumerate(drawn[1]):
        present = {g["colour"] for g in scene["groups"]}
        for column, colour in enumerate(PROTOTYPES):
            presence = per_colour[row, column, 0]
            if colour in present:
                assert presence > 0.9, (colour, scene)
            else:
                assert np.all(per_colour[row, column, :] == 0), (colour, scene)


def test_euler_number_counts_the_objects_of_each_colour(
    computed: np.ndarray, drawn: tuple[np.ndarray, list[dict]]
) -> None:
    from capgen.models.colour_encoder import PROTOTYPES

    per_colour = _per_colour(computed)
    euler_column = 6
    colours = list(PROTOTYPES)
    for row, scene in enumerate(drawn[1]):
        for group in scene["groups"]:
            counted = per_colour[row, colours.index(group["colour"]), euler_column]
            assert counted == len(group["objects"]), (group, counted)


def test_square_and_diamond_have_opposite_fourfold_harmonic(
    tensorflow_stack: None, tmp_path: Path
) -> None:
    """The k=4 orientation harmonic tells a square (+) from a diamond (-) of the same colour."""
    import tensorflow as tf

    from capgen.models.colour_encoder import HARMONICS, PER_COLOUR_BASIC
    from capgen.models.colour_features import colour_features

    def single(shape: str) -> np.ndarray:
        scene = scenes.Scene(
            "probe.jpg",
            300,
            300,
            "white",
            "plain",
            95,
            (scenes.Group("blue", shape, "large", (scenes.PlacedObject(150, 150, 50, 0),)),),
        )
        (tmp_path / "probe.jpg").write_bytes(scenes.render(scene, 0, 0))
        image = load_image_uint8(tmp_path / "probe.jpg")[None]
        return _per_colour(colour_features(tf.constant(image)).numpy())[0, 2]

    k4_real = PER_COLOUR_BASIC + 2 * HARMONICS.index(4)
    assert single("square")[k4_real] > 0.5
    assert single("diamond")[k4_real] < -0.5
    assert abs(single("circle")[k4_real]) < 0.2


def test_onnx_export_matches_tensorflow(
    tensorflow_stack: None, computed: np.ndarray, drawn: tuple[np.ndarray, list[dict]]
) -> None:
    import onnxruntime as ort
    import tensorflow as tf
    import tf2onnx

    from capgen.models.colour_features import colour_features

    spec = (tf.TensorSpec([None, 299, 299, 3], tf.uint8, name="image"),)
    function = tf.function(colour_features, input_signature=spec)
    proto, _ = tf2onnx.convert.from_function(function, input_signature=spec, opset=17)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    exported = session.run(None, {session.get_inputs()[0].name: drawn[0]})[0]
    # Masks are sharp sigmoids, so float reassociation moves a few values slightly.
    assert np.allclose(exported, computed, atol=0.02), np.abs(exported - computed).max()
    assert np.median(np.abs(exported - computed)) < 1e-4


def test_slots_list_the_colours_left_to_right(
    computed: np.ndarray, drawn: tuple[np.ndarray, list[dict]]
) -> None:
    """Slot j carries the one-hot of the j-th group from the left, the order captions use."""
    from capgen.models.colour_encoder import GRID, PER_COLOUR_SIZE, PROTOTYPES, SLOT_SIZE, SLOTS

    start = len(PROTOTYPES) * (PER_COLOUR_SIZE + GRID * GRID)
    slots = computed[:, start : start + SLOTS * SLOT_SIZE].reshape(len(computed), SLOTS, SLOT_SIZE)
    colours = list(PROTOTYPES)
    for row, scene in enumerate(drawn[1]):
        one_hot = slots[row, :, : len(colours)]
        named = [colours[int(np.argmax(s))] for s in one_hot if s.max() > 1.0]
        assert named == [g["colour"] for g in scene["groups"]]
        assert computed[row, -1] == pytest.approx(len(scene["groups"]), abs=0.01)


def test_shape_head_and_count_one_hot_name_what_was_drawn(
    computed: np.ndarray, drawn: tuple[np.ndarray, list[dict]]
) -> None:
    from capgen.models import shape_head_params as shape_head
    from capgen.models.colour_encoder import COUNTS, DESCRIPTOR_SIZE, PROTOTYPES

    per_colour = _per_colour(computed)
    colours = list(PROTOTYPES)
    shapes_at = slice(DESCRIPTOR_SIZE, DESCRIPTOR_SIZE + len(shape_head.SHAPES))
    counts_at = slice(shapes_at.stop, shapes_at.stop + COUNTS)
    for row, scene in enumerate(drawn[1]):
        for group in scene["groups"]:
            block = per_colour[row, colours.index(group["colour"])]
            assert shape_head.SHAPES[int(np.argmax(block[shapes_at]))] == group["shape"]
            assert int(np.argmax(block[counts_at])) + 1 == len(group["objects"])


@pytest.fixture(scope="module")
def masks(tensorflow_stack: None, drawn: tuple[np.ndarray, list[dict]]) -> np.ndarray:
    """The soft masks the descriptors are computed from, [N,H,W,C] float32."""
    import tensorflow as tf

    from capgen.models.colour_features import POOL, _masks

    rgb = tf.nn.avg_pool2d(tf.cast(drawn[0], tf.float32) / 255.0, POOL, POOL, "VALID")
    return _masks(rgb).numpy()


def _correlate_same(planes: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """TensorFlow's 'SAME' 3x3 depthwise correlation of [N,H,W,C] planes with zero padding, float64."""
    padded = np.pad(planes.astype(np.float64), [(0, 0), (1, 1), (1, 1), (0, 0)])
    size = planes.shape[1]
    return sum(
        kernel[i, j] * padded[:, i : i + size, j : j + size, :] for i in range(3) for j in range(3)
    )


def test_euler_number_equals_gray_bit_quad_counts(masks: np.ndarray) -> None:
    """The arithmetic form equals counting each 2x2 code (Gray's n1 - n3 - 2 nD) / 4, exactly."""
    import tensorflow as tf

    from capgen.models.colour_features import _euler_number

    binary = (masks > 0.5).astype(np.float32)
    padded = np.pad(binary, [(0, 0), (1, 1), (1, 1), (0, 0)]).astype(np.int64)
    codes = (
        padded[:, :-1, :-1]
        + 2 * padded[:, :-1, 1:]
        + 4 * padded[:, 1:, :-1]
        + 8 * padded[:, 1:, 1:]
    )

    def count(values: tuple[int, ...]) -> np.ndarray:
        return np.isin(codes, values).sum(axis=(1, 2))

    reference = (count((1, 2, 4, 8)) - count((7, 11, 13, 14)) - 2 * count((6, 9))) / 4
    computed = _euler_number(tf.constant(binary)).numpy()
    assert (reference != 0).any()  # the scenes do have objects
    np.testing.assert_array_equal(computed, reference.astype(np.float32))


def _step_by_step_spectrum(gx: Any, gy: Any, magnitude: Any) -> np.ndarray:
    """The spectrum as recipe 1 computed it: u^k first, then weighted by |g| and summed (float32)."""
    import tensorflow as tf

    from capgen.models.colour_encoder import HARMONICS
    from capgen.models.colour_features import _EPS

    ux, uy = gx / magnitude, gy / magnitude
    total = tf.reduce_sum(magnitude, axis=[1, 2]) + _EPS
    real, imag, parts = ux, uy, []
    for k in range(2, max(HARMONICS) + 1):
        real, imag = real * ux - imag * uy, real * uy + imag * ux
        if k in HARMONICS:
            parts.append(tf.reduce_sum(magnitude * real, axis=[1, 2]) / total)
            parts.append(tf.reduce_sum(magnitude * imag, axis=[1, 2]) / total)
    return tf.stack(parts, axis=-1).numpy()


def test_orientation_spectrum_matches_a_float64_reference(masks: np.ndarray) -> None:
    """sum(|g| u^k) / sum(|g|) with u^k built step by step: the graph's form agrees with float64
    up to float32 summation of ~20k terms, and with recipe 1's float32 form to rounding."""
    import tensorflow as tf

    from capgen.models.colour_encoder import HARMONICS
    from capgen.models.colour_features import _EPS, _orientation_spectrum

    sobel = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 4.0
    gx, gy = _correlate_same(masks, sobel), _correlate_same(masks, sobel.T)
    magnitude = np.sqrt(gx * gx + gy * gy + _EPS * _EPS)
    u = (gx + 1j * gy) / magnitude
    total = magnitude.sum(axis=(1, 2)) + _EPS
    columns = []
    for k in HARMONICS:
        weighted = (magnitude * u**k).sum(axis=(1, 2)) / total
        columns += [weighted.real, weighted.imag]
    reference = np.stack(columns, axis=-1)

    inputs = [tf.constant(value.astype(np.float32)) for value in (gx, gy, magnitude)]
    computed = _orientation_spectrum(*inputs).numpy()
    assert np.abs(reference).max() > 0.1
    np.testing.assert_allclose(computed, reference, rtol=0, atol=2e-4)
    np.testing.assert_allclose(computed, _step_by_step_spectrum(*inputs), rtol=0, atol=1e-6)

"""The opt-in fast step (INT8 output layer + exact rescoring) picks the exact step's words.

Weights here are flat random (not peaked), so many steps have near-ties
between the best words: exactly the cases where INT8 logits alone flip the
choice, and what the float32 rescoring of the top candidates must get right.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from capgen.convert.step_graph import (
    DecoderWeights,
    build_projection_graph,
    build_step_graph,
    fast_step_from_exact,
    quantize_int8_blocks,
)
from capgen.runtime.decoding import greedy_search
from capgen.runtime.manifest import DecoderSpec
from capgen.runtime.step_model import StepModel
from capgen.runtime.vocabulary import Vocabulary

VOCAB, UNITS, FEATURES = 3000, 64, 96


def _weights(seed: int = 0) -> DecoderWeights:
    rng = np.random.default_rng(seed)

    def kernel(rows: int, cols: int) -> np.ndarray:
        return (rng.normal(0.0, 1.0, (rows, cols)) / np.sqrt(rows)).astype(np.float32)

    return DecoderWeights(
        photo_kernel=kernel(FEATURES, UNITS),
        photo_bias=rng.normal(0, 0.1, UNITS).astype(np.float32),
        photo_activation="relu",
        embedding=rng.normal(0, 1, (VOCAB, UNITS)).astype(np.float32),
        lstm_kernel=kernel(UNITS, 4 * UNITS),
        lstm_recurrent_kernel=kernel(UNITS, 4 * UNITS),
        lstm_bias=rng.normal(0, 0.1, 4 * UNITS).astype(np.float32),
        recurrent_activation="sigmoid",
        merge="add",
        photo_first=True,
        hidden_kernel=kernel(UNITS, UNITS),
        hidden_bias=rng.normal(0, 0.1, UNITS).astype(np.float32),
        hidden_activation="relu",
        output_kernel=kernel(UNITS, VOCAB) * 3.0,
        output_bias=rng.normal(0, 0.5, VOCAB).astype(np.float32),
    )


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


@pytest.fixture(scope="module")
def weights() -> DecoderWeights:
    return _weights()


def test_int8_blocks_round_trip_with_padding_and_zero_blocks() -> None:
    rng = np.random.default_rng(1)
    kernel = rng.normal(0, 1, (200, 7)).astype(np.float32)  # 200 = one full block + a padded one
    kernel[:128, 3] = 0.0
    packed, scales = quantize_int8_blocks(kernel, 128)
    assert packed.shape == (7, 2, 128) and packed.dtype == np.uint8 and scales.shape == (14,)
    dequantized = (packed.astype(np.float64) - 128) * scales.reshape(7, 2, 1)
    restored = dequantized.reshape(7, 256)[:, :200].T
    step = np.repeat(scales.reshape(7, 2), 128, axis=1)[:, :200].T
    assert np.all(np.abs(restored - kernel) <= step / 2 + 1e-7)
    assert np.all(restored[:128, 3] == 0.0)
    assert np.all(packed[:, 1, 200 - 128 :] == 128)  # padding quantizes to zero


def test_fast_step_keeps_the_state_and_the_best_words_exactly(weights: DecoderWeights) -> None:
    exact = _session(build_step_graph(weights))
    fast_model = build_step_graph(weights, output_layer="int8_rescored")
    fast = _session(fast_model)
    rng = np.random.default_rng(2)
    rows = 512
    feeds = {
        "word": rng.integers(0, VOCAB, rows),
        "h": rng.normal(0, 0.4, (rows, UNITS)).astype(np.float32),
        "c": rng.normal(0, 0.4, (rows, UNITS)).astype(np.float32),
        "photo": np.maximum(rng.normal(0, 1, (rows, UNITS)), 0).astype(np.float32),
    }
    want_lp, want_h, want_c = exact.run(None, feeds)
    got_lp, got_h, got_c = fast.run(None, feeds)
    assert np.array_equal(got_h, want_h) and np.array_equal(got_c, want_c)

    best = np.argsort(-want_lp, axis=1, kind="stable")[:, :5]
    assert np.array_equal(np.argsort(-got_lp, axis=1, kind="stable")[:, :5], best)
    ordered = np.sort(want_lp, axis=1)
    near_ties = int(np.sum(ordered[:, -1] - ordered[:, -2] < 0.05))
    assert near_ties >= 10  # the test data has the cases INT8 alone gets wrong
    # The best words' scores are exact up to the (approximate) softmax normaliser.
    gap = np.take_along_axis(got_lp, best, 1) - np.take_along_axis(want_lp, best, 1)
    assert np.abs(gap - gap[:, :1]).max() < 1e-4
    assert np.abs(gap).max() < 0.05
    # The other words' scores are INT8: close, but not the exact step's.
    error = np.abs(got_lp - want_lp)
    assert 1e-4 < error.max() < 1.0 and error.mean() < 0.05

    props = {p.key: p.value for p in fast_model.metadata_props}
    assert props["capgen.output_layer"] == "int8_rescored"
    assert "capgen.output_layer" not in {p.key for p in build_step_graph(weights).metadata_props}


def test_fast_step_greedy_captions_equal_the_exact_ones(
    weights: DecoderWeights, tmp_path: Path
) -> None:
    onnx.save(build_projection_graph(weights), tmp_path / "photo_projection.onnx")
    onnx.save(build_step_graph(weights), tmp_path / "decoder_step.onnx")
    onnx.save(build_step_graph(weights, output_layer="int8_rescored"), tmp_path / "fast.onnx")
    spec = DecoderSpec("photo_projection.onnx", "decoder_step.onnx", UNITS, UNITS)
    words: list[str | None] = [None, "start", "end", *(f"w{i}" for i in range(VOCAB - 3))]
    vocabulary = Vocabulary(words=tuple(words), start_id=1, end_id=2)
    exact = StepModel(
        tmp_path / "photo_projection.onnx", tmp_path / "decoder_step.onnx", spec, VOCAB, 1
    )
    fast = StepModel(tmp_path / "photo_projection.onnx", tmp_path / "fast.onnx", spec, VOCAB, 1)
    fast.check_vocabulary()
    rng = np.random.default_rng(3)
    photo = exact.project(rng.gamma(0.6, 0.5, (200, FEATURES)).astype(np.float32))
    want = greedy_search(exact, photo, vocabulary, 16)
    got = greedy_search(fast, photo, vocabulary, 16)
    assert [h[0].tokens for h in got] == [h[0].tokens for h in want]
    assert sum(len(h[0].tokens) for h in want) > 1000


def test_an_existing_exact_step_converts_to_the_same_fast_step(weights: DecoderWeights) -> None:
    """Folders written before the fast step existed can gain it without their Keras files."""
    from_weights = _session(build_step_graph(weights, output_layer="int8_rescored"))
    exact = build_step_graph(weights, {"capgen.max_length": "16"})
    converted_model = fast_step_from_exact(exact)
    converted = _session(converted_model)
    rng = np.random.default_rng(4)
    feeds = {
        "word": rng.integers(0, VOCAB, 8),
        "h": rng.normal(0, 0.4, (8, UNITS)).astype(np.float32),
        "c": rng.normal(0, 0.4, (8, UNITS)).astype(np.float32),
        "photo": rng.random((8, UNITS)).astype(np.float32),
    }
    for got, want in zip(converted.run(None, feeds), from_weights.run(None, feeds), strict=True):
        assert np.array_equal(got, want)
    props = {p.key: p.value for p in converted_model.metadata_props}
    assert props["capgen.output_layer"] == "int8_rescored" and props["capgen.max_length"] == "16"
    with pytest.raises(ValueError, match="not a capgen float32 decoder step"):
        fast_step_from_exact(converted_model)

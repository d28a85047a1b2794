"""The whole recipe on a tiny set, so it cannot rot: generate, extract, train, convert, caption.

Full training is a documented command (models/README.md); this runs one short
epoch on 30 scenes with a colour-features-only encoder (the Xception part
would only make the test slower, the plumbing is the same) and checks that the
converted model, run by the capgen runtime, decodes exactly what the Keras
model decodes greedily.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from capgen.models import scenes

pytestmark = [pytest.mark.convert, pytest.mark.slow]


def _colour_encoder(target: Path) -> Path:
    """A contract-shaped encoder ONNX (uint8 `image` -> `features`) computing only the colour features."""
    import onnx
    import tensorflow as tf
    import tf2onnx

    from capgen.models.colour_features import colour_features

    spec = (tf.TensorSpec([None, 299, 299, 3], tf.uint8, name="image"),)
    proto, _ = tf2onnx.convert.from_function(
        tf.function(colour_features, input_signature=spec), input_signature=spec, opset=17
    )
    graph = proto.graph
    graph.node.append(onnx.helper.make_node("Identity", [graph.output[0].name], ["features"]))
    graph.output[0].name = "features"
    onnx.save(proto, str(target))
    return target


def test_recipe_trains_converts_and_runs(
    tensorflow_stack: None, tf_keras_stack: None, tmp_path: Path
) -> None:
    import keras

    from capgen.convert.convert_model import convert_model
    from capgen.convert.hashing import sha256_file
    from capgen.models.evaluate import (
        evaluate_captions,
        keras_greedy,
        runtime_captions,
        runtime_captions_from_cache,
    )
    from capgen.models.features import cache_path, cached_features
    from capgen.models.flickr8k import Flickr8kDataset
    from capgen.models.train import train

    root = tmp_path / "scenes"
    scenes.generate(root, seed=1, counts={"train": 20, "dev": 5, "test": 5})
    encoder = _colour_encoder(tmp_path / "colour.onnx")

    record = train(
        root,
        tmp_path / "trained",
        encoder=str(encoder),
        epochs=1,
        batch_size=64,
        show_progress=False,
    )
    assert record["epochs_run"] == 1 and np.isfinite(record["val_loss"][0])
    assert cache_path(root / scenes.IMAGES_DIRNAME, encoder).is_file(), "features are cached"
    with open(tmp_path / "trained" / "tokenizer.p", "rb") as handle:
        tokenizer = pickle.load(handle)
    assert type(tokenizer).__module__.startswith("tf_keras"), "the tutorial's Tokenizer class"
    assert {"start", "end", "circle"} <= set(tokenizer.word_index)

    folder = tmp_path / "converted"
    report = convert_model(
        tmp_path / "trained" / "model.keras",
        tmp_path / "trained" / "tokenizer.p",
        folder,
        encoder=str(encoder),
    )
    assert report.max_length == record["max_length"]

    dataset = Flickr8kDataset(root)
    names = sorted(dataset.descriptions("test"))
    from_runtime = runtime_captions(folder, [dataset.images_dir / n for n in names])
    features = cached_features(dataset.images_dir, names, encoder, show_progress=False)
    model = keras.models.load_model(tmp_path / "trained" / "model.keras")
    from_keras = keras_greedy(
        model, tokenizer, np.stack([features[n] for n in names]), record["max_length"]
    )
    assert from_runtime == from_keras

    # The features cached above are this folder's encoder's: decoding them gives the same captions.
    assert runtime_captions_from_cache(folder, dataset.images_dir, names) == from_runtime

    # Stage 2 of the recipe continues the trained model: same tokenizer, lower loss at once.
    again = train(
        root,
        tmp_path / "stage2",
        encoder=str(encoder),
        epochs=1,
        batch_size=64,
        show_progress=False,
        init_from=tmp_path / "trained",
        learning_rate=1e-4,
    )
    assert again["init_from"]["model_sha256"] == sha256_file(tmp_path / "trained" / "model.keras")
    assert again["max_length"] == record["max_length"] and again["learning_rate"] == 1e-4
    with open(tmp_path / "stage2" / "tokenizer.p", "rb") as handle:
        assert pickle.load(handle).word_index == tokenizer.word_index
    assert again["loss"][0] < record["loss"][0], "stage 2 starts from the trained weights"

    metrics = evaluate_captions(root, dict(zip(names, from_runtime, strict=True)))
    assert metrics["images"] == 5
    assert 0.0 <= metrics["caption_metrics"]["BLEU-1"] <= 1.0
    assert metrics["colour_shape"]["all"]["scenes"] == 5

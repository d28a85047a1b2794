"""Converted decoders caption exactly like the Keras model they came from.

For every way a tutorial user can have saved their decoder (Keras 2 full .h5,
Keras 2 weights + JSON, tf_keras .keras, Keras 3 .keras, Keras 3 .h5, Keras 3
weights + JSON),
the tutorial's own greedy loop in Keras and a greedy loop over the converted
step graph must give the same words for every photo, with next-word
probabilities within 1e-5 at every step. The main model is the REAL tutorial
decoder config (vocabulary 7,577) with its real tokenizer; variants cover
hard_sigmoid (both Keras definitions), concatenate in either order, and
VGG16-sized (4096) features.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from keras_decoder_builders import (
    REAL_CONFIG_ROLE_NAMES,
    Caption,
    DecoderShape,
    apply_role_weights,
    assert_same_captions,
    build_keras3_decoder,
    build_tf_keras_decoder,
    end_bias_boost,
    fit_small_tokenizer,
    load_tokenizer_like_the_tutorial,
    onnx_greedy,
    peaked_role_weights,
    synthetic_photo_features,
    tiny_encoder_onnx,
    tutorial_greedy,
)

pytestmark = pytest.mark.convert

REAL_SHAPE = DecoderShape()
REAL_TOKENIZER = "decoder_keras2.8.tokenizer.p"
TEST_PHOTOS = synthetic_photo_features(10, 2048, seed=11)


@dataclass
class SavedDecoder:
    """One saved decoder file, and the in-memory Keras model that wrote it (the reference)."""

    model_file: Path
    architecture: Path | None
    keras_model: Any


def _predict(model: Any) -> Any:
    return lambda photos, sequences: model.predict_on_batch([photos, sequences.astype(np.float32)])


def _convert(saved: SavedDecoder, tokenizer: Path, out: Path, encoder: Path) -> Path:
    from capgen.convert.convert_model import convert_model
    from capgen.convert.model_folder import describe_encoder

    convert_model(
        saved.model_file,
        tokenizer,
        out,
        architecture_json=saved.architecture,
        encoder=describe_encoder(encoder),
    )
    return out


def _convert_real(
    saved: SavedDecoder, shared_data: Path, photos: np.ndarray, encoder: Path, out: Path
) -> tuple[Path, list[Caption]]:
    """Convert a real-config decoder; return the folder and the tutorial loop's captions in Keras."""
    tokenizer_path = shared_data / "model_configs" / REAL_TOKENIZER
    folder = _convert(saved, tokenizer_path, out, encoder)
    expected = tutorial_greedy(
        _predict(saved.keras_model),
        load_tokenizer_like_the_tutorial(tokenizer_path),
        photos,
        REAL_SHAPE.max_length,
    )
    return folder, expected


@pytest.fixture(scope="session")
def real_decoders(
    tmp_path_factory: pytest.TempPathFactory, shared_data: Path, tf_keras_stack: None
) -> dict[str, SavedDecoder]:
    """The real tutorial config saved in all six ways, all with the same peaked weights."""
    import tf_keras

    folder = tmp_path_factory.mktemp("real_decoders")
    weights = peaked_role_weights(REAL_SHAPE, seed=7)
    config_path = shared_data / "model_configs" / "decoder_keras2.8.json"
    keras2 = tf_keras.models.model_from_json(config_path.read_text())
    apply_role_weights(keras2, weights, REAL_CONFIG_ROLE_NAMES)
    tokenizer = load_tokenizer_like_the_tutorial(shared_data / "model_configs" / REAL_TOKENIZER)
    trial = tutorial_greedy(_predict(keras2), tokenizer, TEST_PHOTOS, REAL_SHAPE.max_length)
    weights["output_dense"][1][tokenizer.word_index["end"]] += end_bias_boost(
        trial, tokenizer.word_index["end"]
    )
    apply_role_weights(keras2, weights, REAL_CONFIG_ROLE_NAMES)
    keras2.save(folder / "model_9.h5")
    keras2.save_weights(folder / "model_9_weights.h5")
    keras2.save(folder / "model_9_tf_keras.keras")

    keras3 = build_keras3_decoder(REAL_SHAPE)
    apply_role_weights(keras3, weights)
    keras3.save(folder / "model_9.keras")
    keras3.save(folder / "model_9_keras3.h5")
    keras3.save_weights(folder / "model_9.weights.h5")
    (folder / "model_9_keras3.json").write_text(keras3.to_json())
    return {
        "keras2 full .h5": SavedDecoder(folder / "model_9.h5", None, keras2),
        "keras2 weights .h5 + json": SavedDecoder(
            folder / "model_9_weights.h5", config_path, keras2
        ),
        "tf_keras .keras": SavedDecoder(folder / "model_9_tf_keras.keras", None, keras2),
        "keras3 .keras": SavedDecoder(folder / "model_9.keras", None, keras3),
        "keras3 .h5": SavedDecoder(folder / "model_9_keras3.h5", None, keras3),
        "keras3 .weights.h5 + json": SavedDecoder(
            folder / "model_9.weights.h5", folder / "model_9_keras3.json", keras3
        ),
    }


@pytest.fixture(scope="session")
def encoder_2048(tmp_path_factory: pytest.TempPathFactory, tensorflow_stack: None) -> Path:
    return tiny_encoder_onnx(tmp_path_factory.mktemp("encoder") / "encoder.onnx", 2048)


@pytest.fixture(scope="session")
def real_photo_features(flickr_photos: list[Path], tensorflow_stack: None) -> np.ndarray:
    """Features of the 12 real photos from a randomly initialised Keras Xception.

    What is under test is the decoder; any fixed feature extractor will do, and
    this keeps the test independent of the ImageNet weights and the ONNX encoder.
    """
    import keras
    from PIL import Image

    keras.utils.set_random_seed(3)
    xception = keras.applications.Xception(
        weights=None, include_top=False, pooling="avg", input_shape=(299, 299, 3)
    )
    pixels = []
    for path in flickr_photos:
        with Image.open(path) as image:
            resized = image.convert("RGB").resize((299, 299), Image.Resampling.BICUBIC)
            pixels.append(np.asarray(resized, dtype=np.float32) / 127.5 - 1.0)
    features = np.asarray(xception.predict_on_batch(np.stack(pixels)), dtype=np.float32)
    # Random Xception features barely differ between photos; spread them so captions differ.
    spread = (features - features.mean(axis=0)) / (features.std(axis=0) + 1e-6)
    return np.maximum(spread, 0.0).astype(np.float32)


FORMATS = [
    "keras2 full .h5",
    "keras2 weights .h5 + json",
    "tf_keras .keras",
    "keras3 .keras",
    "keras3 .h5",
    "keras3 .weights.h5 + json",
]


@pytest.mark.parametrize("saved_as", FORMATS)
def test_real_decoder_captions_match_keras(
    saved_as: str,
    real_decoders: dict[str, SavedDecoder],
    shared_data: Path,
    encoder_2048: Path,
    tmp_path: Path,
) -> None:
    folder, expected = _convert_real(
        real_decoders[saved_as], shared_data, TEST_PHOTOS, encoder_2048, tmp_path / "model"
    )
    actual = onnx_greedy(folder, TEST_PHOTOS)

    assert_same_captions(expected, actual)
    # A meaningful comparison: peaked softmax, captions that differ, and some that stop on `end`.
    first_step = np.stack([caption.probabilities[0] for caption in expected])
    assert float(np.median(first_step.max(axis=1))) > 0.1  # uniform would be 1/7,577
    assert len({tuple(caption.words) for caption in expected}) > 1
    assert any(caption.words[-1:] == ["end"] for caption in expected)


def test_real_decoder_on_real_photos(
    real_decoders: dict[str, SavedDecoder],
    real_photo_features: np.ndarray,
    shared_data: Path,
    encoder_2048: Path,
    tmp_path: Path,
) -> None:
    folder, expected = _convert_real(
        real_decoders["keras2 full .h5"],
        shared_data,
        real_photo_features,
        encoder_2048,
        tmp_path / "model",
    )
    assert_same_captions(expected, onnx_greedy(folder, real_photo_features))


def test_real_decoder_manifest_describes_the_model(
    real_decoders: dict[str, SavedDecoder],
    shared_data: Path,
    encoder_2048: Path,
    tmp_path: Path,
) -> None:
    tokenizer_path = shared_data / "model_configs" / REAL_TOKENIZER
    folder = _convert(
        real_decoders["keras2 full .h5"], tokenizer_path, tmp_path / "model", encoder_2048
    )
    manifest = json.loads((folder / "manifest.json").read_text())
    vocabulary = json.loads((folder / "vocabulary.json").read_text())

    assert manifest["vocabulary"]["size"] == len(vocabulary) == 7577
    assert vocabulary[0] is None
    assert vocabulary[manifest["vocabulary"]["start_id"]] == "start"
    assert vocabulary[manifest["vocabulary"]["end_id"]] == "end"
    assert manifest["max_length"] == 32
    assert manifest["decoder"]["recurrent_activation"] == "sigmoid"
    assert manifest["decoder"]["merge"] == "add"
    assert manifest["encoder"]["feature_size"] == 2048


# --- variants: other members of the tutorial family, with a small real tokenizer -----------------

VARIANTS = {
    "keras2 hard_sigmoid add 2048": (2, DecoderShape(recurrent_activation="hard_sigmoid")),
    "keras2 concatenate words-first 4096": (
        2,
        DecoderShape(
            feature_size=4096, merge="concatenate", photo_first=False, units=128, hidden_size=192
        ),
    ),
    "keras3 hard_sigmoid add 2048": (3, DecoderShape(recurrent_activation="hard_sigmoid")),
    "keras3 concatenate photo-first 4096": (
        3,
        DecoderShape(
            feature_size=4096,
            merge="concatenate",
            photo_first=True,
            max_length=20,
            embedding_size=64,
        ),
    ),
}


@pytest.fixture(scope="session")
def small_tokenizer(
    tmp_path_factory: pytest.TempPathFactory, tf_keras_stack: None
) -> tuple[Path, Any]:
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.p"
    return path, fit_small_tokenizer(path)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_family_variant_captions_match_keras(
    variant: str,
    small_tokenizer: tuple[Path, Any],
    tmp_path: Path,
) -> None:
    keras_major, base_shape = VARIANTS[variant]
    tokenizer_path, tokenizer = small_tokenizer
    shape = DecoderShape(**{**base_shape.__dict__, "vocab_size": len(tokenizer.word_index) + 1})
    build = build_tf_keras_decoder if keras_major == 2 else build_keras3_decoder
    model = build(shape)
    apply_role_weights(model, peaked_role_weights(shape, seed=5))
    model_file = tmp_path / ("model.h5" if keras_major == 2 else "model.keras")
    model.save(model_file)
    encoder = tiny_encoder_onnx(tmp_path / "encoder.onnx", shape.feature_size)
    folder = _convert(
        SavedDecoder(model_file, None, model), tokenizer_path, tmp_path / "out", encoder
    )
    photos = synthetic_photo_features(8, shape.feature_size, seed=13)

    expected = tutorial_greedy(_predict(model), tokenizer, photos, shape.max_length)
    assert_same_captions(expected, onnx_greedy(folder, photos))

    manifest = json.loads((folder / "manifest.json").read_text())
    if shape.recurrent_activation == "hard_sigmoid":
        assert manifest["decoder"]["recurrent_activation"] == f"hard_sigmoid_keras{keras_major}"
    assert manifest["decoder"]["merge"] == shape.merge
    assert manifest["encoder"]["feature_size"] == shape.feature_size
    assert manifest["max_length"] == shape.max_length


def test_runtime_captioner_reads_the_folder_and_agrees(
    real_decoders: dict[str, SavedDecoder],
    shared_data: Path,
    encoder_2048: Path,
    tmp_path: Path,
) -> None:
    """The converted folder, run by capgen's own runtime (greedy), gives the tutorial's words."""
    from capgen.runtime.captioner import Captioner
    from capgen.runtime.decoding import DecodingOptions

    folder, expected = _convert_real(
        real_decoders["keras3 .keras"], shared_data, TEST_PHOTOS, encoder_2048, tmp_path / "model"
    )

    captioner = Captioner(folder)
    results = captioner.decode_features(TEST_PHOTOS, DecodingOptions(beam_size=1))
    vocabulary = json.loads((folder / "vocabulary.json").read_text())
    for want, got in zip(expected, results, strict=True):
        assert [
            vocabulary[token] for token in got.tokens if vocabulary[token] is not None
        ] == want.words

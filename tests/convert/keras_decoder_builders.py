"""Build tutorial decoders in real Keras (2 and 3), and run both greedy loops to compare.

The reference loop is the tutorial's own `generate_desc` (texts_to_sequences ->
pad_sequences -> predict -> argmax -> word_for_id), run in Keras; the other is a
plain greedy loop over the converted ONNX step graph. The real test weights were
never published, so the decoders get random weights scaled up until the softmax
is peaked (a flat softmax would make argmax ties, and the test meaningless).
"""

from __future__ import annotations

import contextlib
import json
import pickle
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Roles of the tutorial decoder's weighted layers, in the names we give them when building.
ROLES = ("photo_dense", "embedding", "lstm", "hidden_dense", "output_dense")
REAL_CONFIG_ROLE_NAMES = {
    "photo_dense": "dense_6",
    "embedding": "embedding_2",
    "lstm": "lstm_2",
    "hidden_dense": "dense_7",
    "output_dense": "dense_8",
}
TOKENIZER_MODULE_PATHS = (
    "keras_preprocessing.text",
    "keras.preprocessing.text",
    "keras.src.preprocessing.text",
    "keras.src.legacy.preprocessing.text",
)


@dataclass(frozen=True)
class DecoderShape:
    feature_size: int = 2048
    max_length: int = 32
    vocab_size: int = 7577
    embedding_size: int = 256
    units: int = 256
    projection_size: int = 256
    hidden_size: int = 256
    recurrent_activation: str = "sigmoid"
    merge: str = "add"
    photo_first: bool = True

    @property
    def merged_size(self) -> int:
        return self.units if self.merge == "add" else self.units + self.projection_size


def peaked_role_weights(
    shape: DecoderShape, seed: int, scale: float = 2.0
) -> dict[str, list[np.ndarray]]:
    """Random weights, scaled so the next-word softmax has a clear winner most steps.

    Scale 2 gives top probabilities of about 0.15-0.7 among 7,577 words while
    keeping logits moderate, so Keras and onnxruntime agree to ~3e-6 (well
    inside the 1e-5 asked); larger scales amplify float32 rounding in the logits.
    """
    rng = np.random.default_rng(seed)

    def kernel(rows: int, cols: int, gain: float = scale) -> np.ndarray:
        return (rng.normal(0.0, 1.0, (rows, cols)) * gain / np.sqrt(rows)).astype(np.float32)

    def bias(size: int) -> np.ndarray:
        return rng.normal(0.0, 0.5, size).astype(np.float32)

    units = shape.units
    return {
        "photo_dense": [
            kernel(shape.feature_size, shape.projection_size),
            bias(shape.projection_size),
        ],
        "embedding": [
            rng.normal(0.0, 1.0, (shape.vocab_size, shape.embedding_size)).astype(np.float32)
        ],
        "lstm": [
            kernel(shape.embedding_size, 4 * units),
            kernel(units, 4 * units),
            bias(4 * units),
        ],
        "hidden_dense": [kernel(shape.merged_size, shape.hidden_size), bias(shape.hidden_size)],
        "output_dense": [
            kernel(shape.hidden_size, shape.vocab_size, 2 * scale),
            bias(shape.vocab_size),
        ],
    }


def apply_role_weights(
    model: Any, weights: dict[str, list[np.ndarray]], names: dict[str, str] | None = None
) -> None:
    names = names or {role: role for role in ROLES}
    for role, arrays in weights.items():
        model.get_layer(names[role]).set_weights(arrays)


def _build(
    layers_module: Any, input_fn: Callable[..., Any], model_cls: Any, shape: DecoderShape
) -> Any:
    photo = input_fn(shape=(shape.feature_size,), name="photo_features")
    words = input_fn(shape=(shape.max_length,), name="word_ids")
    photo_branch = layers_module.Dropout(0.5)(photo)
    photo_branch = layers_module.Dense(
        shape.projection_size, activation="relu", name="photo_dense"
    )(photo_branch)
    word_branch = layers_module.Embedding(
        shape.vocab_size, shape.embedding_size, mask_zero=True, name="embedding"
    )(words)
    word_branch = layers_module.Dropout(0.5)(word_branch)
    word_branch = layers_module.LSTM(
        shape.units, recurrent_activation=shape.recurrent_activation, name="lstm"
    )(word_branch)
    pair = [photo_branch, word_branch] if shape.photo_first else [word_branch, photo_branch]
    merged = (layers_module.Add() if shape.merge == "add" else layers_module.Concatenate())(pair)
    hidden = layers_module.Dense(shape.hidden_size, activation="relu", name="hidden_dense")(merged)
    output = layers_module.Dense(shape.vocab_size, activation="softmax", name="output_dense")(
        hidden
    )
    return model_cls(inputs=[photo, words], outputs=output)


def build_keras3_decoder(shape: DecoderShape) -> Any:
    import keras

    return _build(keras.layers, keras.Input, keras.Model, shape)


def build_tf_keras_decoder(shape: DecoderShape) -> Any:
    import tf_keras

    return _build(tf_keras.layers, tf_keras.Input, tf_keras.Model, shape)


@contextlib.contextmanager
def _tokenizer_modules_as_tf_keras() -> Iterator[None]:
    """Let pickle find `Tokenizer` at old Keras module paths by pointing them at tf_keras's class."""
    from tf_keras.preprocessing.text import Tokenizer

    added: list[str] = []
    for dotted in TOKENIZER_MODULE_PATHS:
        parts = dotted.split(".")
        for depth in range(1, len(parts) + 1):
            name = ".".join(parts[:depth])
            if name not in sys.modules:
                sys.modules[name] = types.ModuleType(name)
                added.append(name)
        if not hasattr(sys.modules[dotted], "Tokenizer"):
            sys.modules[dotted].Tokenizer = Tokenizer  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for name in added:
            sys.modules.pop(name, None)


def load_tokenizer_like_the_tutorial(path: Path) -> Any:
    """A real tf_keras Tokenizer object from the pickle (full unpickling: trusted test data only)."""
    with _tokenizer_modules_as_tf_keras(), path.open("rb") as handle:
        tokenizer = pickle.load(handle)
    # keras_preprocessing's Tokenizer predates `analyzer`; its absence meant the default split.
    if not hasattr(tokenizer, "analyzer"):
        tokenizer.analyzer = None
    return tokenizer


def fit_small_tokenizer(path: Path) -> Any:
    """A small real Tokenizer pickled by tf_keras (module path tf_keras.src.preprocessing.text)."""
    from tf_keras.preprocessing.text import Tokenizer

    colours = ["red", "green", "blue", "yellow", "purple", "orange"]
    shapes = ["circle", "square", "triangle", "star"]
    texts = [
        f"start a {size} {colour} {shape} on a {ground} background end"
        for colour in colours
        for shape in shapes
        for size in ("small", "large")
        for ground in ("white", "black", "gray")
    ]
    texts += ["start two dogs run in the grass end", "start a man rides a bike end"]
    tokenizer = Tokenizer()
    tokenizer.fit_on_texts(texts)
    with path.open("wb") as handle:
        pickle.dump(tokenizer, handle)
    return tokenizer


@dataclass
class Caption:
    words: list[str]
    probabilities: list[np.ndarray]  # next-word distribution at each step


def tutorial_greedy(
    predict: Callable[[np.ndarray, np.ndarray], np.ndarray],
    tokenizer: Any,
    photos: np.ndarray,
    max_length: int,
    start: str = "start",
    end: str = "end",
) -> list[Caption]:
    """The tutorial's generate_desc, batched over photos (each photo stops on its own)."""
    from tf_keras.preprocessing.sequence import pad_sequences

    def word_for_id(integer: int) -> str | None:
        for word, index in tokenizer.word_index.items():
            if index == integer:
                return word
        return None

    texts = [start] * len(photos)
    captions = [Caption([], []) for _ in photos]
    active = list(range(len(photos)))
    for _ in range(max_length):
        if not active:
            break
        sequences = pad_sequences(
            tokenizer.texts_to_sequences([texts[i] for i in active]), maxlen=max_length
        )
        predictions = np.asarray(predict(photos[active], sequences))
        still_active = []
        for row, i in enumerate(active):
            captions[i].probabilities.append(predictions[row])
            word = word_for_id(int(np.argmax(predictions[row])))
            if word is None:
                continue
            texts[i] += " " + word
            captions[i].words.append(word)
            if word != end:
                still_active.append(i)
        active = still_active
    return captions


def onnx_greedy(folder: Path, photos: np.ndarray) -> list[Caption]:
    """Greedy decoding over the model folder's projection and step graphs in onnxruntime."""
    import onnxruntime as ort

    manifest = json.loads((folder / "manifest.json").read_text())
    vocabulary = json.loads((folder / manifest["vocabulary"]["file"]).read_text())
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    projection = ort.InferenceSession(
        str(folder / manifest["decoder"]["projection_file"]), options, providers=providers
    )
    step = ort.InferenceSession(
        str(folder / manifest["decoder"]["step_file"]), options, providers=providers
    )
    units = manifest["decoder"]["units"]
    captions = []
    for photo_features in photos:
        photo = projection.run(None, {"features": photo_features[None].astype(np.float32)})[0]
        h = np.zeros((1, units), np.float32)
        c = np.zeros((1, units), np.float32)
        word = manifest["vocabulary"]["start_id"]
        caption = Caption([], [])
        for _ in range(manifest["max_length"]):
            log_probs, h, c = step.run(
                None, {"word": np.array([word], np.int64), "h": h, "c": c, "photo": photo}
            )
            caption.probabilities.append(np.exp(log_probs[0]))
            word = int(np.argmax(log_probs[0]))
            if vocabulary[word] is None:
                break
            caption.words.append(vocabulary[word])
            if word == manifest["vocabulary"]["end_id"]:
                break
        captions.append(caption)
    return captions


def assert_same_captions(
    expected: list[Caption], actual: list[Caption], tolerance: float = 1e-5
) -> None:
    for index, (want, got) in enumerate(zip(expected, actual, strict=True)):
        assert got.words == want.words, f"photo {index}: {got.words} != {want.words}"
        assert len(got.probabilities) == len(want.probabilities)
        for step, (p_want, p_got) in enumerate(
            zip(want.probabilities, got.probabilities, strict=True)
        ):
            worst = float(np.max(np.abs(p_want - p_got)))
            assert worst <= tolerance, (
                f"photo {index} step {step}: probabilities differ by {worst:.2e}"
            )


def end_bias_boost(captions: list[Caption], end_id: int, quantile: float = 0.2) -> float:
    """A bias for the end token that makes it win at some steps, so captions also stop on `end`.

    Raising one output bias changes no state, only which word wins: the end
    token now wins wherever its log-probability was within the returned margin.
    """
    gaps = [
        float(np.log(p.max()) - np.log(p[end_id]))
        for caption in captions
        for p in caption.probabilities
    ]
    return float(np.quantile(gaps, quantile)) + 0.01


def synthetic_photo_features(count: int, feature_size: int, seed: int) -> np.ndarray:
    """Non-negative, sparse-ish like average-pooled ReLU features."""
    rng = np.random.default_rng(seed)
    features = rng.gamma(0.6, 0.5, (count, feature_size))
    features[rng.random((count, feature_size)) < 0.3] = 0.0
    return features.astype(np.float32)


def tiny_encoder_onnx(path: Path, feature_size: int) -> Path:
    """A stand-in encoder ONNX with the contract's ports (uint8 image -> features [N, F])."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    constants = {
        "reps": np.array([1, (feature_size + 2) // 3], np.int64),
        "starts": np.array([0], np.int64),
        "ends": np.array([feature_size], np.int64),
        "slice_axes": np.array([1], np.int64),
    }
    nodes = [
        helper.make_node("Cast", ["image"], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["pixels"], ["means"], axes=[1, 2], keepdims=0),
        helper.make_node("Tile", ["means", "reps"], ["tiled"]),
        helper.make_node("Slice", ["tiled", "starts", "ends", "slice_axes"], ["features"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_encoder",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", 299, 299, 3])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", feature_size])],
        [numpy_helper.from_array(value, name) for name, value in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def save_small_tutorial_decoder(
    path: Path, tokenizer: Any, feature_size: int, seed: int, units: int = 12
) -> Path:
    """A small tf_keras tutorial decoder for `tokenizer`'s words, saved as the tutorial saves it (.h5)."""
    shape = DecoderShape(
        feature_size=feature_size,
        max_length=12,
        vocab_size=len(tokenizer.word_index) + 1,
        embedding_size=8,
        units=units,
        projection_size=units,
        hidden_size=10,
    )
    model = build_tf_keras_decoder(shape)
    apply_role_weights(model, peaked_role_weights(shape, seed=seed))
    model.save(path)
    return path

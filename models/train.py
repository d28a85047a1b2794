"""The tutorial's training recipe, on any dataset in Flickr8k's layout.

Same steps as the Keras "Image Caption Generator with CNN & LSTM" tutorial:
clean captions, wrap them in `<start> ... <end>`, fit a Keras Tokenizer,
extract photo features once, then teach the merge decoder to predict the next
word of every (photo, pre-padded prefix) pair. Two deliberate differences,
both invisible to the saved files: features come from the project's encoder
ONNX (what the runtime runs, cached by its sha256), and samples are streamed
with tf.data instead of the tutorial's Python generator. The outputs are what
a tutorial user has: a Keras model file and a pickled tf_keras `Tokenizer` in
`tokenizer.p`, so `capgen convert model` treats them like any user's model.

    python -m capgen.models.train DATASET OUTPUT_DIR --encoder xception+colour
"""

from __future__ import annotations

import argparse
import json
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from capgen.convert.hashing import sha256_file
from capgen.models.features import cached_features, resolve_encoder
from capgen.models.flickr8k import Flickr8kDataset

MODEL_FILENAME = "model.keras"
TOKENIZER_FILENAME = "tokenizer.p"
RECORD_FILENAME = "training.json"
UNITS = 256


@dataclass(frozen=True)
class Samples:
    """Teacher-forcing samples: photo row, pre-padded prefix, next word."""

    photo_rows: np.ndarray  # int32 [S]
    prefixes: np.ndarray  # int32 [S, max_length]
    targets: np.ndarray  # int32 [S]


def fit_tokenizer(descriptions: dict[str, list[str]]) -> Any:
    """The tutorial's Tokenizer, from tf_keras (Keras 3 has none), default filters."""
    from tf_keras.preprocessing.text import Tokenizer

    tokenizer = Tokenizer()
    tokenizer.fit_on_texts([d for captions in descriptions.values() for d in captions])
    return tokenizer


def max_length_of(descriptions: dict[str, list[str]]) -> int:
    return max(len(d.split()) for captions in descriptions.values() for d in captions)


def make_samples(
    descriptions: dict[str, list[str]], names: list[str], tokenizer: Any, max_length: int
) -> Samples:
    """Every (photo, prefix) -> next word pair, prefixes pre-padded like pad_sequences."""
    rows, prefixes, targets = [], [], []
    for row, name in enumerate(names):
        for sequence in tokenizer.texts_to_sequences(descriptions[name]):
            sequence = sequence[:max_length]
            for i in range(1, len(sequence)):
                prefix = np.zeros(max_length, np.int32)
                prefix[max_length - i :] = sequence[:i]
                rows.append(row)
                prefixes.append(prefix)
                targets.append(sequence[i])
    return Samples(np.array(rows, np.int32), np.stack(prefixes), np.array(targets, np.int32))


def build_decoder(
    feature_size: int,
    vocab_size: int,
    max_length: int,
    compile: bool = True,
    learning_rate: float = 1e-3,
) -> Any:
    """The tutorial's merge decoder, layer for layer."""
    import keras
    from keras import layers

    inputs1 = keras.Input(shape=(feature_size,), name="input_1")
    fe1 = layers.Dropout(0.5)(inputs1)
    fe2 = layers.Dense(UNITS, activation="relu")(fe1)
    inputs2 = keras.Input(shape=(max_length,), name="input_2")
    se1 = layers.Embedding(vocab_size, UNITS, mask_zero=True)(inputs2)
    se2 = layers.Dropout(0.5)(se1)
    se3 = layers.LSTM(UNITS)(se2)
    decoder1 = layers.add([fe2, se3])
    decoder2 = layers.Dense(UNITS, activation="relu")(decoder1)
    outputs = layers.Dense(vocab_size, activation="softmax")(decoder2)
    model = keras.Model(inputs=[inputs1, inputs2], outputs=outputs)
    if compile:
        optimizer = keras.optimizers.Adam(learning_rate=learning_rate)  # Keras' default: 1e-3
        model.compile(loss="sparse_categorical_crossentropy", optimizer=optimizer)
    return model


def save_without_optimizer(
    model: Any, path: Path, feature_size: int, vocab_size: int, max_length: int
) -> None:
    """Save only what inference needs: Adam's two moment copies would triple the file."""
    inference = build_decoder(feature_size, vocab_size, max_length, compile=False)
    inference.set_weights(model.get_weights())
    inference.save(path)


def _dataset(samples: Samples, photos: np.ndarray, batch_size: int, shuffle: bool) -> Any:
    import tensorflow as tf

    table = tf.constant(photos)
    data = tf.data.Dataset.from_tensor_slices(
        (samples.photo_rows, samples.prefixes, samples.targets)
    )
    if shuffle:
        data = data.shuffle(len(samples.targets), seed=0, reshuffle_each_iteration=True)
    data = data.batch(batch_size)
    data = data.map(lambda rows, prefix, target: ((tf.gather(table, rows), prefix), target))
    return data.prefetch(2)


def train(
    dataset_root: Path,
    output_dir: Path,
    encoder: str = "xception+colour",
    epochs: int = 12,
    batch_size: int = 256,
    patience: int = 2,
    seed: int = 0,
    show_progress: bool = True,
    features: dict[str, np.ndarray] | None = None,
    init_from: Path | None = None,
    learning_rate: float = 1e-3,
) -> dict[str, Any]:
    """Train on the train split, stop on the dev split's loss, save model + tokenizer.

    `features` (image name -> vector) replaces the encoder run, for experiments
    with precomputed features; the saved record then names no encoder file.
    `init_from` (a folder this function wrote) continues training that model:
    its weights, tokenizer and max_length are kept, so word ids still match.
    """
    import keras

    keras.utils.set_random_seed(seed)
    dataset = Flickr8kDataset(dataset_root)
    train_desc = dataset.descriptions("train")
    dev_desc = dataset.descriptions("dev")
    initial = None if init_from is None else _load_initial(init_from, train_desc)
    if initial is None:
        tokenizer = fit_tokenizer(train_desc)
        max_length = max_length_of(train_desc)
    else:
        tokenizer, max_length = initial.tokenizer, initial.max_length
    vocab_size = len(tokenizer.word_index) + 1

    train_names, dev_names = sorted(train_desc), sorted(dev_desc)
    encoder_sha = None
    if features is None:
        encoder_path = resolve_encoder(encoder)
        encoder_sha = sha256_file(encoder_path)
        features = cached_features(
            dataset.images_dir, train_names + dev_names, encoder_path, show_progress
        )
    train_photos = np.stack([features[n] for n in train_names])
    dev_photos = np.stack([features[n] for n in dev_names])
    train_samples = make_samples(train_desc, train_names, tokenizer, max_length)
    dev_samples = make_samples(dev_desc, dev_names, tokenizer, max_length)

    model = build_decoder(
        train_photos.shape[1], vocab_size, max_length, learning_rate=learning_rate
    )
    if initial is not None:
        model.set_weights(initial.weights)
    stop = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=patience, restore_best_weights=True
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    # The best model so far is on disk during training, so a long run can be
    # evaluated (or stopped) early without losing it.
    best = keras.callbacks.ModelCheckpoint(
        output_dir / MODEL_FILENAME, monitor="val_loss", save_best_only=True
    )
    with open(output_dir / TOKENIZER_FILENAME, "wb") as handle:
        pickle.dump(tokenizer, handle)
    started = time.monotonic()
    history = model.fit(
        _dataset(train_samples, train_photos, batch_size, shuffle=True),
        validation_data=_dataset(dev_samples, dev_photos, batch_size, shuffle=False),
        epochs=epochs,
        callbacks=[stop, best],
        verbose=2 if show_progress else 0,
    )
    seconds = time.monotonic() - started

    save_without_optimizer(
        model, output_dir / MODEL_FILENAME, train_photos.shape[1], vocab_size, max_length
    )
    val_losses = [float(v) for v in history.history["val_loss"]]
    record: dict[str, Any] = {
        "dataset": str(dataset_root),
        "encoder": encoder,
        "encoder_sha256": encoder_sha,
        "feature_size": int(train_photos.shape[1]),
        "vocab_size": vocab_size,
        "max_length": max_length,
        "train_images": len(train_names),
        "dev_images": len(dev_names),
        "train_samples": len(train_samples.targets),
        "batch_size": batch_size,
        "epochs_run": len(val_losses),
        "best_epoch": int(np.argmin(val_losses)) + 1,
        "loss": [float(v) for v in history.history["loss"]],
        "val_loss": val_losses,
        "train_seconds": round(seconds, 1),
        "seed": seed,
        "learning_rate": learning_rate,
    }
    if initial is not None:
        record["init_from"] = initial.record
    (output_dir / RECORD_FILENAME).write_text(json.dumps(record, indent=2) + "\n")
    return record


@dataclass(frozen=True)
class _Initial:
    """A previously trained model to continue from."""

    tokenizer: Any
    max_length: int
    weights: list[np.ndarray]
    record: dict[str, Any]


def _load_initial(folder: Path, train_desc: dict[str, list[str]]) -> _Initial:
    """Weights, tokenizer and training record of `folder`; every training word must be known."""
    import keras

    with open(folder / TOKENIZER_FILENAME, "rb") as handle:
        tokenizer = pickle.load(handle)  # our own file, written by train() above
    unknown = fit_tokenizer(train_desc).word_index.keys() - tokenizer.word_index.keys()
    if unknown:
        raise SystemExit(f"{folder}: its tokenizer lacks training words {sorted(unknown)[:5]}")
    model = keras.models.load_model(folder / MODEL_FILENAME, compile=False)
    record_path = folder / RECORD_FILENAME
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    record["model_sha256"] = sha256_file(folder / MODEL_FILENAME)
    return _Initial(tokenizer, int(model.inputs[1].shape[1]), model.get_weights(), record)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Train the tutorial decoder on a Flickr8k-layout dataset."
    )
    parser.add_argument(
        "dataset", type=Path, help="folder with Flickr8k.token.txt, split lists, Flicker8k_Dataset/"
    )
    parser.add_argument(
        "output", type=Path, help="where model.keras, tokenizer.p and training.json go"
    )
    parser.add_argument("--encoder", default="xception+colour", help="encoder kind or .onnx path")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--init-from",
        type=Path,
        help="continue training the model.keras/tokenizer.p in this folder",
    )
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="Adam's step size")
    args = parser.parse_args(argv)
    record = train(
        args.dataset,
        args.output,
        args.encoder,
        args.epochs,
        args.batch_size,
        args.patience,
        args.seed,
        init_from=args.init_from,
        learning_rate=args.learning_rate,
    )
    print(json.dumps({k: record[k] for k in ("best_epoch", "val_loss", "train_seconds")}))


if __name__ == "__main__":
    main()

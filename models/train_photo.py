"""Train the tutorial's decoder on real Flickr8k photos: capgen's default photo model.

The recipe is the tutorial's (caption cleaning, `start`/`end` wrapping, a
Keras `Tokenizer` on the training captions, `max_length` from them, the merge
decoder layer for layer, Adam at Keras' default step, early stopping on the
dev split); what changes is how the work is laid out, so that it fits two
cores:

- **Features** come from capgen's own FP32 encoder graph (what the runtime
  runs), on the images as the tutorial resizes them (`resize((299, 299))`,
  bicubic), cached and checkpointed every few hundred images.
- **Teacher forcing over whole captions.** The tutorial feeds one sample per
  word, each running the LSTM over its whole pre-padded prefix; here every
  position of a caption is computed in one pass (`LSTM(return_sequences=True)`
  and the photo branch repeated along time), with the padding masked out of
  the loss. The layers and weights are the same, and with `mask_zero` a
  pre-padded prefix leaves the LSTM in its zero state until the first word, so
  position i of one pass is the tutorial's prediction for the prefix of i+1
  words (tests/models/test_photo_equivalence.py checks it within 1e-5 on real
  captions).
- **Checkpoints** after every epoch (weights, optimizer state, history):
  `--resume` continues an interrupted run from the last one.

The result is what a tutorial user has: `model_N.h5` (Keras 2 format, written
with tf_keras, N the zero-based epoch as the tutorial numbers its files) and
the pickled tf_keras `tokenizer.p`; the tutorial's own `main.py` loads both.

    python -m capgen.models.train_photo --flickr8k ../shared/data/flickr8k \\
        --images ../shared/data/flickr8k-224/Flicker8k_Dataset --out work-data/photo
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from capgen.convert.hashing import sha256_file
from capgen.models.features import cached_features, resolve_encoder
from capgen.models.flickr8k import Flickr8kDataset
from capgen.models.train import fit_tokenizer, max_length_of

UNITS = 256
TOKENIZER_FILENAME = "tokenizer.p"
RECORD_FILENAME = "training.json"
CHECKPOINT_DIRNAME = "checkpoints"
HISTORY_FILENAME = "history.json"
# Layer names shared by the training graph and the exported tutorial model, so weights
# are copied by name rather than by the order a Keras version happens to list them in.
WEIGHT_LAYERS = ("photo_dense", "embedding", "lstm", "merge_dense", "word_probabilities")


@dataclass(frozen=True)
class CaptionRows:
    """One row per caption: its photo, the words it is fed, the words it must predict.

    `inputs[i]` is `start w1 ... wn` and `targets[i]` is `w1 ... wn end`, both
    post-padded with 0 to max_length; a 0 target is padding and carries no loss.
    """

    photo_rows: np.ndarray  # int32 [C]
    inputs: np.ndarray  # int32 [C, max_length]
    targets: np.ndarray  # int32 [C, max_length]

    @property
    def words(self) -> int:
        """How many (prefix, next word) samples the tutorial's generator would yield."""
        return int(np.count_nonzero(self.targets))


def caption_rows(
    descriptions: dict[str, list[str]], names: list[str], tokenizer: Any, max_length: int
) -> CaptionRows:
    rows, inputs, targets = [], [], []
    for row, name in enumerate(names):
        for sequence in tokenizer.texts_to_sequences(descriptions[name]):
            sequence = sequence[:max_length]
            fed = np.zeros(max_length, np.int32)
            wanted = np.zeros(max_length, np.int32)
            fed[: len(sequence) - 1] = sequence[:-1]
            wanted[: len(sequence) - 1] = sequence[1:]
            rows.append(row)
            inputs.append(fed)
            targets.append(wanted)
    return CaptionRows(np.array(rows, np.int32), np.stack(inputs), np.stack(targets))


def masked_word_loss(y_true: Any, y_pred: Any) -> Any:
    """Cross-entropy per real word: padding (target 0) carries no loss and does not count.

    Keras 3 does not carry the Embedding's mask through RepeatVector + add to
    the output, so its built-in loss would average over the padding too and
    teach the model to predict the padding id after a caption's last word,
    where the tutorial's samples teach `end`. An explicit mask keeps the
    objective the tutorial's: the mean over (prefix, next word) samples.
    """
    from keras import losses, ops

    mask = ops.cast(ops.not_equal(y_true, 0), y_pred.dtype)
    per_position = losses.sparse_categorical_crossentropy(y_true, y_pred)
    return ops.sum(per_position * mask) / ops.maximum(ops.sum(mask), 1.0)


CUSTOM_OBJECTS = {"masked_word_loss": masked_word_loss}


def build_teacher_forced(
    feature_size: int, vocab_size: int, max_length: int, learning_rate: float = 1e-3
) -> Any:
    """The tutorial's decoder with every caption position computed in one pass (Keras 3)."""
    import keras
    from keras import layers

    photo = keras.Input(shape=(feature_size,), name="input_1")
    fe1 = layers.Dropout(0.5)(photo)
    fe2 = layers.Dense(UNITS, activation="relu", name="photo_dense")(fe1)
    along_time = layers.RepeatVector(max_length)(fe2)
    words = keras.Input(shape=(max_length,), name="input_2")
    se1 = layers.Embedding(vocab_size, UNITS, mask_zero=True, name="embedding")(words)
    se2 = layers.Dropout(0.5)(se1)
    se3 = layers.LSTM(UNITS, return_sequences=True, name="lstm")(se2)
    decoder1 = layers.add([along_time, se3])
    decoder2 = layers.Dense(UNITS, activation="relu", name="merge_dense")(decoder1)
    outputs = layers.Dense(vocab_size, activation="softmax", name="word_probabilities")(decoder2)
    model = keras.Model(inputs=[photo, words], outputs=outputs)
    model.compile(
        loss=masked_word_loss, optimizer=keras.optimizers.Adam(learning_rate=learning_rate)
    )
    return model


def build_tutorial_model(feature_size: int, vocab_size: int, max_length: int) -> Any:
    """The tutorial's own model, in tf_keras (Keras 2), as its `model_N.h5` files are."""
    import tf_keras
    from tf_keras import layers

    inputs1 = tf_keras.Input(shape=(feature_size,), name="input_1")
    fe1 = layers.Dropout(0.5)(inputs1)
    fe2 = layers.Dense(UNITS, activation="relu", name="photo_dense")(fe1)
    inputs2 = tf_keras.Input(shape=(max_length,), name="input_2")
    se1 = layers.Embedding(vocab_size, UNITS, mask_zero=True, name="embedding")(inputs2)
    se2 = layers.Dropout(0.5)(se1)
    se3 = layers.LSTM(UNITS, name="lstm")(se2)
    decoder1 = layers.add([fe2, se3])
    decoder2 = layers.Dense(UNITS, activation="relu", name="merge_dense")(decoder1)
    outputs = layers.Dense(vocab_size, activation="softmax", name="word_probabilities")(decoder2)
    return tf_keras.Model(inputs=[inputs1, inputs2], outputs=outputs)


def copy_weights(source: Any, target: Any) -> None:
    """Layer by layer, by name: the two graphs share every weight-bearing layer."""
    for name in WEIGHT_LAYERS:
        target.get_layer(name).set_weights(source.get_layer(name).get_weights())


def _dataset(rows: CaptionRows, photos: np.ndarray, batch_size: int, shuffle: bool) -> Any:
    import tensorflow as tf

    # The loss masks the padding itself (masked_word_loss): a reported loss is per word.
    table = tf.constant(photos)
    data = tf.data.Dataset.from_tensor_slices((rows.photo_rows, rows.inputs, rows.targets))
    if shuffle:
        data = data.shuffle(len(rows.targets), reshuffle_each_iteration=True)
    data = data.batch(batch_size)
    data = data.map(lambda r, x, y: ((tf.gather(table, r), x), y))
    return data.prefetch(2)


class _EpochCheckpoints:
    """Saves the whole training state after every epoch and decides when to stop.

    Early stopping lives here rather than in Keras' callback so that its state
    (best loss, epochs without improvement) is the saved history itself and
    survives a resume.
    """

    def __init__(self, folder: Path, patience: int, history: list[dict[str, float]]) -> None:
        self.folder = folder
        self.patience = patience
        self.history = history

    def path(self, epoch: int) -> Path:
        return self.folder / f"epoch-{epoch:02d}.keras"

    def should_stop(self) -> bool:
        if not self.history:
            return False
        losses = [h["val_loss"] for h in self.history]
        return len(losses) - 1 - int(np.argmin(losses)) >= self.patience

    def callback(self) -> Any:
        import keras

        outer = self

        class _Callback(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
                self._started = time.monotonic()

            def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
                logs = logs or {}
                entry = {
                    "epoch": epoch + 1,
                    "loss": float(logs["loss"]),
                    "val_loss": float(logs["val_loss"]),
                    "seconds": round(time.monotonic() - self._started, 1),
                }
                outer.history.append(entry)
                self.model.save(outer.path(epoch + 1))
                _write_json(outer.folder / HISTORY_FILENAME, outer.history)
                if outer.should_stop():
                    self.model.stop_training = True

        return _Callback()


def _write_json(path: Path, value: Any) -> None:
    from capgen.runtime.atomic_write import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(value, indent=2) + "\n").encode())


def _read_history(folder: Path) -> list[dict[str, float]]:
    path = folder / HISTORY_FILENAME
    return json.loads(path.read_text()) if path.is_file() else []


def train_photo(
    flickr8k: Path,
    images: Path,
    output: Path,
    encoder: str = "xception",
    epochs: int = 20,
    batch_size: int = 64,
    patience: int = 3,
    learning_rate: float = 1e-3,
    seed: int = 0,
    resume: bool = False,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Train, checkpoint every epoch, export the best epoch as `model_N.h5` + `tokenizer.p`."""
    import keras

    keras.utils.set_random_seed(seed)
    started = time.monotonic()
    dataset = Flickr8kDataset(flickr8k)
    train_desc = dataset.descriptions("train", require_images=False)
    dev_desc = dataset.descriptions("dev", require_images=False)
    tokenizer = fit_tokenizer(train_desc)
    max_length = max_length_of(train_desc)
    vocab_size = len(tokenizer.word_index) + 1
    train_names, dev_names = sorted(train_desc), sorted(dev_desc)

    encoder_path = resolve_encoder(encoder)
    feature_started = time.monotonic()
    features = cached_features(
        images, train_names + dev_names, encoder_path, show_progress, cache_dir=output
    )
    feature_seconds = time.monotonic() - feature_started
    train_photos = np.stack([features[n] for n in train_names])
    dev_photos = np.stack([features[n] for n in dev_names])
    train_rows = caption_rows(train_desc, train_names, tokenizer, max_length)
    dev_rows = caption_rows(dev_desc, dev_names, tokenizer, max_length)

    folder = output / CHECKPOINT_DIRNAME
    folder.mkdir(parents=True, exist_ok=True)
    history = _read_history(folder) if resume else []
    checkpoints = _EpochCheckpoints(folder, patience, history)
    if history:
        model = keras.models.load_model(
            checkpoints.path(len(history)), custom_objects=CUSTOM_OBJECTS
        )
    else:
        model = build_teacher_forced(train_photos.shape[1], vocab_size, max_length, learning_rate)
    fit_started = time.monotonic()
    if len(history) < epochs and not checkpoints.should_stop():
        model.fit(
            _dataset(train_rows, train_photos, batch_size, shuffle=True),
            validation_data=_dataset(dev_rows, dev_photos, batch_size, shuffle=False),
            epochs=epochs,
            initial_epoch=len(history),
            callbacks=[checkpoints.callback()],
            verbose=2 if show_progress else 0,
        )
    fit_seconds = time.monotonic() - fit_started

    best = min(history, key=lambda h: h["val_loss"])
    best_model = keras.models.load_model(
        checkpoints.path(int(best["epoch"])), custom_objects=CUSTOM_OBJECTS
    )
    tutorial = build_tutorial_model(train_photos.shape[1], vocab_size, max_length)
    copy_weights(best_model, tutorial)
    model_path = output / f"model_{int(best['epoch']) - 1}.h5"
    tutorial.save(model_path)
    with open(output / TOKENIZER_FILENAME, "wb") as handle:
        pickle.dump(tokenizer, handle)

    record = {
        "data": {
            "captions": str(flickr8k),
            "images": str(images),
            "train_images": len(train_names),
            "dev_images": len(dev_names),
            "train_captions": len(train_rows.targets),
            "train_words": train_rows.words,
        },
        "encoder": encoder,
        "encoder_sha256": sha256_file(encoder_path),
        "feature_size": int(train_photos.shape[1]),
        "vocab_size": vocab_size,
        "max_length": max_length,
        "batch_size_captions": batch_size,
        "learning_rate": learning_rate,
        "patience": patience,
        "seed": seed,
        "history": history,
        "best_epoch": int(best["epoch"]),
        "model_file": model_path.name,
        "model_sha256": sha256_file(model_path),
        "seconds": {
            "features_this_run": round(feature_seconds, 1),
            "training_this_run": round(fit_seconds, 1),
            "training_all_epochs": round(sum(h["seconds"] for h in history), 1),
            "total_this_run": round(time.monotonic() - started, 1),
        },
        "cpus": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
    }
    _write_json(output / RECORD_FILENAME, record)
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flickr8k", type=Path, required=True, help="token file and split lists")
    parser.add_argument("--images", type=Path, required=True, help="folder of the Flickr8k images")
    parser.add_argument("--out", type=Path, required=True, help="model, tokenizer, checkpoints")
    parser.add_argument("--encoder", default="xception", help="encoder kind or .onnx path")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64, help="captions per batch")
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    args = parser.parse_args(argv)
    record = train_photo(
        args.flickr8k,
        args.images,
        args.out,
        args.encoder,
        args.epochs,
        args.batch_size,
        args.patience,
        args.learning_rate,
        args.seed,
        args.resume,
    )
    print(json.dumps({k: record[k] for k in ("best_epoch", "model_file", "seconds")}))


if __name__ == "__main__":
    main()

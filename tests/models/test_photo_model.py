"""The photo model's training formulation, its files, and its parity with the tutorial's loop.

- The teacher-forced training graph (every position of a caption in one pass)
  gives, at each position, what the tutorial's model predicts for that prefix
  alone, pre-padded, within 1e-5: on real Flickr8k captions and the committed
  trained weights.
- Training checkpoints every epoch and `--resume` continues from the last one.
- capgen's greedy captions equal the tutorial's own `main.py` loop token for
  token on 20 test photos (100 are recorded in models/photo/parity.json).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from capgen.models.setup_default import PHOTO_MODEL, model_sources

EQUIVALENCE_TOLERANCE = 1e-5
PARITY_IMAGES = 20


@pytest.fixture(scope="module")
def photo_sources() -> tuple[Path, Path]:
    return model_sources(PHOTO_MODEL)


@pytest.fixture(scope="module")
def dev_captions(shared_data: Path) -> list[str]:
    from capgen.models.flickr8k import Flickr8kDataset

    descriptions = Flickr8kDataset(shared_data / "flickr8k").descriptions(
        "dev", require_images=False
    )
    names = sorted(descriptions)[:40]
    return [caption for name in names for caption in descriptions[name]]


def test_committed_files_are_an_ordinary_tutorial_model(
    tf_keras_stack: None, photo_sources: tuple[Path, Path]
) -> None:
    """tf_keras (the tutorial's Keras 2) loads model_N.h5; the tokenizer is a plain Keras Tokenizer."""
    import tf_keras

    model_file, tokenizer_file = photo_sources
    model = tf_keras.models.load_model(model_file, compile=False)
    with open(tokenizer_file, "rb") as handle:
        tokenizer = pickle.load(handle)  # the project's own committed file
    record = json.loads((model_file.parent / "training.json").read_text())
    assert type(tokenizer).__module__.startswith("tf_keras")
    vocab = len(tokenizer.word_index) + 1
    assert model.output.shape[-1] == vocab == record["vocab_size"]
    assert model.inputs[0].shape[-1] == 2048
    assert model.inputs[1].shape[-1] == record["max_length"]
    assert {"start", "end"} <= tokenizer.word_index.keys()
    kinds = [type(layer).__name__ for layer in model.layers]
    assert sorted(kinds) == sorted(
        [
            "InputLayer",
            "InputLayer",
            "Dropout",
            "Dropout",
            "Embedding",
            "Dense",
            "LSTM",
            "Add",
            "Dense",
            "Dense",
        ]
    )


def test_teacher_forced_positions_equal_the_tutorials_prefix_predictions(
    tf_keras_stack: None, photo_sources: tuple[Path, Path], dev_captions: list[str]
) -> None:
    import tf_keras
    from tf_keras.preprocessing.sequence import pad_sequences

    from capgen.models.train_photo import (
        build_teacher_forced,
        caption_rows,
        copy_weights,
        masked_word_loss,
    )

    model_file, tokenizer_file = photo_sources
    tutorial = tf_keras.models.load_model(model_file, compile=False)
    with open(tokenizer_file, "rb") as handle:
        tokenizer = pickle.load(handle)
    max_length = int(tutorial.inputs[1].shape[-1])
    forced = build_teacher_forced(2048, len(tokenizer.word_index) + 1, max_length)
    copy_weights(tutorial, forced)

    names = [f"c{i}" for i in range(len(dev_captions))]
    rows = caption_rows(
        {n: [c] for n, c in zip(names, dev_captions, strict=True)}, names, tokenizer, max_length
    )
    rng = np.random.default_rng(8)
    photos = rng.exponential(0.4, (len(names), 2048)) * (rng.random((len(names), 2048)) < 0.6)
    photos = photos.astype(np.float32)  # non-negative and sparse, like pooled Xception features
    per_position = forced.predict([photos[rows.photo_rows], rows.inputs], verbose=0)

    prefixes, photo_rows, positions = [], [], []
    for caption, (inputs, targets) in enumerate(zip(rows.inputs, rows.targets, strict=True)):
        length = int(np.count_nonzero(targets))
        for i in range(length):
            prefixes.append(list(inputs[: i + 1]))
            photo_rows.append(caption)
            positions.append((caption, i))
    assert len(prefixes) > 1000, "enough real prefixes to mean something"
    padded = pad_sequences(prefixes, maxlen=max_length)
    batched = tutorial.predict([photos[photo_rows], padded], verbose=0)
    wanted = np.stack([per_position[c, i] for c, i in positions])
    assert np.abs(batched - wanted).max() <= EQUIVALENCE_TOLERANCE
    # The training objective is the tutorial's too: the mean cross-entropy over its
    # (prefix, next word) samples, padding excluded, probabilities clipped to
    # [1e-7, 1 - 1e-7] as Keras' cross-entropy clips them (rare dev words fall below).
    next_words = np.array([rows.targets[c, i] for c, i in positions])
    chosen = np.clip(batched[np.arange(len(next_words)), next_words], 1e-7, 1 - 1e-7)
    tutorial_loss = float(np.mean(-np.log(chosen)))
    forced_loss = float(masked_word_loss(rows.targets, per_position))
    assert abs(forced_loss - tutorial_loss) <= 1e-4 * tutorial_loss
    # And one prefix at a time, as the tutorial's loop calls predict.
    for k in range(0, len(prefixes), len(prefixes) // 25):
        single = tutorial.predict(
            [photos[photo_rows[k] : photo_rows[k] + 1], padded[k : k + 1]], verbose=0
        )
        assert np.abs(single[0] - wanted[k]).max() <= EQUIVALENCE_TOLERANCE


@pytest.mark.slow
def test_training_checkpoints_every_epoch_and_resumes(
    tf_keras_stack: None, shared_data: Path, tmp_path: Path
) -> None:
    import tf_keras

    from capgen.models.train_photo import CHECKPOINT_DIRNAME, HISTORY_FILENAME, train_photo

    flickr8k = shared_data / "flickr8k"
    images = shared_data / "flickr8k-224" / "Flicker8k_Dataset"
    small = tmp_path / "flickr8k"
    small.mkdir()
    (small / "Flickr8k.token.txt").write_bytes((flickr8k / "Flickr8k.token.txt").read_bytes())
    for split, count in (("train", 24), ("dev", 8), ("test", 4)):
        name = f"Flickr_8k.{split}Images.txt"
        lines = (flickr8k / name).read_text().splitlines()[:count]
        (small / name).write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    encoder = _fp32_encoder()
    first = train_photo(small, images, out, encoder=str(encoder), epochs=2, show_progress=False)
    assert [h["epoch"] for h in first["history"]] == [1, 2]
    assert sorted(p.name for p in (out / CHECKPOINT_DIRNAME).glob("*.keras")) == [
        "epoch-01.keras",
        "epoch-02.keras",
    ]
    resumed = train_photo(
        small, images, out, encoder=str(encoder), epochs=3, resume=True, show_progress=False
    )
    history = json.loads((out / CHECKPOINT_DIRNAME / HISTORY_FILENAME).read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert resumed["history"][:2] == first["history"]
    assert resumed["seconds"]["features_this_run"] < first["seconds"]["features_this_run"]
    best = resumed["best_epoch"]
    model = tf_keras.models.load_model(out / f"model_{best - 1}.h5", compile=False)
    import keras

    checkpoint = keras.models.load_model(
        out / CHECKPOINT_DIRNAME / f"epoch-{best:02d}.keras", compile=False
    )
    for name in ("embedding", "lstm", "word_probabilities"):
        for a, b in zip(
            model.get_layer(name).get_weights(),
            checkpoint.get_layer(name).get_weights(),
            strict=True,
        ):
            assert np.array_equal(a, b)


def _fp32_encoder() -> Path:
    from capgen.runtime.home import capgen_home

    encoder = capgen_home() / "encoders" / "xception.onnx"
    if not encoder.is_file():
        pytest.skip(f"no Xception encoder at {encoder} (capgen setup exports it)")
    return encoder


@pytest.mark.slow
def test_greedy_captions_equal_the_tutorials_loop_on_test_photos(
    tf_keras_stack: None, shared_data: Path, photo_sources: tuple[Path, Path]
) -> None:
    from capgen.convert.weights import default_weights_path
    from capgen.models.flickr8k import read_split
    from capgen.models.setup_default import built_from_sources
    from capgen.models.tutorial_parity import compare

    folder = built_from_sources(PHOTO_MODEL)
    if folder is None:
        pytest.skip("no default model built from models/photo (make setup builds it)")
    weights = default_weights_path()
    if not weights.is_file():
        pytest.skip(f"no ImageNet weights at {weights} (capgen setup fetches them)")
    names = read_split(shared_data / "flickr8k" / "Flickr_8k.testImages.txt")[:PARITY_IMAGES]
    images = [shared_data / "flickr8k-224" / "Flicker8k_Dataset" / n for n in names]
    model_file, tokenizer_file = photo_sources
    report = compare(folder, model_file, tokenizer_file, weights, images)
    assert report.images == PARITY_IMAGES
    assert report.mismatches == []

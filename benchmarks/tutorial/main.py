"""The tutorial's inference script (the classic `main.py` / `testing_caption_generator.py`), kept faithful.

This is the baseline capgen is measured against. Its inference path is the
tutorial's, line for line: Keras Xception `predict` on the photo
(`Image.open(f).resize((299, 299))`, `image / 127.5 - 1.0`), then for every
word `texts_to_sequences` -> `pad_sequences` -> `model.predict` -> `argmax`
-> a linear `word_for_id` scan over `tokenizer.word_index`.

Deviations, each forced by this machine, none making the baseline slower:
- ImageNet weights are passed with `--weights` (Keras would download them;
  there is no internet here). They are the same file capgen's encoder uses.
- Keras: a Keras 2 `.h5` (what tutorial users have) is loaded with tf_keras,
  the Keras 2 implementation, with tf_keras's Xception, as its authors ran it;
  a Keras 3 `.keras` file is loaded with Keras 3 and Keras 3's Xception.
  The tokenizer and `pad_sequences` always come from tf_keras (Keras 3 has no
  Tokenizer; the pickles reference Keras 2 modules).
- `--colour` appends capgen's colour features (a TensorFlow function) to the
  Xception features, for decoders trained on them (the default model).
- `--timings PATH` writes the time each stage took, for the benchmark.
- `predict(..., verbose=0)`: the progress bar printing is not inference.

Run: python benchmarks/tutorial/main.py -i photo.jpg -m model_9.h5 -t tokenizer.p --weights W.h5
"""

from __future__ import annotations

import time

_STARTED = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
from pickle import load  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402
from tf_keras.preprocessing.sequence import pad_sequences  # noqa: E402

MAX_LENGTH = 32


def keras_for(model_path: str):
    """tf_keras (Keras 2) for .h5 files, Keras 3 for .keras files."""
    if model_path.endswith(".keras"):
        import keras

        return keras
    import tf_keras

    return tf_keras


def load_xception(keras_module, weights: str):
    return keras_module.applications.Xception(include_top=False, pooling="avg", weights=weights)


def extract_features(filename, model, colour: bool = False):
    try:
        image = Image.open(filename)
    except Exception:
        print("ERROR: Couldn't open image! Make sure the image path and extension is correct")
    image = image.resize((299, 299))
    image = np.array(image)
    # for images that has 4 channels, we convert them into 3 channels
    if image.shape[2] == 4:
        image = image[..., :3]
    image = np.expand_dims(image, axis=0)
    pixels = image
    image = image / 127.5
    image = image - 1.0
    feature = model.predict(image, verbose=0)
    if colour:
        feature = np.concatenate([feature, colour_features(pixels)], axis=1)
    return feature


def colour_features(pixels: np.ndarray) -> np.ndarray:
    from capgen.models.colour_features import colour_features as compute

    return np.asarray(compute(tf.constant(pixels, dtype=tf.uint8)), dtype=np.float32)


def word_for_id(integer, tokenizer):
    for word, index in tokenizer.word_index.items():
        if index == integer:
            return word
    return None


def generate_desc(model, tokenizer, photo, max_length, steps=None, stop=True):
    """The tutorial's greedy loop. `steps`/`stop` exist only so the benchmark can
    force a caption length (scaling); the defaults are the tutorial's behaviour."""
    in_text = "start"
    for _i in range(max_length if steps is None else steps):
        sequence = tokenizer.texts_to_sequences([in_text])[0]
        sequence = pad_sequences([sequence], maxlen=max_length)
        pred = model.predict([photo, sequence], verbose=0)
        pred = np.argmax(pred)
        word = word_for_id(pred, tokenizer)
        if word is None and stop:
            break
        in_text += " " + str(word)
        if word == "end" and stop:
            break
    return in_text


def beam_search_desc(model, tokenizer, photo, max_length, beam_index=3):
    """Beam search as the tutorial's follow-up posts write it: one `predict` per
    hypothesis per word, pre-padded like training, summed log-probabilities;
    finished hypotheses (ending in 'end') are kept and not expanded again."""
    end_id = tokenizer.word_index.get("end")
    start = [tokenizer.word_index["start"]]
    beams = [[start, 0.0]]
    while len(beams[0][0]) <= max_length:
        candidates = []
        for tokens, score in beams:
            if tokens[-1] == end_id:
                candidates.append([tokens, score])
                continue
            sequence = pad_sequences([tokens], maxlen=max_length)
            preds = model.predict([photo, sequence], verbose=0)[0]
            for word_id in np.argsort(preds)[-beam_index:]:
                candidates.append(
                    [[*tokens, int(word_id)], score + float(np.log(preds[word_id] + 1e-12))]
                )
        beams = sorted(candidates, key=lambda item: item[1])[-beam_index:]
        if all(tokens[-1] == end_id for tokens, _ in beams):
            break
    best = beams[-1][0]
    return " ".join(str(word_for_id(i, tokenizer)) for i in best)


def load_everything(model_path: str, tokenizer_path: str, weights: str):
    keras_module = keras_for(model_path)
    tokenizer = load(open(tokenizer_path, "rb"))  # noqa: SIM115 - the tutorial's line
    model = keras_module.models.load_model(model_path, compile=False)
    xception_model = load_xception(keras_module, weights)
    return model, tokenizer, xception_model


def model_max_length(model) -> int:
    """The tutorial hard-codes `max_length = 32` for its model; we read the same
    number from the model's word-sequence input so any trained model works."""
    for layer in model.layers:
        if type(layer).__name__ == "Embedding" and layer.input.shape[1] is not None:
            return int(layer.input.shape[1])
    return MAX_LENGTH


def main() -> None:
    imported = time.perf_counter()
    ap = argparse.ArgumentParser()
    ap.add_argument("-i", "--image", required=True, help="Image Path")
    ap.add_argument("-m", "--model", required=True, help="Decoder: model_9.h5 or .keras")
    ap.add_argument("-t", "--tokenizer", required=True, help="tokenizer.p")
    ap.add_argument("--weights", required=True, help="Xception no-top ImageNet weights .h5")
    ap.add_argument("--colour", action="store_true", help="Append capgen's colour features")
    ap.add_argument("--timings", help="Write stage timings (seconds) as JSON here")
    args = vars(ap.parse_args())
    img_path = args["image"]

    model, tokenizer, xception_model = load_everything(
        args["model"], args["tokenizer"], args["weights"]
    )
    max_length = model_max_length(model)
    loaded = time.perf_counter()
    photo = extract_features(img_path, xception_model, colour=args["colour"])
    encoded = time.perf_counter()
    description = generate_desc(model, tokenizer, photo, max_length)
    decoded = time.perf_counter()
    print("\n\n")
    print(description)
    if args["timings"]:
        stages = {
            "imports": imported - _STARTED,
            "model_load": loaded - imported,
            "encode": encoded - loaded,
            "decode": decoded - encoded,
        }
        with open(args["timings"], "w") as handle:
            json.dump(stages, handle)


if __name__ == "__main__":
    main()

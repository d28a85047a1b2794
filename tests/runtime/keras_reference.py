"""The tutorial's decoding loop, reimplemented in plain numpy the way Keras runs it.

`generate_desc` re-runs the whole model on the pre-padded prefix for every
word (Embedding with mask_zero -> LSTM -> add with the photo Dense -> Dense ->
softmax), carrying the LSTM state unchanged through masked padding. It is
deliberately the slow, obvious algorithm, so it checks the runtime's
step-by-step decoding from an independent direction.
"""

from __future__ import annotations

import numpy as np

from capgen.convert.step_graph import DecoderWeights


def _activation(kind: str, x: np.ndarray) -> np.ndarray:
    if kind == "relu":
        return np.maximum(x, 0.0)
    if kind == "tanh":
        return np.tanh(x)
    if kind == "sigmoid":
        return 1.0 / (1.0 + np.exp(-x))
    return x


def _recurrent(kind: str, x: np.ndarray) -> np.ndarray:
    if kind == "sigmoid":
        return 1.0 / (1.0 + np.exp(-x))
    slope = 0.2 if kind == "hard_sigmoid_keras2" else 1.0 / 6.0
    return np.clip(slope * x + 0.5, 0.0, 1.0)


def model_predict(weights: DecoderWeights, features: np.ndarray, sequence: list[int]) -> np.ndarray:
    """Keras `model.predict([photo, padded_sequence])` for one image: softmax over the vocabulary."""
    w = weights
    photo = _activation(w.photo_activation, features @ w.photo_kernel + w.photo_bias)
    units = w.units
    h = np.zeros(units)
    c = np.zeros(units)
    for token in sequence:
        if token == 0:  # mask_zero: state carried through unchanged
            continue
        z = w.embedding[token] @ w.lstm_kernel + h @ w.lstm_recurrent_kernel + w.lstm_bias
        i = _recurrent(w.recurrent_activation, z[:units])
        f = _recurrent(w.recurrent_activation, z[units : 2 * units])
        g = np.tanh(z[2 * units : 3 * units])
        o = _recurrent(w.recurrent_activation, z[3 * units :])
        c = f * c + i * g
        h = o * np.tanh(c)
    merged = (
        photo + h
        if w.merge == "add"
        else np.concatenate([photo, h] if w.photo_first else [h, photo])
    )
    hidden = _activation(w.hidden_activation, merged @ w.hidden_kernel + w.hidden_bias)
    logits = hidden @ w.output_kernel + w.output_bias
    exp = np.exp(logits - logits.max())
    return exp / exp.sum()


def generate_desc(
    weights: DecoderWeights, words: list[str | None], features: np.ndarray, max_length: int
) -> str:
    """The tutorial's loop, word for word (texts_to_sequences + pad_sequences + predict + argmax)."""
    word_index = {word: i for i, word in enumerate(words) if word is not None}
    in_text = "start"
    for _ in range(max_length):
        sequence = [word_index[word] for word in in_text.split()]
        padded = [0] * (max_length - len(sequence)) + sequence
        prediction = model_predict(weights, features, padded)
        word = words[int(np.argmax(prediction))]
        if word is None:
            break
        in_text += " " + word
        if word == "end":
            break
    return in_text

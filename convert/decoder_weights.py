"""Put the weights a file holds into the roles the architecture found, checking every shape.

A weights file saved from a different model (another vocabulary, another
feature size) would otherwise produce a graph that fails at run time or, worse,
captions with the wrong words; checking shapes against the config here turns
that into one clear error at conversion time.
"""

from __future__ import annotations

import numpy as np

from capgen.convert.architecture import DecoderArchitecture
from capgen.convert.decoder_types import DecoderWeights
from capgen.convert.keras_reader import LayerWeights, require_weights
from capgen.runtime.errors import ModelError


def _check_shape(array: np.ndarray, expected: tuple[int, ...], what: str) -> np.ndarray:
    if tuple(array.shape) != expected:
        raise ModelError(
            f"{what} has shape {tuple(array.shape)} but the architecture needs {expected}; "
            "the weights do not belong to this architecture"
        )
    return np.asarray(array, dtype=np.float32)


def _dense(
    weights: LayerWeights, arch: DecoderArchitecture, layer: str, inputs: int, units: int
) -> tuple[np.ndarray, np.ndarray]:
    if arch.layer_bias[layer]:
        kernel, bias = require_weights(weights, layer, ("kernel", "bias"))
    else:
        (kernel,) = require_weights(weights, layer, ("kernel",))
        bias = np.zeros(units, dtype=np.float32)
    return (
        _check_shape(kernel, (inputs, units), f"layer {layer!r} kernel"),
        _check_shape(bias, (units,), f"layer {layer!r} bias"),
    )


def assemble_decoder_weights(arch: DecoderArchitecture, weights: LayerWeights) -> DecoderWeights:
    units = arch.units
    photo_kernel, photo_bias = _dense(
        weights, arch, arch.photo_dense, arch.feature_size, arch.projection_size
    )
    (embedding,) = require_weights(weights, arch.embedding, ("embeddings",))
    embedding = _check_shape(
        embedding,
        (arch.embedding_input_dim, arch.embedding_size),
        f"layer {arch.embedding!r} embeddings",
    )
    names = (
        ("kernel", "recurrent_kernel", "bias")
        if arch.layer_bias[arch.lstm]
        else ("kernel", "recurrent_kernel")
    )
    lstm_arrays = require_weights(weights, arch.lstm, names)
    lstm_bias = lstm_arrays[2] if len(lstm_arrays) == 3 else np.zeros(4 * units, dtype=np.float32)
    merged_size = units if arch.merge == "add" else units + arch.projection_size
    hidden_kernel, hidden_bias = _dense(
        weights, arch, arch.hidden_dense, merged_size, arch.hidden_size
    )
    output_kernel, output_bias = _dense(
        weights, arch, arch.output_dense, arch.hidden_size, arch.vocab_size
    )
    return DecoderWeights(
        photo_kernel=photo_kernel,
        photo_bias=photo_bias,
        photo_activation=arch.photo_activation,
        embedding=embedding,
        lstm_kernel=_check_shape(
            lstm_arrays[0], (arch.embedding_size, 4 * units), f"layer {arch.lstm!r} kernel"
        ),
        lstm_recurrent_kernel=_check_shape(
            lstm_arrays[1], (units, 4 * units), f"layer {arch.lstm!r} recurrent_kernel"
        ),
        lstm_bias=_check_shape(lstm_bias, (4 * units,), f"layer {arch.lstm!r} bias"),
        recurrent_activation=arch.recurrent_activation,
        merge=arch.merge,
        photo_first=arch.photo_first,
        hidden_kernel=hidden_kernel,
        hidden_bias=hidden_bias,
        hidden_activation=arch.hidden_activation,
        output_kernel=output_kernel,
        output_bias=output_bias,
    )

"""Put the weights a file holds into the roles the architecture found, checking every shape.

A weights file saved from a different model (another vocabulary, another
feature size) would otherwise produce a graph that fails at run time or, worse,
captions with the wrong words; checking shapes against the config here turns
that into one clear error at conversion time. The same shapes tell the Keras
reader which weights to read at all, and how big they may be, before it reads
any (`expected_weight_shapes`).
"""

from __future__ import annotations

import numpy as np

from capgen.convert.architecture import DecoderArchitecture
from capgen.convert.decoder_types import DecoderWeights
from capgen.runtime.errors import ModelError, UnsupportedModelError

LayerWeights = dict[str, dict[str, np.ndarray]]  # layer name -> {"kernel": ..., "bias": ...}
WeightShapes = dict[str, dict[str, tuple[int, ...]]]  # layer name -> {"kernel": (rows, cols)}
_FLOAT32_BYTES = 4
# All weights read from one file, together: the tutorial decoder needs ~20 MB.
# Six 1 GiB weights (each under the reader's per-weight limit) or one weight
# hard-linked under six names once made a 41 kB file allocate 6-7 GiB; now
# only the weights the architecture uses are read, each once, and only if
# their declared shapes are the architecture's and their sum fits this budget.
MAX_TOTAL_WEIGHT_BYTES = 2 << 30


def expected_weight_shapes(arch: DecoderArchitecture) -> WeightShapes:
    """Every weight the decoder uses, by layer and variable, with the shape the config implies.

    Sizes come from a file, so they are bounded here, before anything is
    sized by them: every dimension at least 1, and all weights together
    within the reader's budget (a config claiming a vocabulary of 10**12
    would otherwise ask for terabytes).
    """
    units = arch.units
    merged = units if arch.merge == "add" else units + arch.projection_size

    def dense(layer: str, inputs: int, outputs: int) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {"kernel": (inputs, outputs)}
        if arch.layer_bias[layer]:
            shapes["bias"] = (outputs,)
        return shapes

    lstm: dict[str, tuple[int, ...]] = {
        "kernel": (arch.embedding_size, 4 * units),
        "recurrent_kernel": (units, 4 * units),
    }
    if arch.layer_bias[arch.lstm]:
        lstm["bias"] = (4 * units,)
    shapes: WeightShapes = {
        arch.photo_dense: dense(arch.photo_dense, arch.feature_size, arch.projection_size),
        arch.embedding: {"embeddings": (arch.embedding_input_dim, arch.embedding_size)},
        arch.lstm: lstm,
        arch.hidden_dense: dense(arch.hidden_dense, merged, arch.hidden_size),
        arch.output_dense: dense(arch.output_dense, arch.hidden_size, arch.vocab_size),
    }
    _check_sizes(shapes)
    return shapes


def _check_sizes(shapes: WeightShapes) -> None:
    total = 0
    for layer, variables in shapes.items():
        for key, shape in variables.items():
            if min(shape) < 1:
                raise UnsupportedModelError(
                    f"the config gives layer {layer!r} a {key} of shape {shape}; "
                    "every size must be at least 1"
                )
            total += int(np.prod(shape, dtype=np.float64)) * _FLOAT32_BYTES
    if total > MAX_TOTAL_WEIGHT_BYTES:
        raise UnsupportedModelError(
            f"the config's sizes need {total / 2**30:.1f} GiB of weights, more than the "
            f"{MAX_TOTAL_WEIGHT_BYTES >> 30} GiB capgen reads (the tutorial decoder needs ~20 MB)"
        )


def shape_mismatch(found: tuple[int, ...], expected: tuple[int, ...], what: str) -> ModelError:
    return ModelError(
        f"{what} has shape {found} but the architecture needs {expected}; "
        "the weights do not belong to this architecture"
    )


def require_weights(weights: LayerWeights, layer: str, names: tuple[str, ...]) -> list[np.ndarray]:
    """The arrays `names` of `layer`, or a ModelError saying which weight the file lacks."""
    arrays = weights.get(layer)
    if arrays is None:
        raise ModelError(
            f"the weights file has no weights for layer {layer!r}; "
            "is it the weights file of this architecture?"
        )
    missing = [name for name in names if name not in arrays]
    if missing:
        raise UnsupportedModelError(f"layer {layer!r} has no {', '.join(missing)} weight")
    return [arrays[name] for name in names]


def _refuse_non_finite(array: np.ndarray, what: str) -> None:
    """One line for a weight holding inf or NaN (also a float64 too large for float32).

    Such a decoder gives NaN scores for every word: captions come out empty
    with exit 0, so it is refused here, naming the layer, not exported.
    """
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(array.size - np.count_nonzero(finite))
        raise ModelError(
            f"{what} holds {bad:,} infinite or NaN values of {array.size:,}; capgen does not "
            "export non-finite weights (they make every caption empty)"
        )


def _role(
    weights: LayerWeights, shapes: WeightShapes, layer: str, bias_size: int | None = None
) -> list[np.ndarray]:
    """The layer's arrays in `shapes` order, shape-checked, float32; a zero bias if it has none."""
    names = tuple(shapes[layer])
    arrays = []
    for name, array in zip(names, require_weights(weights, layer, names), strict=True):
        if tuple(array.shape) != shapes[layer][name]:
            raise shape_mismatch(tuple(array.shape), shapes[layer][name], f"layer {layer!r} {name}")
        converted = np.asarray(array, dtype=np.float32)
        _refuse_non_finite(converted, f"layer {layer!r} {name}")
        arrays.append(converted)
    if bias_size is not None and "bias" not in shapes[layer]:
        arrays.append(np.zeros(bias_size, dtype=np.float32))
    return arrays


def assemble_decoder_weights(arch: DecoderArchitecture, weights: LayerWeights) -> DecoderWeights:
    shapes = expected_weight_shapes(arch)
    photo_kernel, photo_bias = _role(weights, shapes, arch.photo_dense, arch.projection_size)
    (embedding,) = _role(weights, shapes, arch.embedding)
    lstm_kernel, lstm_recurrent_kernel, lstm_bias = _role(
        weights, shapes, arch.lstm, 4 * arch.units
    )
    hidden_kernel, hidden_bias = _role(weights, shapes, arch.hidden_dense, arch.hidden_size)
    output_kernel, output_bias = _role(weights, shapes, arch.output_dense, arch.vocab_size)
    return DecoderWeights(
        photo_kernel=photo_kernel,
        photo_bias=photo_bias,
        photo_activation=arch.photo_activation,
        embedding=embedding,
        lstm_kernel=lstm_kernel,
        lstm_recurrent_kernel=lstm_recurrent_kernel,
        lstm_bias=lstm_bias,
        recurrent_activation=arch.recurrent_activation,
        merge=arch.merge,
        photo_first=arch.photo_first,
        hidden_kernel=hidden_kernel,
        hidden_bias=hidden_bias,
        hidden_activation=arch.hidden_activation,
        output_kernel=output_kernel,
        output_bias=output_bias,
    )

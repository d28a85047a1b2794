"""Recognise the tutorial decoder in a saved Keras model config, or say what is not.

capgen does not assume the tutorial's numbers: the photo-feature size, the
embedding and LSTM sizes, the recurrent activation, the merge and its input
order, the vocabulary and max_length are all read from the config the user's
Keras wrote. What it does assume is the *shape* of the network (the tutorial
family), because only that shape splits exactly into a once-per-image photo
projection and a one-word step graph. Anything else is refused by name rather
than converted into something that captions differently.

Both config dialects are read: Keras 2 (`inbound_nodes` as nested lists) and
Keras 3 (`inbound_nodes` as {"args", "kwargs"} with `__keras_tensor__` entries).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from capgen.convert.decoder_types import DenseActivation, Merge, RecurrentActivation
from capgen.runtime.errors import UnsupportedModelError

# Layers with no effect at inference, or that only compute Keras 3's padding mask.
_PASS_THROUGH = frozenset({"Dropout", "SpatialDropout1D", "GaussianDropout", "AlphaDropout"})
_MASK_HELPERS = frozenset({"NotEqual"})
_MERGES: dict[str, Merge] = {"Add": "add", "Concatenate": "concatenate"}
_DENSE_ACTIVATIONS = frozenset({"relu", "linear", "tanh", "sigmoid"})
_FUNCTIONAL = frozenset({"Functional", "Model"})


@dataclass(frozen=True)
class Layer:
    class_name: str
    name: str
    config: dict[str, Any]
    inputs: tuple[str, ...]  # names of the layers whose outputs feed this one, in call order

    def describe(self) -> str:
        return f"{self.class_name} layer {self.name!r}"


@dataclass(frozen=True)
class DecoderArchitecture:
    """Which layer plays which part in the tutorial decoder, and its settings."""

    photo_input: str
    sequence_input: str
    photo_dense: str
    embedding: str
    lstm: str
    merge_layer: str
    hidden_dense: str
    output_dense: str
    feature_size: int
    max_length: int | None
    vocab_size: int
    embedding_input_dim: int
    embedding_size: int
    units: int
    projection_size: int
    hidden_size: int
    photo_activation: DenseActivation
    hidden_activation: DenseActivation
    recurrent_activation: RecurrentActivation
    merge: Merge
    photo_first: bool
    keras_major: int
    layer_bias: dict[str, bool]  # layer name -> use_bias


def _unsupported(what: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"{what}; capgen converts the tutorial decoder family only "
        "(photo features -> Dense; Embedding(mask_zero) -> LSTM; add/concatenate; Dense; Dense softmax)"
    )


def _keras3_history_names(value: Any) -> list[str]:
    """Layer names of every `__keras_tensor__` in a Keras 3 node's args, in order."""
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            return [str(value["config"]["keras_history"][0])]
        return [name for item in value.values() for name in _keras3_history_names(item)]
    if isinstance(value, list | tuple):
        return [name for item in value for name in _keras3_history_names(item)]
    return []


def _layer_inputs(layer: dict[str, Any], described: str) -> tuple[str, ...]:
    nodes = layer.get("inbound_nodes") or []
    if len(nodes) > 1:
        raise _unsupported(
            f"{described} is called {len(nodes)} times (shared layers are not in the family)"
        )
    if not nodes:
        return ()
    node = nodes[0]
    if isinstance(node, dict):  # Keras 3: the mask travels in kwargs; only args carry data
        return tuple(_keras3_history_names(node.get("args", [])))
    return tuple(
        str(entry[0]) for entry in node
    )  # Keras 2: [[name, node_index, tensor_index, kwargs]]


def _parse_layers(model_config: dict[str, Any]) -> tuple[dict[str, Layer], list[str], list[str]]:
    class_name = model_config.get("class_name")
    if class_name == "Sequential":
        raise _unsupported("the model is a Sequential model with one input")
    if class_name not in _FUNCTIONAL:
        raise _unsupported(f"the model is a {class_name!r}, not a functional Keras model")
    config = model_config.get("config") or {}
    layers: dict[str, Layer] = {}
    for raw in config.get("layers", []):
        name = str(raw.get("name") or raw.get("config", {}).get("name"))
        described = f"{raw.get('class_name')} layer {name!r}"
        layers[name] = Layer(
            class_name=str(raw.get("class_name")),
            name=name,
            config=raw.get("config") or {},
            inputs=_layer_inputs(raw, described),
        )
    inputs = [str(entry[0]) for entry in _as_port_list(config.get("input_layers"))]
    outputs = [str(entry[0]) for entry in _as_port_list(config.get("output_layers"))]
    return layers, inputs, outputs


def _as_port_list(ports: Any) -> list[list[Any]]:
    """Keras writes a single port as [name, 0, 0] and several as [[name, 0, 0], ...]."""
    if not ports:
        return []
    if isinstance(ports[0], str):
        return [ports]
    return list(ports)


class _Walker:
    """Follows the graph backwards from the output, recording every layer it accounts for."""

    def __init__(self, layers: dict[str, Layer]) -> None:
        self.layers = layers
        self.used: set[str] = set()

    def take(self, name: str) -> Layer:
        """The layer feeding data at `name`, skipping inference no-ops such as Dropout."""
        layer = self.layers[name]
        self.used.add(name)
        while layer.class_name in _PASS_THROUGH:
            if len(layer.inputs) != 1:
                raise _unsupported(f"{layer.describe()} has {len(layer.inputs)} inputs")
            layer = self.layers[layer.inputs[0]]
            self.used.add(layer.name)
        return layer

    def expect(self, layer: Layer, class_name: str, role: str) -> Layer:
        if layer.class_name != class_name:
            raise _unsupported(
                f"unsupported {layer.describe()} where the {role} ({class_name}) should be"
            )
        return layer

    def single_input(self, layer: Layer) -> Layer:
        if len(layer.inputs) != 1:
            raise _unsupported(f"{layer.describe()} has {len(layer.inputs)} inputs, expected 1")
        return self.take(layer.inputs[0])


def _dense_activation(layer: Layer, role: str) -> DenseActivation:
    activation = layer.config.get("activation", "linear")
    if activation not in _DENSE_ACTIVATIONS:
        raise _unsupported(f"{layer.describe()} ({role}) uses activation {activation!r}")
    return activation


def _input_shape(layer: Layer) -> list[Any]:
    shape = layer.config.get("batch_input_shape") or layer.config.get("batch_shape")
    if not shape:
        raise _unsupported(f"{layer.describe()} has no input shape in the config")
    return list(shape)


def _check_lstm(lstm: Layer) -> None:
    config = lstm.config
    refused = {
        "return_sequences": True,
        "return_state": True,
        "go_backwards": True,
        "stateful": True,
    }
    for key, bad in refused.items():
        if config.get(key, False) == bad:
            raise _unsupported(f"{lstm.describe()} has {key}={bad}")
    if config.get("activation", "tanh") != "tanh":
        raise _unsupported(f"{lstm.describe()} uses activation {config.get('activation')!r}")
    if config.get("time_major", False):
        raise _unsupported(f"{lstm.describe()} is time_major")


def _recurrent_activation(lstm: Layer, keras_major: int) -> RecurrentActivation:
    kind = lstm.config.get("recurrent_activation", "sigmoid")
    if kind == "sigmoid":
        return "sigmoid"
    if kind == "hard_sigmoid":
        return "hard_sigmoid_keras2" if keras_major < 3 else "hard_sigmoid_keras3"
    raise _unsupported(f"{lstm.describe()} uses recurrent_activation {kind!r}")


def _check_merge(merge: Layer) -> Merge:
    kind = _MERGES.get(merge.class_name)
    if kind is None:
        raise _unsupported(
            f"unsupported {merge.describe()} where the add/concatenate merge should be"
        )
    if kind == "concatenate" and merge.config.get("axis", -1) not in (-1, 1):
        raise _unsupported(f"{merge.describe()} concatenates on axis {merge.config.get('axis')}")
    if len(merge.inputs) != 2:
        raise _unsupported(f"{merge.describe()} merges {len(merge.inputs)} inputs, expected 2")
    return kind


def keras_major_of(model_config: dict[str, Any], saved_version: str | None) -> int:
    """Which Keras wrote the file: its recorded version, else the config dialect."""
    version = saved_version or model_config.get("keras_version")
    if version:
        try:
            return int(str(version).split(".")[0])
        except ValueError:
            pass
    layers = (model_config.get("config") or {}).get("layers") or []
    keras3 = any(
        isinstance(node, dict) for layer in layers for node in layer.get("inbound_nodes") or []
    )
    return 3 if keras3 or "module" in model_config else 2


def read_architecture(
    model_config: dict[str, Any], saved_version: str | None = None
) -> DecoderArchitecture:
    """Map a Keras model config onto the tutorial decoder, refusing anything outside the family."""
    try:
        return _read_architecture(model_config, saved_version)
    # RecursionError: the walks below recurse through the config; the reader
    # refuses configs nested over 100 deep, this catches any other caller's.
    # OverflowError: int(float("inf")), which JSON's Infinity makes possible.
    except (
        KeyError,
        TypeError,
        ValueError,
        IndexError,
        AttributeError,
        RecursionError,
        OverflowError,
    ) as error:
        raise UnsupportedModelError(
            f"the model config is malformed or from an unknown Keras dialect "
            f"({type(error).__name__}: {error})"
        ) from error


def _read_architecture(
    model_config: dict[str, Any], saved_version: str | None
) -> DecoderArchitecture:
    layers, input_names, output_names = _parse_layers(model_config)
    allowed = (
        _PASS_THROUGH | _MASK_HELPERS | set(_MERGES) | {"InputLayer", "Dense", "Embedding", "LSTM"}
    )
    for layer in layers.values():
        if layer.class_name not in allowed:
            raise _unsupported(f"unsupported {layer.describe()}")
    if len(output_names) != 1:
        raise _unsupported(f"the model has {len(output_names)} outputs, expected 1")
    if len(input_names) != 2:
        raise _unsupported(
            f"the model has {len(input_names)} inputs, expected 2 (photo features, word ids)"
        )

    walk = _Walker(layers)
    output = walk.expect(walk.take(output_names[0]), "Dense", "output layer")
    if output.config.get("activation") != "softmax":
        raise _unsupported(
            f"{output.describe()} (output) uses activation {output.config.get('activation')!r}, "
            "expected softmax"
        )
    hidden = walk.expect(walk.single_input(output), "Dense", "hidden Dense layer")
    merge_layer = walk.single_input(hidden)
    merge = _check_merge(merge_layer)
    branches = [walk.take(name) for name in merge_layer.inputs]
    lstm_positions = [i for i, branch in enumerate(branches) if branch.class_name == "LSTM"]
    if len(lstm_positions) != 1:
        found = " and ".join(branch.describe() for branch in branches)
        raise _unsupported(
            f"{merge_layer.describe()} merges {found}; expected one LSTM and one Dense"
        )
    lstm = branches[lstm_positions[0]]
    photo_dense = walk.expect(branches[1 - lstm_positions[0]], "Dense", "photo Dense layer")
    _check_lstm(lstm)
    embedding = walk.expect(walk.single_input(lstm), "Embedding", "word embedding")
    sequence_input = walk.expect(walk.single_input(embedding), "InputLayer", "word-id input")
    photo_input = walk.expect(walk.single_input(photo_dense), "InputLayer", "photo-feature input")
    if not embedding.config.get("mask_zero", False):
        raise _unsupported(
            f"{embedding.describe()} has mask_zero=False: padding would change the LSTM state, "
            "so the prefix cannot be decoded one word at a time"
        )
    leftovers = [
        layers[name]
        for name in layers
        if name not in walk.used and layers[name].class_name not in _MASK_HELPERS
    ]
    if leftovers:
        raise _unsupported(f"unsupported extra {leftovers[0].describe()}")

    keras_major = keras_major_of(model_config, saved_version)
    photo_shape = _input_shape(photo_input)
    sequence_shape = _input_shape(sequence_input)
    if len(photo_shape) != 2 or not photo_shape[1]:
        raise _unsupported(f"{photo_input.describe()} has shape {photo_shape}, expected [None, F]")
    if len(sequence_shape) != 2:
        raise _unsupported(
            f"{sequence_input.describe()} has shape {sequence_shape}, expected [None, T]"
        )
    vocab_size = int(output.config["units"])
    if int(embedding.config["input_dim"]) < vocab_size:
        raise _unsupported(
            f"{embedding.describe()} knows {embedding.config['input_dim']} word ids but "
            f"{output.describe()} predicts {vocab_size}; a predicted word could not be fed back"
        )
    units = int(lstm.config["units"])
    projection_size = int(photo_dense.config["units"])
    if merge == "add" and projection_size != units:
        raise _unsupported(f"{merge_layer.describe()} adds {projection_size} to {units} values")
    return DecoderArchitecture(
        photo_input=photo_input.name,
        sequence_input=sequence_input.name,
        photo_dense=photo_dense.name,
        embedding=embedding.name,
        lstm=lstm.name,
        merge_layer=merge_layer.name,
        hidden_dense=hidden.name,
        output_dense=output.name,
        feature_size=int(photo_shape[1]),
        max_length=int(sequence_shape[1]) if sequence_shape[1] else None,
        vocab_size=vocab_size,
        embedding_input_dim=int(embedding.config["input_dim"]),
        embedding_size=int(embedding.config["output_dim"]),
        units=units,
        projection_size=projection_size,
        hidden_size=int(hidden.config["units"]),
        photo_activation=_dense_activation(photo_dense, "photo Dense"),
        hidden_activation=_dense_activation(hidden, "hidden Dense"),
        recurrent_activation=_recurrent_activation(lstm, keras_major),
        merge=merge,
        photo_first=lstm_positions[0] == 1,
        keras_major=keras_major,
        layer_bias={
            layer.name: bool(layer.config.get("use_bias", True))
            for layer in (photo_dense, lstm, hidden, output)
        },
    )

"""Recognising the tutorial decoder from its saved config, and refusing everything else by name.

These work on the real Keras 2.8 config (and edits of it) with no TensorFlow.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from capgen.convert.architecture import read_architecture
from capgen.convert.convert_model import resolve_max_length
from capgen.runtime.errors import InputError, UnsupportedModelError


@pytest.fixture
def real_config(shared_data: Path) -> dict[str, Any]:
    return json.loads((shared_data / "model_configs" / "decoder_keras2.8.json").read_text())


def _layer(config: dict[str, Any], name: str) -> dict[str, Any]:
    return next(layer for layer in config["config"]["layers"] if layer["name"] == name)


def test_real_config_is_read_not_assumed(real_config: dict[str, Any]) -> None:
    arch = read_architecture(real_config)

    assert (arch.feature_size, arch.max_length, arch.vocab_size) == (2048, 32, 7577)
    assert (arch.embedding_size, arch.units, arch.projection_size, arch.hidden_size) == (256,) * 4
    assert arch.recurrent_activation == "sigmoid"
    assert arch.merge == "add" and arch.photo_first
    assert arch.keras_major == 2
    assert (arch.photo_dense, arch.embedding, arch.lstm, arch.hidden_dense, arch.output_dense) == (
        "dense_6",
        "embedding_2",
        "lstm_2",
        "dense_7",
        "dense_8",
    )


@pytest.mark.parametrize(
    ("keras_version", "expected"),
    [
        ("2.8.0", "hard_sigmoid_keras2"),
        ("2.2.4", "hard_sigmoid_keras2"),
        ("3.1.0", "hard_sigmoid_keras3"),
    ],
)
def test_hard_sigmoid_follows_the_keras_that_saved_it(
    real_config: dict[str, Any], keras_version: str, expected: str
) -> None:
    _layer(real_config, "lstm_2")["config"]["recurrent_activation"] = "hard_sigmoid"
    real_config["keras_version"] = keras_version
    assert read_architecture(real_config).recurrent_activation == expected


def test_file_version_wins_over_config_version(real_config: dict[str, Any]) -> None:
    _layer(real_config, "lstm_2")["config"]["recurrent_activation"] = "hard_sigmoid"
    assert read_architecture(real_config, saved_version="3.15.1").recurrent_activation == (
        "hard_sigmoid_keras3"
    )


def test_merge_input_order_and_concatenate(real_config: dict[str, Any]) -> None:
    merge = _layer(real_config, "add_26")
    merge["class_name"] = "Concatenate"
    merge["config"]["axis"] = -1
    merge["inbound_nodes"] = [[["lstm_2", 0, 0, {}], ["dense_6", 0, 0, {}]]]
    arch = read_architecture(real_config)
    assert arch.merge == "concatenate" and not arch.photo_first


@pytest.mark.parametrize("replacement", ["GRU", "Bidirectional", "SimpleRNN", "Attention"])
def test_other_recurrent_or_attention_layers_are_named(
    real_config: dict[str, Any], replacement: str
) -> None:
    _layer(real_config, "lstm_2")["class_name"] = replacement
    with pytest.raises(UnsupportedModelError, match=f"unsupported {replacement} layer 'lstm_2'"):
        read_architecture(real_config)


def test_extra_layer_is_named(real_config: dict[str, Any]) -> None:
    extra = copy.deepcopy(_layer(real_config, "dense_7"))
    extra["name"] = extra["config"]["name"] = "dense_extra"
    real_config["config"]["layers"].append(extra)
    with pytest.raises(UnsupportedModelError, match="extra Dense layer 'dense_extra'"):
        read_architecture(real_config)


def test_layer_inserted_in_the_path_is_named(real_config: dict[str, Any]) -> None:
    norm = {
        "class_name": "BatchNormalization",
        "name": "bn",
        "config": {"name": "bn"},
        "inbound_nodes": [[["dense_7", 0, 0, {}]]],
    }
    real_config["config"]["layers"].append(norm)
    _layer(real_config, "dense_8")["inbound_nodes"] = [[["bn", 0, 0, {}]]]
    with pytest.raises(UnsupportedModelError, match="BatchNormalization layer 'bn'"):
        read_architecture(real_config)


def test_plain_classifier_is_refused() -> None:
    classifier = {
        "class_name": "Functional",
        "config": {
            "name": "classifier",
            "layers": [
                {
                    "class_name": "InputLayer",
                    "name": "image",
                    "config": {"batch_input_shape": [None, 32, 32, 3]},
                    "inbound_nodes": [],
                },
                {
                    "class_name": "Conv2D",
                    "name": "conv",
                    "config": {"filters": 8},
                    "inbound_nodes": [[["image", 0, 0, {}]]],
                },
                {
                    "class_name": "Flatten",
                    "name": "flat",
                    "config": {},
                    "inbound_nodes": [[["conv", 0, 0, {}]]],
                },
                {
                    "class_name": "Dense",
                    "name": "classes",
                    "config": {"units": 10, "activation": "softmax"},
                    "inbound_nodes": [[["flat", 0, 0, {}]]],
                },
            ],
            "input_layers": [["image", 0, 0]],
            "output_layers": [["classes", 0, 0]],
        },
    }
    with pytest.raises(UnsupportedModelError, match="unsupported Conv2D layer 'conv'"):
        read_architecture(classifier)


def test_sequential_is_refused() -> None:
    with pytest.raises(UnsupportedModelError, match="Sequential"):
        read_architecture({"class_name": "Sequential", "config": {"layers": []}})


def test_mask_zero_false_is_refused(real_config: dict[str, Any]) -> None:
    _layer(real_config, "embedding_2")["config"]["mask_zero"] = False
    with pytest.raises(UnsupportedModelError, match="mask_zero=False"):
        read_architecture(real_config)


def test_output_without_softmax_is_refused(real_config: dict[str, Any]) -> None:
    _layer(real_config, "dense_8")["config"]["activation"] = "linear"
    with pytest.raises(UnsupportedModelError, match="expected softmax"):
        read_architecture(real_config)


def test_lstm_returning_sequences_is_refused(real_config: dict[str, Any]) -> None:
    _layer(real_config, "lstm_2")["config"]["return_sequences"] = True
    with pytest.raises(UnsupportedModelError, match="return_sequences=True"):
        read_architecture(real_config)


def test_feature_size_comes_from_the_config(real_config: dict[str, Any]) -> None:
    _layer(real_config, "input_7")["config"]["batch_input_shape"] = [None, 4096]
    assert read_architecture(real_config).feature_size == 4096


def test_max_length_override_only_for_variable_length(real_config: dict[str, Any]) -> None:
    fixed = read_architecture(real_config)
    assert resolve_max_length(fixed, None) == 32
    assert resolve_max_length(fixed, 32) == 32
    with pytest.raises(InputError, match="contradicts the model"):
        resolve_max_length(fixed, 40)

    _layer(real_config, "input_8")["config"]["batch_input_shape"] = [None, None]
    variable = read_architecture(real_config)
    assert variable.max_length is None
    with pytest.raises(InputError, match="pass --max-length"):
        resolve_max_length(variable, None)
    assert resolve_max_length(variable, 34) == 34


@pytest.mark.parametrize(
    "damage",
    ["missing units", "unknown inbound layer", "layers not a list", "inbound node garbage"],
)
def test_malformed_configs_fail_cleanly(real_config: dict[str, Any], damage: str) -> None:
    if damage == "missing units":
        del _layer(real_config, "dense_8")["config"]["units"]
    elif damage == "unknown inbound layer":
        _layer(real_config, "dense_8")["inbound_nodes"] = [[["ghost", 0, 0, {}]]]
    elif damage == "layers not a list":
        real_config["config"]["layers"] = 42
    else:
        _layer(real_config, "lstm_2")["inbound_nodes"] = [[7]]
    with pytest.raises(UnsupportedModelError, match="malformed"):
        read_architecture(real_config)


def test_embedding_smaller_than_the_output_is_refused(real_config: dict[str, Any]) -> None:
    _layer(real_config, "embedding_2")["config"]["input_dim"] = 5000
    with pytest.raises(UnsupportedModelError, match=r"knows 5000 word ids .* predicts 7577"):
        read_architecture(real_config)


def test_reading_a_config_needs_neither_onnx_nor_tensorflow() -> None:
    """architecture.py takes its types from decoder_types, not from the onnx graph builder."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import capgen.convert.architecture, capgen.convert.decoder_weights\n"
        "print(sorted({'onnx', 'tensorflow'} & set(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"

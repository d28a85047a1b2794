"""Build the decoder's two small ONNX graphs straight from numpy weights.

The tutorial model runs the whole LSTM over the padded prefix for every word.
capgen splits it instead: `photo_projection` runs once per image and
`decoder_step` advances every hypothesis by one word. Writing these graphs by
hand (rather than tracing Keras) keeps them tiny, lets us fold the embedding
into the LSTM's input gates (one Gather replaces Embedding + MatMul + bias in
the per-word path, which matters because a step costs microseconds), and makes
the interface exactly the one in docs/design.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
FORMAT_VERSION = 1

RecurrentActivation = Literal["sigmoid", "hard_sigmoid_keras2", "hard_sigmoid_keras3"]
Merge = Literal["add", "concatenate"]
DenseActivation = Literal["relu", "linear", "tanh", "sigmoid"]


@dataclass(frozen=True)
class DecoderWeights:
    """The tutorial decoder's weights in Keras layout (kernels are [in, out]).

    LSTM gate order is Keras's: input, forget, cell, output.
    """

    photo_kernel: np.ndarray  # [F, P]
    photo_bias: np.ndarray  # [P]
    photo_activation: DenseActivation
    embedding: np.ndarray  # [V_in, E]
    lstm_kernel: np.ndarray  # [E, 4U]
    lstm_recurrent_kernel: np.ndarray  # [U, 4U]
    lstm_bias: np.ndarray  # [4U]
    recurrent_activation: RecurrentActivation
    merge: Merge
    photo_first: bool  # order of the merge's inputs (matters for concatenate)
    hidden_kernel: np.ndarray  # [P+U or U, D]
    hidden_bias: np.ndarray  # [D]
    hidden_activation: DenseActivation
    output_kernel: np.ndarray  # [D, V]
    output_bias: np.ndarray  # [V]

    @property
    def units(self) -> int:
        return int(self.lstm_recurrent_kernel.shape[0])

    @property
    def feature_size(self) -> int:
        return int(self.photo_kernel.shape[0])

    @property
    def projection_size(self) -> int:
        return int(self.photo_kernel.shape[1])

    @property
    def embedding_size(self) -> int:
        return int(self.embedding.shape[1])

    @property
    def vocab_size(self) -> int:
        return int(self.output_kernel.shape[1])


def _f32(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32)


def _activation_nodes(kind: str, source: str, target: str, prefix: str) -> list[onnx.NodeProto]:
    if kind == "relu":
        return [helper.make_node("Relu", [source], [target], name=f"{prefix}_relu")]
    if kind == "tanh":
        return [helper.make_node("Tanh", [source], [target], name=f"{prefix}_tanh")]
    if kind == "sigmoid":
        return [helper.make_node("Sigmoid", [source], [target], name=f"{prefix}_sigmoid")]
    if kind == "linear":
        return [helper.make_node("Identity", [source], [target], name=f"{prefix}_identity")]
    raise ValueError(f"unsupported activation {kind!r}")


def _recurrent_activation_nodes(
    kind: RecurrentActivation, source: str, target: str, prefix: str
) -> list[onnx.NodeProto]:
    if kind == "sigmoid":
        return [helper.make_node("Sigmoid", [source], [target], name=f"{prefix}_sigmoid")]
    # Keras 2 defined hard_sigmoid as clip(0.2x + 0.5, 0, 1); Keras 3 as clip(x/6 + 0.5, 0, 1).
    alpha = 0.2 if kind == "hard_sigmoid_keras2" else 1.0 / 6.0
    return [
        helper.make_node(
            "HardSigmoid", [source], [target], name=f"{prefix}_hardsigmoid", alpha=alpha, beta=0.5
        )
    ]


def build_projection_graph(weights: DecoderWeights) -> onnx.ModelProto:
    """features [N, F] -> photo [N, P]: the tutorial's Dense on the photo, run once per image."""
    initializers = [
        numpy_helper.from_array(_f32(weights.photo_kernel), "photo_kernel"),
        numpy_helper.from_array(_f32(weights.photo_bias), "photo_bias"),
    ]
    nodes = [
        helper.make_node("MatMul", ["features", "photo_kernel"], ["photo_mm"], name="photo_matmul"),
        helper.make_node("Add", ["photo_mm", "photo_bias"], ["photo_pre"], name="photo_bias_add"),
        *_activation_nodes(weights.photo_activation, "photo_pre", "photo", "photo"),
    ]
    graph = helper.make_graph(
        nodes,
        "capgen_photo_projection",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", weights.feature_size])],
        [helper.make_tensor_value_info("photo", TensorProto.FLOAT, ["N", weights.projection_size])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.producer_name = "capgen"
    onnx.checker.check_model(model)
    return model


def build_step_graph(
    weights: DecoderWeights,
    metadata: dict[str, str] | None = None,
) -> onnx.ModelProto:
    """(word, h, c, photo) -> (log_probs, h_out, c_out) for a batch of hypotheses.

    The embedding's share of the LSTM gates (embedding @ W + b) is precomputed
    into one [V, 4U] table, so a step is Gather + one [N,U]x[U,4U] MatMul +
    elementwise gates + the two output Dense layers.
    """
    units = weights.units
    gate_table = _f32(
        weights.embedding.astype(np.float64) @ weights.lstm_kernel.astype(np.float64)
        + weights.lstm_bias.astype(np.float64)
    )
    initializers = [
        numpy_helper.from_array(gate_table, "word_gate_table"),
        numpy_helper.from_array(_f32(weights.lstm_recurrent_kernel), "recurrent_kernel"),
        numpy_helper.from_array(
            np.array([units, units, units, units], dtype=np.int64), "gate_split"
        ),
        numpy_helper.from_array(_f32(weights.hidden_kernel), "hidden_kernel"),
        numpy_helper.from_array(_f32(weights.hidden_bias), "hidden_bias"),
        numpy_helper.from_array(_f32(weights.output_kernel), "output_kernel"),
        numpy_helper.from_array(_f32(weights.output_bias), "output_bias"),
    ]
    nodes: list[onnx.NodeProto] = [
        helper.make_node(
            "Gather", ["word_gate_table", "word"], ["x_gates"], name="word_gates", axis=0
        ),
        helper.make_node("MatMul", ["h", "recurrent_kernel"], ["h_gates"], name="recurrent_matmul"),
        helper.make_node("Add", ["x_gates", "h_gates"], ["gates"], name="gates_add"),
        helper.make_node(
            "Split",
            ["gates", "gate_split"],
            ["z_i", "z_f", "z_c", "z_o"],
            name="gates_split",
            axis=1,
        ),
        *_recurrent_activation_nodes(weights.recurrent_activation, "z_i", "gate_i", "gate_i"),
        *_recurrent_activation_nodes(weights.recurrent_activation, "z_f", "gate_f", "gate_f"),
        *_recurrent_activation_nodes(weights.recurrent_activation, "z_o", "gate_o", "gate_o"),
        helper.make_node("Tanh", ["z_c"], ["cell_candidate"], name="cell_tanh"),
        helper.make_node("Mul", ["gate_f", "c"], ["c_kept"], name="forget_mul"),
        helper.make_node("Mul", ["gate_i", "cell_candidate"], ["c_new"], name="input_mul"),
        helper.make_node("Add", ["c_kept", "c_new"], ["c_out"], name="cell_add"),
        helper.make_node("Tanh", ["c_out"], ["c_tanh"], name="cell_out_tanh"),
        helper.make_node("Mul", ["gate_o", "c_tanh"], ["h_out"], name="hidden_mul"),
    ]
    merged_inputs = ["photo", "h_out"] if weights.photo_first else ["h_out", "photo"]
    if weights.merge == "add":
        nodes.append(helper.make_node("Add", merged_inputs, ["merged"], name="merge_add"))
    else:
        nodes.append(
            helper.make_node("Concat", merged_inputs, ["merged"], name="merge_concat", axis=1)
        )
    nodes += [
        helper.make_node(
            "MatMul", ["merged", "hidden_kernel"], ["hidden_mm"], name="hidden_matmul"
        ),
        helper.make_node(
            "Add", ["hidden_mm", "hidden_bias"], ["hidden_pre"], name="hidden_bias_add"
        ),
        *_activation_nodes(weights.hidden_activation, "hidden_pre", "hidden", "hidden"),
        helper.make_node(
            "MatMul", ["hidden", "output_kernel"], ["logits_mm"], name="output_matmul"
        ),
        helper.make_node("Add", ["logits_mm", "output_bias"], ["logits"], name="output_bias_add"),
        helper.make_node("LogSoftmax", ["logits"], ["log_probs"], name="log_softmax", axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "capgen_decoder_step",
        [
            helper.make_tensor_value_info("word", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("h", TensorProto.FLOAT, ["N", units]),
            helper.make_tensor_value_info("c", TensorProto.FLOAT, ["N", units]),
            helper.make_tensor_value_info(
                "photo", TensorProto.FLOAT, ["N", weights.projection_size]
            ),
        ],
        [
            helper.make_tensor_value_info(
                "log_probs", TensorProto.FLOAT, ["N", weights.vocab_size]
            ),
            helper.make_tensor_value_info("h_out", TensorProto.FLOAT, ["N", units]),
            helper.make_tensor_value_info("c_out", TensorProto.FLOAT, ["N", units]),
        ],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.producer_name = "capgen"
    props = {"capgen.format_version": str(FORMAT_VERSION), **(metadata or {})}
    helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    return model


def step_metadata(
    index_word: list[str | None], start_token: str, end_token: str, max_length: int
) -> dict[str, str]:
    """The metadata_props that make a step graph self-describing."""
    return {
        "capgen.vocabulary": json.dumps(index_word),
        "capgen.start_token": start_token,
        "capgen.end_token": end_token,
        "capgen.max_length": str(max_length),
    }

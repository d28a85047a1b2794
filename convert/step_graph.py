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
from typing import Any, Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from capgen.convert.decoder_types import DecoderWeights, RecurrentActivation
from capgen.convert.portable import make_portable
from capgen.runtime.manifest import FORMAT_VERSION

OPSET = 17

OutputLayer = Literal["float32", "int8_rescored"]
MS_DOMAIN = "com.microsoft"
# The fast step rescores this many int8 candidates per row exactly: more than
# beam search ever takes from a row (beam_size + min(1 + no-word ids, beam_size - 1)
# = 5 at beam 3), and the int8 logit error (<= ~0.25 nats measured on the
# real-size decoder) would need 8 words within that of the best to push the true
# best out. Measured: 8 and 16 cost the same.
RESCORE_CANDIDATES = 8
# MatMulNBits block along K; 128 measured fastest for K = 256 (32: +30%).
INT8_BLOCK = 128


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


def _dense_nodes(
    source: str, kernel: str, bias: str, target: str, prefix: str, product: str | None = None
) -> list[onnx.NodeProto]:
    """source @ kernel + bias -> target (onnxruntime fuses the pair into one Gemm)."""
    product_name = f"{product or prefix}_mm"
    return [
        helper.make_node("MatMul", [source, kernel], [product_name], name=f"{prefix}_matmul"),
        helper.make_node("Add", [product_name, bias], [target], name=f"{prefix}_bias_add"),
    ]


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
    model = make_portable(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]))
    model.producer_name = "capgen"
    onnx.checker.check_model(model)
    return model


def quantize_int8_blocks(kernel: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric 8-bit, one scale per (output column, block of `block` inputs), MatMulNBits layout.

    Returns B as uint8 [N, ceil(K/block), block] holding q + 128 (the op's
    default zero point for 8 bits; K is zero-padded to whole blocks) and the
    scales as float32 [N * blocks]; w ~= (B - 128) * scale.
    """
    k, n = kernel.shape
    blocks = -(-k // block)
    padded = np.zeros((blocks * block, n), dtype=np.float64)
    padded[:k] = kernel
    grouped = padded.T.reshape(n, blocks, block)
    scale = np.abs(grouped).max(axis=2) / 127.0
    scale[scale == 0] = 1.0  # an all-zero block: any scale reproduces it
    quantized = np.clip(np.rint(grouped / scale[:, :, None]), -127, 127) + 128
    return quantized.astype(np.uint8), scale.astype(np.float32).reshape(-1)


def _int8_block_size(k: int) -> int:
    """MatMulNBits wants a power of two >= 16."""
    size = 16
    while size < min(k, INT8_BLOCK):
        size *= 2
    return size


def _int8_rescored_output(
    output_kernel: np.ndarray, output_bias: np.ndarray
) -> tuple[list[onnx.TensorProto], list[onnx.NodeProto]]:
    """hidden -> logits with INT8 weights, then the best candidates' logits recomputed in float32.

    Why: the output Dense reads V x D float32 weights every step (7.8 MB for
    the tutorial's 7,577 words), which makes a single caption's step memory-
    bound; INT8 weights (MatMulNBits, int8 compute) are a quarter of that and
    fit in a core's L2. INT8 alone changed 6% of a trained model's greedy
    captions and 21% of the real-size decoder's (logit errors up to ~0.25 nats
    flip near-ties); recomputing the top RESCORE_CANDIDATES logits exactly
    from float32 rows ([V, D], read only those rows) makes the choice among
    them exact, so greedy picks the float32 step's words (100% of 6,000
    captions). Scores of the other words, and so the softmax normaliser, stay
    approximate: log-probabilities are not within the exact step's 1e-5, and
    beam search (which compares rows) matched 99% of beam-3 captions.
    """
    kernel = output_kernel
    k, n = kernel.shape
    block = _int8_block_size(k)
    packed, scales = quantize_int8_blocks(kernel, block)
    candidates = min(RESCORE_CANDIDATES, n)
    initializers = [
        numpy_helper.from_array(packed, "output_kernel_q8"),
        numpy_helper.from_array(scales, "output_scales"),
        numpy_helper.from_array(_f32(output_bias), "output_bias"),
        numpy_helper.from_array(_f32(kernel.T), "output_rows"),
        numpy_helper.from_array(np.array([candidates], dtype=np.int64), "rescore_count"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "last_axis"),
    ]
    nodes = [
        helper.make_node(
            "MatMulNBits",
            ["hidden", "output_kernel_q8", "output_scales", "", "", "output_bias"],
            ["logits_q8"],
            name="output_matmul_q8",
            domain=MS_DOMAIN,
            K=k,
            N=n,
            bits=8,
            block_size=block,
            accuracy_level=4,  # int8 compute; the float paths dequantise and are ~50x slower
        ),
    ]
    # (op, inputs, outputs, name, attributes): exact logits of the INT8 top candidates.
    rescoring: list[tuple[str, list[str], list[str], str, dict[str, Any]]] = [
        ("TopK", ["logits_q8", "rescore_count"], ["candidate_q8_logits", "candidates"],
         "candidates", {"axis": 1}),
        ("Gather", ["output_rows", "candidates"], ["candidate_rows"], "candidate_rows", {"axis": 0}),
        ("Unsqueeze", ["hidden", "last_axis"], ["hidden_column"], "hidden_column", {}),
        ("MatMul", ["candidate_rows", "hidden_column"], ["candidate_mm3"], "candidate_matmul", {}),
        ("Squeeze", ["candidate_mm3", "last_axis"], ["candidate_mm"], "candidate_squeeze", {}),
        ("Gather", ["output_bias", "candidates"], ["candidate_bias"], "candidate_bias", {"axis": 0}),
        ("Add", ["candidate_mm", "candidate_bias"], ["candidate_logits"], "candidate_bias_add", {}),
        ("ScatterElements", ["logits_q8", "candidates", "candidate_logits"], ["logits"],
         "rescore", {"axis": 1}),
    ]  # fmt: skip
    nodes += [helper.make_node(op, i, o, name=name, **attrs) for op, i, o, name, attrs in rescoring]
    return initializers, nodes


def build_step_graph(
    weights: DecoderWeights,
    metadata: dict[str, str] | None = None,
    output_layer: OutputLayer = "float32",
    zero_padding_row: bool = False,
) -> onnx.ModelProto:
    """(word, h, c, photo) -> (log_probs, h_out, c_out) for a batch of hypotheses.

    The embedding's share of the LSTM gates (embedding @ W + b) is precomputed
    into one [V, 4U] table, so a step is Gather + one [N,U]x[U,4U] MatMul +
    elementwise gates + the two output Dense layers.

    `output_layer="int8_rescored"` builds the opt-in fast step instead (see
    `_int8_rescored_output`): same interface, same greedy words, but only the
    best candidates' scores are exact (up to the normaliser).

    `zero_padding_row` makes the padding id 0 contribute nothing: from the zero
    state its gates are all 0, so the cell candidate tanh(0) = 0 keeps h = c = 0
    exactly, and the step scores the first word from the empty prefix. That is
    what Keras computes (mask_zero) when the caption loop starts from a word
    the tokenizer does not know, so the first input is all padding.
    """
    units = weights.units
    gate_table = word_gate_table(weights, zero_padding_row)
    initializers = [
        numpy_helper.from_array(gate_table, "word_gate_table"),
        numpy_helper.from_array(_f32(weights.lstm_recurrent_kernel), "recurrent_kernel"),
        numpy_helper.from_array(
            np.array([units, units, units, units], dtype=np.int64), "gate_split"
        ),
        numpy_helper.from_array(_f32(weights.hidden_kernel), "hidden_kernel"),
        numpy_helper.from_array(_f32(weights.hidden_bias), "hidden_bias"),
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
        *_dense_nodes("merged", "hidden_kernel", "hidden_bias", "hidden_pre", "hidden"),
        *_activation_nodes(weights.hidden_activation, "hidden_pre", "hidden", "hidden"),
    ]
    if output_layer == "float32":
        initializers += [
            numpy_helper.from_array(_f32(weights.output_kernel), "output_kernel"),
            numpy_helper.from_array(_f32(weights.output_bias), "output_bias"),
        ]
        nodes += _dense_nodes(
            "hidden", "output_kernel", "output_bias", "logits", "output", "logits"
        )
    elif output_layer == "int8_rescored":
        rescore_initializers, rescore_nodes = _int8_rescored_output(
            weights.output_kernel, weights.output_bias
        )
        initializers += rescore_initializers
        nodes += rescore_nodes
    else:
        raise ValueError(f"unknown output_layer {output_layer!r}")
    nodes.append(
        helper.make_node("LogSoftmax", ["logits"], ["log_probs"], name="log_softmax", axis=1)
    )
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
    opsets = [helper.make_opsetid("", OPSET)]
    if output_layer != "float32":
        opsets.append(helper.make_opsetid(MS_DOMAIN, 1))
    model = make_portable(helper.make_model(graph, opset_imports=opsets))
    model.producer_name = "capgen"
    props = {"capgen.format_version": str(FORMAT_VERSION), **(metadata or {})}
    if output_layer != "float32":
        props["capgen.output_layer"] = output_layer
    helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    return model


def word_gate_factors(weights: DecoderWeights) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The float32 embedding [V, E], LSTM kernel [E, 4U] and bias [4U] the word-gate table is made of.

    float32 as the graphs hold them (a Keras model's weights are float32 already,
    so for a real model this is the weights unchanged).
    """
    return _f32(weights.embedding), _f32(weights.lstm_kernel), _f32(weights.lstm_bias)


def word_gate_table(weights: DecoderWeights, zero_padding_row: bool = False) -> np.ndarray:
    """The step's [V, 4U] table: embedding @ kernel + bias in float64, rounded once to float32."""
    embedding, kernel, bias = (f.astype(np.float64) for f in word_gate_factors(weights))
    table = _f32(embedding @ kernel + bias)
    if zero_padding_row:
        table[0] = 0.0
    return table


# The word-gates graph's metadata: how decoder_step.onnx's table is made from it.
WORD_GATES_TABLE_PROP = "capgen.word_gates.table"
WORD_GATES_ZERO_ROW_PROP = "capgen.word_gates.zero_padding_row"


def build_word_gates_graph(
    weights: DecoderWeights, zero_padding_row: bool = False
) -> onnx.ModelProto:
    """word [N] int64 -> x_gates [N, 4U]: Gather(embedding) @ kernel + bias, the table's factors.

    decoder_step.onnx's `word_gate_table` is this graph computed in float64 and
    rounded to float32 (row 0 zero when `zero_padding_row`), as its metadata
    says; the graph itself runs in float32. The Python runtime does not use it:
    `capgen export web` ships these factors (8.5 MB for the default model)
    instead of the table (30 MB) and recomputes the table's rows in the browser.
    """
    embedding, kernel, bias = word_gate_factors(weights)
    gates = int(kernel.shape[1])
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["embedding", "word"], ["embedded"], name="embed", axis=0),
            helper.make_node("MatMul", ["embedded", "kernel"], ["x_mm"], name="word_matmul"),
            helper.make_node("Add", ["x_mm", "bias"], ["x_gates"], name="word_bias_add"),
        ],
        "capgen_word_gates",
        [helper.make_tensor_value_info("word", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("x_gates", TensorProto.FLOAT, ["N", gates])],
        [
            numpy_helper.from_array(embedding, "embedding"),
            numpy_helper.from_array(kernel, "kernel"),
            numpy_helper.from_array(bias, "bias"),
        ],
    )
    model = make_portable(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]))
    model.producer_name = "capgen"
    helper.set_model_props(
        model,
        {
            "capgen.format_version": str(FORMAT_VERSION),
            WORD_GATES_TABLE_PROP: (
                "the decoder step's word_gate_table [V, 4U] is embedding @ kernel + bias "
                "of this graph computed in float64 and rounded to float32"
                + ("; its row 0 (the padding id) is zero" if zero_padding_row else "")
            ),
            WORD_GATES_ZERO_ROW_PROP: "true" if zero_padding_row else "false",
        },
    )
    onnx.checker.check_model(model)
    return model


def fast_step_from_exact(exact: onnx.ModelProto) -> onnx.ModelProto:
    """The `int8_rescored` step made from a float32 step graph written by `build_step_graph`.

    So a model folder converted before the fast step existed can gain one
    without its Keras files: the output Dense is swapped, the rest is kept.
    """
    graph = exact.graph
    names = [node.name for node in graph.node]
    if names[-3:] != ["output_matmul", "output_bias_add", "log_softmax"]:
        raise ValueError("not a capgen float32 decoder step graph (its output layer nodes differ)")
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    initializers, nodes = _int8_rescored_output(arrays["output_kernel"], arrays["output_bias"])
    fast = onnx.ModelProto()
    fast.CopyFrom(exact)
    kept = [t for t in graph.initializer if t.name not in ("output_kernel", "output_bias")]
    del fast.graph.initializer[:]
    fast.graph.initializer.extend(kept + initializers)
    del fast.graph.node[:]
    fast.graph.node.extend([*graph.node[:-3], *nodes, graph.node[-1]])
    fast.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    make_portable(fast)  # an exact step written before capgen lowered its IR version
    helper.set_model_props(
        fast,
        {
            **{p.key: p.value for p in exact.metadata_props},
            "capgen.output_layer": "int8_rescored",
        },
    )
    onnx.checker.check_model(fast)
    return fast


def step_metadata(
    index_word: list[str | None], start_token: str, end_token: str | None, max_length: int
) -> dict[str, str]:
    """The metadata_props that make a step graph self-describing."""
    return {
        "capgen.vocabulary": json.dumps(index_word),
        "capgen.start_token": start_token,
        "capgen.end_token": end_token or "",
        "capgen.max_length": str(max_length),
    }

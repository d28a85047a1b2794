"""Append Flatten -> Dense(ReLU) layers to an exported graph directly in ONNX.

VGG16's `fc2` cut carries 120 M of its 134 M parameters in two Dense layers;
through tf2onnx, whose constant folding copies every weight several times,
that export peaked above 22 GB and was killed. The convolutional part goes
through tf2onnx as usual (14.7 M parameters) and the Dense layers, which are
two MatMul + Add + Relu each, are written here: the same float32 arithmetic
Keras does, exact to the last ulp of the summation order.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FEATURES = "features"


def append_dense_head(model: Any, layers: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """Turn `model`'s output `features` [N, ...] into relu(... relu(flat @ k1 + b1) ...) in place."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    (output,) = graph.output
    inner = "conv_features"
    for node in graph.node:
        node.output[:] = [inner if name == FEATURES else name for name in node.output]
        node.input[:] = [inner if name == FEATURES else name for name in node.input]
    shape = numpy_helper.from_array(np.array([-1, layers[0][0].shape[0]], np.int64), "head_shape")
    graph.initializer.append(shape)
    nodes = [helper.make_node("Reshape", [inner, "head_shape"], ["head_flat"], name="head_flatten")]
    current = "head_flat"
    for index, (kernel, bias) in enumerate(layers, start=1):
        kernel_name, bias_name = f"head_dense{index}_kernel", f"head_dense{index}_bias"
        graph.initializer.append(numpy_helper.from_array(kernel.astype(np.float32), kernel_name))
        graph.initializer.append(numpy_helper.from_array(bias.astype(np.float32), bias_name))
        result = FEATURES if index == len(layers) else f"head_dense{index}"
        nodes += [
            helper.make_node("MatMul", [current, kernel_name], [f"{result}_mm"]),
            helper.make_node("Add", [f"{result}_mm", bias_name], [f"{result}_pre"]),
            helper.make_node("Relu", [f"{result}_pre"], [result]),
        ]
        current = result
    graph.node.extend(nodes)
    graph.output.remove(output)
    graph.output.append(
        helper.make_tensor_value_info(FEATURES, TensorProto.FLOAT, ["N", layers[-1][0].shape[1]])
    )

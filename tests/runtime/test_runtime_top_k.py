"""The embedded TopK graph is what onnx.helper builds, and selects like numpy."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from capgen.runtime.top_k import TOP_K_GRAPH, top_k


def test_embedded_graph_is_the_documented_top_k() -> None:
    graph = helper.make_graph(
        [
            helper.make_node(
                "TopK", ["scores", "k"], ["values", "indices"], axis=1, largest=1, sorted=1
            )
        ],
        "capgen_top_k",
        [
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["R", "V"]),
            helper.make_tensor_value_info("k", TensorProto.INT64, [1]),
        ],
        [
            helper.make_tensor_value_info("values", TensorProto.FLOAT, ["R", "K"]),
            helper.make_tensor_value_info("indices", TensorProto.INT64, ["R", "K"]),
        ],
    )
    expected = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="capgen", ir_version=8
    )
    embedded = onnx.load_from_string(TOP_K_GRAPH)
    onnx.checker.check_model(embedded)
    assert embedded.graph == expected.graph
    assert embedded.opset_import == expected.opset_import


@pytest.mark.parametrize("k", [1, 3, 9, 40])
def test_selects_the_best_columns_best_first_ties_to_lower_ids(k: int) -> None:
    rng = np.random.default_rng(k)
    scores = np.round(rng.normal(0, 2, (7, 40)), 1).astype(np.float32)  # rounding makes ties
    values, indices = top_k(scores, k)
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    assert np.array_equal(indices, expected)
    assert np.array_equal(values, np.take_along_axis(scores, expected, axis=1))

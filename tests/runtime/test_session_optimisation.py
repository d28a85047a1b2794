"""onnxruntime sessions run with graph optimisation on (issue 4), visible in the cached optimised graph."""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx
import pytest
from tiny_model import random_weights

from capgen.convert.step_graph import build_projection_graph
from capgen.runtime.graph_cache import _optimized_cache_path
from capgen.runtime.session import OnnxSession


def test_session_fuses_the_projection_graph(tmp_path: Path, private_capgen_home: Path) -> None:
    graph = build_projection_graph(random_weights())
    path = tmp_path / "photo_projection.onnx"
    onnx.save(graph, path)
    key = hashlib.sha256(path.read_bytes()).hexdigest()
    OnnxSession(path, ["features"], ["photo"], cache_key=key)

    cached = _optimized_cache_path(key)
    assert cached.is_file(), "the optimised graph was not cached"
    before = [node.op_type for node in graph.graph.node]
    after = [node.op_type for node in onnx.load(cached).graph.node]
    assert before == ["MatMul", "Add", "Relu"]
    # ORT_ENABLE_ALL fuses MatMul + Add (+ Relu) into one kernel; with optimisation
    # off the three nodes would survive unchanged.
    assert len(after) < len(before), f"no fusion happened: {after}"


@pytest.mark.parametrize("threads", [1, 2])
def test_thread_count_is_honoured(tmp_path: Path, threads: int) -> None:
    path = tmp_path / "photo_projection.onnx"
    onnx.save(build_projection_graph(random_weights()), path)
    session = OnnxSession(path, ["features"], ["photo"], threads=threads)
    options = session._session.get_session_options()
    assert options.intra_op_num_threads == threads

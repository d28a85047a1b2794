"""onnxruntime sessions run with graph optimisation on (issue 4), visible in the cached optimised graph."""

from __future__ import annotations

import gc
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


TASKS = Path("/proc/self/task")  # one entry per thread of this process (Linux)


@pytest.mark.skipif(not TASKS.is_dir(), reason="counts this process's threads in /proc/self/task")
@pytest.mark.parametrize("threads", [1, 3])
def test_thread_count_is_honoured(tmp_path: Path, threads: int) -> None:
    """onnxruntime starts the pool asked for: `threads - 1` workers beside the calling thread.

    Counted in the process, not read back from the options capgen set. Were the
    count ignored, onnxruntime's default (a thread per core) would start the same
    number of workers for both cases, so one of 1 and 3 fails on any machine.
    """
    path = tmp_path / "photo_projection.onnx"
    onnx.save(build_projection_graph(random_weights()), path)
    gc.collect()  # an earlier test's session ending during the count would shift it
    before = len(list(TASKS.iterdir()))
    session = OnnxSession(path, ["features"], ["photo"], threads=threads)
    started = len(list(TASKS.iterdir())) - before
    del session
    assert started == threads - 1

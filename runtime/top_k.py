"""Each row's k best word ids, fast: beam search's selection step.

numpy's `argpartition` over [beams, 7577] log-probabilities costs as much as
the decoder step itself (2.5 ms vs 0.25 ms for onnxruntime's TopK on 24 rows,
measured here), so the selection runs as a one-node ONNX graph. The graph is
embedded as bytes, because the runtime must not depend on the `onnx` package;
tests/runtime/test_runtime_top_k.py rebuilds it with onnx.helper and checks
it is the same graph.
"""

from __future__ import annotations

import threading

import numpy as np
import onnxruntime as ort

from capgen.runtime.errors import ModelError

# onnx.helper: TopK(scores [R, V] float, k [1] int64; axis=1, largest=1, sorted=1)
# -> values [R, K], indices [R, K]; opset 17, IR 8. Equal scores: the lower id first.
TOP_K_GRAPH = (
    b'\x08\x08\x12\x06capgen:\xc4\x01\nN\n\x06scores\n\x01k\x12\x06values\x12\x07indices"\x04TopK'
    b"*\x0b\n\x04axis\x18\x01\xa0\x01\x02*\x0e\n\x07largest\x18\x01\xa0\x01\x02*\r\n\x06sorted\x18"
    b"\x01\xa0\x01\x02\x12\x0ccapgen_top_kZ\x1a\n\x06scores\x12\x10\n\x0e\x08\x01\x12\n\n\x03\x12"
    b"\x01R\n\x03\x12\x01VZ\x0f\n\x01k\x12\n\n\x08\x08\x07\x12\x04\n\x02\x08\x01b\x1a\n\x06values"
    b"\x12\x10\n\x0e\x08\x01\x12\n\n\x03\x12\x01R\n\x03\x12\x01Kb\x1b\n\x07indices\x12\x10\n\x0e"
    b"\x08\x07\x12\n\n\x03\x12\x01R\n\x03\x12\x01KB\x04\n\x00\x10\x11"
)

_lock = threading.Lock()
_session: ort.InferenceSession | None = None


def _get_session() -> ort.InferenceSession:
    global _session
    with _lock:
        if _session is None:
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            options.log_severity_level = 4  # failures become ModelError; no raw ORT log lines
            _session = ort.InferenceSession(
                TOP_K_GRAPH, options, providers=["CPUExecutionProvider"]
            )
        return _session


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(values, indices) [R, k]: each row's k highest scores, best first (ties: lower column first)."""
    if k >= scores.shape[1]:
        indices = np.argsort(-scores, axis=1, kind="stable")
        return np.take_along_axis(scores, indices, axis=1), indices
    try:
        values, indices = _get_session().run(
            None, {"scores": scores, "k": np.array([k], dtype=np.int64)}
        )
    except Exception as exc:  # onnxruntime's Fail/InvalidArgument/RuntimeException: bad scores
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(
            f"the decoder's scores ({scores.dtype}{list(scores.shape)}) cannot be ranked: "
            f"{first_line}"
        ) from exc
    return values, indices

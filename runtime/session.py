"""One onnxruntime session per model file, configured the same way everywhere.

Creating a session costs tens of milliseconds (graph load + optimisation), so
capgen makes each one once and reuses it; `InferenceSession.run` is
thread-safe, which is what makes one `Captioner` usable from many threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from capgen.runtime.errors import ModelError


class OnnxSession:
    """A CPU session whose inputs and outputs are checked against what capgen expects."""

    def __init__(
        self,
        path: Path,
        inputs: Sequence[str],
        outputs: Sequence[str],
        threads: int | None = None,
    ) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.inter_op_num_threads = 1
        if threads is not None:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3  # warnings about unused initialisers are not the user's problem
        try:
            self._session = ort.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own unrelated exception types
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{path}: not a runnable ONNX graph ({first_line})") from exc
        found_inputs = [node.name for node in self._session.get_inputs()]
        found_outputs = [node.name for node in self._session.get_outputs()]
        if sorted(found_inputs) != sorted(inputs) or not set(outputs) <= set(found_outputs):
            raise ModelError(
                f"{path}: graph has inputs {found_inputs} and outputs {found_outputs}, "
                f"expected inputs {list(inputs)} and outputs {list(outputs)} (see docs/design.md)"
            )
        self.path = path
        self.output_names = list(outputs)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The outputs in the order given at construction."""
        try:
            return self._session.run(self.output_names, feeds)
        except Exception as exc:  # a graph that fails at run time is a broken model, not bad input
            raise ModelError(f"{self.path}: failed to run ({type(exc).__name__}: {exc})") from exc

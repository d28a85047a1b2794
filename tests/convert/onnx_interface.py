"""What an encoder graph shows its callers: ports, metadata, opsets, IR version.

The direct writers' contract tests (test_xception_onnx.py, test_application_onnx.py)
compare these with what the runtime expects; `cpu_session` runs a graph for the
parity tests without busy-waiting threads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def graph_interface(model: Any) -> dict[str, Any]:
    def ports(values: Any) -> list[tuple[str, int, list[int | str]]]:
        return [
            (
                value.name,
                value.type.tensor_type.elem_type,
                [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim],
            )
            for value in values
        ]

    return {
        "inputs": ports(model.graph.input),
        "outputs": ports(model.graph.output),
        "props": {prop.key: prop.value for prop in model.metadata_props},
        "opsets": [(o.domain, o.version) for o in model.opset_import],
        "ir_version": model.ir_version,
    }


def cpu_session(path: Path) -> Any:
    """An onnxruntime CPU session with capgen's options (CAPGEN_NO_SPINNING, set by conftest).

    The parity tests run a few encoder batches through each graph while the other
    test worker shares the same 2 cores: onnxruntime's busy-waiting intra-op
    threads took about a third of the CPU of a 12-photo Xception run (3.3 s
    against 2.3 s, measured) and changed none of its numbers. The graph
    optimisation level stays onnxruntime's default, as the runtime's own: its
    fused convolutions are faster here than an unoptimised graph (4.0 s).
    """
    from capgen.runtime.session import plain_cpu_session

    return plain_cpu_session(path)

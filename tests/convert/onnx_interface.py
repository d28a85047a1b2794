"""What an encoder graph shows its callers: ports, metadata, opsets, IR version.

The direct writers' contract tests (test_xception_onnx.py, test_application_onnx.py)
compare these with what the runtime expects.
"""

from __future__ import annotations

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

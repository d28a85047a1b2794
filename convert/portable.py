"""Graphs that older onnxruntime builds load, and the onnxruntime each one needs.

Vendor, ARM and OpenVINO builds of onnxruntime lag behind the newest release,
and onnxruntime refuses any graph whose IR version is newer than it knows
("Unsupported model IR version: 14, max supported IR version: 10") even when
every operator in it is old. `onnx.helper.make_model` stamps the newest IR
version, so every graph capgen writes goes through `make_portable`, which
sets the lowest IR version its opsets allow (opset 17 -> IR 8).
`onnxruntime_requirement` is what the manifest records per file, so the
runtime can say which onnxruntime a file needs before onnxruntime fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# The oldest onnxruntime capgen supports and tests (tests/runtime/test_oldest_onnxruntime.py).
OLDEST_ONNXRUNTIME = (1, 20)
# MatMulNBits with bits other than 4 (the fast step's 8-bit output layer): 1.21.1 refuses
# it, 1.22.0 runs it (measured).
MATMUL_NBITS_8_BIT_ONNXRUNTIME = (1, 22)
# The first onnxruntime release that reads each IR version past 10 (1.20.1 reads up to
# IR 10, measured; 1.24.4 up to 13, FACTS.md; 11 and 12 follow the onnx releases that
# introduced them). capgen writes IR 8 itself; these only describe a user's own encoder.
_IR_ONNXRUNTIME = {11: (1, 22), 12: (1, 23), 13: (1, 24)}
_NEWER_IR_ONNXRUNTIME = (1, 25)
OLDEST_ONNXRUNTIME_MAX_IR = 10


def lowest_ir_version(model: Any) -> int:
    """The lowest IR version that allows every opset `model` imports (custom domains aside)."""
    from onnx import helper

    return int(helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True))


def _used_domains(model: Any) -> set[str]:
    nodes = [*model.graph.node, *(node for function in model.functions for node in function.node)]
    pending = list(nodes)
    while pending:  # nodes inside If / Loop / Scan bodies
        node = pending.pop()
        for attribute in node.attribute:
            for graph in [attribute.g, *attribute.graphs]:
                nodes.extend(graph.node)
                pending.extend(graph.node)
    return {node.domain for node in nodes} | {function.domain for function in model.functions}


def make_portable(model: Any) -> Any:
    """`model` (changed in place and returned) at the lowest IR version its opsets allow.

    Imports of domains no node uses are dropped first: onnxruntime's quantizer
    imports ai.onnx.ml 5 (IR 10) and a handful of training domains into every
    graph it writes, and they alone would raise the IR version.
    """
    used = _used_domains(model) | {""}
    kept = [
        opset
        for opset in model.opset_import
        if opset.domain in ("", "ai.onnx") or opset.domain in used
    ]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    model.ir_version = lowest_ir_version(model)
    return model


def _version_text(version: tuple[int, int]) -> str:
    return ">=" + ".".join(map(str, version))


def onnxruntime_requirement(model: Any) -> str:
    """The onnxruntime versions that run `model`, as the manifest records it (">=1.20")."""
    needed = OLDEST_ONNXRUNTIME
    if model.ir_version > OLDEST_ONNXRUNTIME_MAX_IR:
        needed = max(needed, _IR_ONNXRUNTIME.get(model.ir_version, _NEWER_IR_ONNXRUNTIME))
    for node in model.graph.node:
        if node.op_type == "MatMulNBits" and node.domain == "com.microsoft":
            bits = next((a.i for a in node.attribute if a.name == "bits"), 4)
            if bits != 4:
                needed = max(needed, MATMUL_NBITS_8_BIT_ONNXRUNTIME)
    return _version_text(needed)


def file_requirement(path: Path) -> str:
    """`onnxruntime_requirement` of the ONNX file at `path` (its weights are not read)."""
    import onnx

    return onnxruntime_requirement(onnx.load(str(path), load_external_data=False))

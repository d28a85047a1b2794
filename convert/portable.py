"""Graphs that older onnxruntime builds load, and the onnxruntime each one needs.

Vendor, ARM and OpenVINO builds of onnxruntime lag behind the newest release,
and onnxruntime refuses any graph whose IR version is newer than it knows
("Unsupported model IR version: 14, max supported IR version: 10") even when
every operator in it is old. `onnx.helper.make_model` stamps the newest IR
version, so every graph capgen writes goes through `make_portable`, which
sets the lowest IR version its opsets allow (opset 17 -> IR 8).
`onnxruntime_requirement` is what the manifest records per file, so the
runtime can say which onnxruntime a file needs before onnxruntime fails.

Portable also means every execution provider capgen documents can read the
graph. tf2onnx's einsum decomposition writes `Unsqueeze` nodes whose `axes`
input is an empty constant (no dimension to add, e.g. for the colour
features' `einsum("nwc,w->nc")`): the CPU provider treats them as no-ops, but
OpenVINO's ONNX reader refuses the whole graph ("'axes' input is mandatory").
`make_portable` writes such a node as the `Identity` it is (exact: the same
tensor passes through), and `portability_problems` is the check every graph
capgen writes passes, so a node no provider can read never reaches a model folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from capgen.runtime.errors import ConversionError

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


def _graphs(model: Any) -> Iterator[Any]:
    """The main graph and every If / Loop / Scan body inside it, at any depth."""
    pending = [model.graph]
    while pending:
        graph = pending.pop()
        yield graph
        for node in graph.node:
            for attribute in node.attribute:
                pending.extend(
                    [attribute.g, *attribute.graphs]
                    if attribute.HasField("g")
                    else attribute.graphs
                )


def _nodes(model: Any) -> Iterator[Any]:
    """Every node: the graphs' (`_graphs`) and the model-local functions'."""
    for graph in _graphs(model):
        yield from graph.node
    for function in model.functions:
        yield from function.node


def _used_domains(model: Any) -> set[str]:
    return {node.domain for node in _nodes(model)} | {
        function.domain for function in model.functions
    }


def _empty_constants(graph: Any) -> set[str]:
    """Names of the tensors in `graph` that are constants with no elements (shape [0])."""
    empty = {tensor.name for tensor in graph.initializer if 0 in tensor.dims}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attribute in node.attribute:
                if (attribute.name == "value" and 0 in attribute.t.dims) or (
                    attribute.name == "value_ints" and not attribute.ints
                ):
                    empty.add(node.output[0])
    return empty


def _axes_problem(node: Any, empty: set[str]) -> str | None:
    """Why an Unsqueeze node is not portable, or None: its axes (an input from
    opset 13, an attribute before) are missing or name no dimension."""
    if node.op_type != "Unsqueeze" or node.domain not in ("", "ai.onnx"):
        return None
    attribute = next((a for a in node.attribute if a.name == "axes"), None)
    if attribute is not None:
        return None if attribute.ints else "an empty axes attribute"
    if len(node.input) < 2 or not node.input[1]:
        return "no axes input"
    return "an empty axes input" if node.input[1] in empty else None


def _unsqueeze_nothing_as_identity(graph: Any) -> None:
    """Rewrite each Unsqueeze that adds no dimension (empty constant axes) as Identity."""
    empty = _empty_constants(graph)
    for node in graph.node:
        if _axes_problem(node, empty) is not None:
            attribute = next((a for a in node.attribute if a.name == "axes"), None)
            if attribute is None and len(node.input) < 2:
                continue  # no axes at all is malformed, not a no-op: left for the check
            node.op_type = "Identity"
            del node.input[1:]
            if attribute is not None:
                node.attribute.remove(attribute)


def _drop_unread_empty_initializers(model: Any) -> None:
    """Empty initializers nothing reads any more (onnxruntime warns about each)."""
    graph = model.graph
    read = {name for node in _nodes(model) for name in node.input}
    read |= {value.name for value in [*graph.input, *graph.output]}
    for tensor in [t for t in graph.initializer if 0 in t.dims and t.name not in read]:
        graph.initializer.remove(tensor)


def portability_problems(model: Any) -> list[str]:
    """Nodes of `model` that an execution provider capgen documents refuses, one line each."""
    problems = []
    for graph in _graphs(model):
        empty = _empty_constants(graph)
        for node in graph.node:
            problem = _axes_problem(node, empty)
            if problem is not None:
                problems.append(
                    f"{node.op_type} node {node.name or node.output[0]!r} has {problem}"
                )
    return problems


def check_portable(model: Any, what: str) -> None:
    """ConversionError in one line when `model` holds nodes `portability_problems` names."""
    problems = portability_problems(model)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConversionError(
            f"{what}: the graph is not one every execution provider reads: {problems[0]}{more}"
        )


def make_portable(model: Any, what: str = "graph") -> Any:
    """`model` (changed in place and returned) at the lowest IR version its opsets allow,
    readable by every provider capgen documents (ConversionError naming `what` if not).

    Unsqueeze nodes that add no dimension become Identity (module docstring).
    Imports of domains no node uses are dropped: onnxruntime's quantizer
    imports ai.onnx.ml 5 (IR 10) and a handful of training domains into every
    graph it writes, and they alone would raise the IR version.
    """
    for graph in _graphs(model):
        _unsqueeze_nothing_as_identity(graph)
    _drop_unread_empty_initializers(model)
    check_portable(model, what)
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

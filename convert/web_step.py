"""The browser's decoder step: the step graph without its word-gate table, and the table's factors.

The exact step graph (decoder_step.onnx) holds the word-gate table
[V, 4U] = float32(embedding @ kernel + bias, computed in float64): 30 MB of
the default model's 39 MB step, while its factors (word_gates.onnx, written
by the converter) are 8.5 MB. A web site ships the factors instead and the
browser recomputes a table row when a word first needs it:

- `decoder_step.web.onnx`: the step graph with the Gather node and the table
  removed and `x_gates` [N, 4U] float an input in place of `word`; every
  other node, initializer, input, output and metadata entry is unchanged.
- `word_gates.bin`: raw little-endian embedding [V, E], kernel [E, 4U] and
  bias [4U] (float32), then the exceptions: flat int32 indices into the
  [V, 4U] table and their float32 values.

The browser computes a row in float64, in one fixed order, with one IEEE
rounding per operation (JS numbers, no fused multiply-add): acc = 0; for
k = 0..E-1: acc = acc + embedding[w, k] * kernel[k, j]; then acc + bias[j];
then rounded to float32 (Math.fround). `recompute_table` does exactly that
with elementwise float64 numpy operations (each one correctly rounded too),
and every entry where the result differs from the step's table in any bit
is an exception (BLAS sums in another order; a zeroed padding row 0), so
the rows the browser feeds are the table's rows, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from capgen.runtime.errors import ModelError

SITE_STEP_FILE = "decoder_step.web.onnx"
WORD_GATES_DATA_FILE = "word_gates.bin"
WEB_FORMAT_VERSION = 1
# How the browser computes a row (recorded in the site's manifest for a reader).
ROW_RECIPE = (
    "float64: acc = 0; acc = acc + embedding[w, k] * kernel[k, j] for k = 0..E-1; acc + bias[j]; "
    "rounded to float32; then the exceptions (flat indices into [V, G]) replace their entries"
)
_TABLE = "word_gate_table"
# [64, 4U] float64 blocks (2 x 512 KB at U = 256) stay in L2 while E products are added
# (measured on the 7,577-word step: 1.8 s, against 2.6 s with 256 rows).
_ROWS_PER_BLOCK = 64


@dataclass(frozen=True)
class WebStep:
    """What a site ships instead of the step graph: the graph bytes, word_gates.bin, their layout."""

    step: bytes
    word_gates: bytes
    layout: dict[str, Any]  # the site manifest's `web` section
    exceptions: int


def recompute_table(embedding: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """The [V, G] float32 table as the browser computes it (module docstring): same order, same roundings."""
    factors = np.asarray(embedding, np.float64)
    weights = np.asarray(kernel, np.float64)
    offsets = np.asarray(bias, np.float64)
    rows, depth = factors.shape
    gates = weights.shape[1]
    table = np.empty((rows, gates), dtype=np.float32)
    acc = np.empty((_ROWS_PER_BLOCK, gates))
    product = np.empty((_ROWS_PER_BLOCK, gates))
    for start in range(0, rows, _ROWS_PER_BLOCK):
        block = factors[start : start + _ROWS_PER_BLOCK]
        n = len(block)
        total, term = acc[:n], product[:n]
        total.fill(0.0)
        for k in range(depth):
            np.multiply(block[:, k, None], weights[k], out=term)
            np.add(total, term, out=total)
        np.add(total, offsets, out=total)
        table[start : start + n] = total  # float64 -> float32: round to nearest even
    return table


def table_exceptions(table: np.ndarray, recomputed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat int32 indices where `recomputed` differs from `table` in any bit, and the table's values there."""
    differs = table.view(np.uint32) != recomputed.view(np.uint32)
    indices = np.flatnonzero(differs)
    return indices.astype("<i4"), table.reshape(-1)[indices].astype("<f4")


def _arrays(model: Any, names: tuple[str, ...], where: str) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    found = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name in names}
    missing = [name for name in names if name not in found]
    if missing:
        raise ModelError(f"{where}: has no initializer {missing[0]!r}")
    wrong = [name for name in names if found[name].dtype != np.float32]
    if wrong:
        raise ModelError(f"{where}: initializer {wrong[0]!r} is not float32")
    return found


def _without_table(step: Any, gates: int, where: str) -> Any:
    """The step graph with `x_gates` [N, gates] an input in place of `word` and no table or Gather."""
    import onnx
    from onnx import TensorProto, helper

    graph = step.graph
    gathers = [
        i
        for i, node in enumerate(graph.node)
        if node.op_type == "Gather" and list(node.input) == [_TABLE, "word"]
    ]
    if len(gathers) != 1 or list(graph.node[gathers[0]].output) != ["x_gates"]:
        raise ModelError(f"{where}: not a capgen step graph (no Gather of {_TABLE} by word)")
    inputs = [value.name for value in graph.input]
    others = (node for i, node in enumerate(graph.node) if i != gathers[0])
    if "word" not in inputs or any("word" in node.input for node in others):
        raise ModelError(f"{where}: its input 'word' is used beyond the table's Gather")
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(step)
    new_graph = rewritten.graph
    del new_graph.node[gathers[0]]
    kept = [t for t in new_graph.initializer if t.name != _TABLE]
    del new_graph.initializer[:]
    new_graph.initializer.extend(kept)
    position = inputs.index("word")
    x_gates = helper.make_tensor_value_info("x_gates", TensorProto.FLOAT, ["N", gates])
    new_graph.input[position].CopyFrom(x_gates)
    onnx.checker.check_model(rewritten)
    return rewritten


def web_step(step_bytes: bytes, word_gates_bytes: bytes, where: str = "model") -> WebStep:
    """Split a step graph's table into its factors (from word_gates.onnx's bytes), checked bit for bit."""
    import onnx

    try:
        step = onnx.load_model_from_string(step_bytes)
        gates_model = onnx.load_model_from_string(word_gates_bytes)
    except Exception as error:  # onnx raises DecodeError and friends for non-ONNX bytes
        raise ModelError(f"{where}: cannot read the step or word-gates graph ({error})") from None
    table = _arrays(step, (_TABLE,), f"{where} step graph")[_TABLE]
    factors = _arrays(gates_model, ("embedding", "kernel", "bias"), f"{where} word-gates graph")
    embedding, kernel, bias = factors["embedding"], factors["kernel"], factors["bias"]
    if not (
        embedding.ndim == kernel.ndim == 2
        and bias.ndim == 1
        and embedding.shape[1] == kernel.shape[0]
        and kernel.shape[1] == bias.shape[0]
        and table.shape == (embedding.shape[0], kernel.shape[1])
    ):
        raise ModelError(
            f"{where}: the word-gates graph's embedding {embedding.shape}, kernel {kernel.shape} "
            f"and bias {bias.shape} do not make the step's {table.shape} table"
        )
    if table.size >= 2**31:
        raise ModelError(
            f"{where}: the word-gate table has {table.size} entries, too many for int32"
        )
    indices, values = table_exceptions(table, recompute_table(embedding, kernel, bias))
    rewritten = _without_table(step, int(table.shape[1]), where)
    parts = {
        "embedding": embedding.astype("<f4"),
        "kernel": kernel.astype("<f4"),
        "bias": bias.astype("<f4"),
        "exception_indices": indices,
        "exception_values": values,
    }
    layout: dict[str, dict[str, Any]] = {}
    offset = 0
    for name, array in parts.items():
        dtype = "int32" if array.dtype.kind == "i" else "float32"
        layout[name] = {"dtype": dtype, "shape": list(array.shape), "offset": offset}
        offset += array.nbytes
    vocabulary, depth = embedding.shape
    section = {
        "format_version": WEB_FORMAT_VERSION,
        "step_file": SITE_STEP_FILE,
        "word_gates": {
            "file": WORD_GATES_DATA_FILE,
            "vocabulary_size": int(vocabulary),
            "embedding_size": int(depth),
            "gates": int(kernel.shape[1]),
            "exceptions": int(indices.size),
            "rows": ROW_RECIPE,
            "arrays": layout,
        },
    }
    return WebStep(
        step=rewritten.SerializeToString(),
        word_gates=b"".join(array.tobytes() for array in parts.values()),
        layout=section,
        exceptions=int(indices.size),
    )

"""Does an ONNX file hold a weight that is +inf, -inf or NaN? Answered from its bytes, without onnx.

A decoder whose weights hold one NaN gives NaN scores for every word: beam
search then never picks one, captions come out empty with exit 0, and the
JSON written for them says `NaN`, which is not JSON. A finite graph cannot
do that, so capgen refuses non-finite weights at conversion (naming the
layer) and refuses a model folder whose graphs hold any, when its files are
verified at load (once per file, alongside the sha256).

Like `onnx_external_data`, this walks the protobuf wire format itself (the
runtime may not depend on `onnx`): every tensor in the model (initializers,
sparse initializers, Constant nodes' attributes, subgraphs and functions) is
found, and its float payload (raw_data, float_data, double_data, or 16-bit
floats in int32_data) is checked with numpy in slices, so a memory-mapped
83 MB encoder is never copied whole. 8-bit float types are not checked.
"""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np

from capgen.runtime.errors import ModelError

# The wire-format walker is shared with the external-data check (same package).
from capgen.runtime.onnx_external_data import (
    _CHILDREN,
    _MODEL,
    _TENSOR,
    _Malformed,
    _skip,
    _varint,
)

# TensorProto fields (onnx.proto3)
_DATA_TYPE, _FLOAT_DATA, _INT32_DATA, _NAME, _RAW_DATA, _DOUBLE_DATA = 2, 4, 5, 8, 9, 10
# TensorProto.DataType -> numpy dtype of raw_data ("bf16": bfloat16, checked by its bits)
_RAW_DTYPES = {1: "<f4", 10: "<f2", 11: "<f8", 14: "<f4", 15: "<f8", 16: "bf16"}
_SLICE = 1 << 22  # bytes checked at a time: a bounded temporary, whatever the tensor's size


def _finite_span(data: bytes | mmap.mmap, start: int, end: int, dtype: str) -> bool:
    """Whether the little-endian numbers in data[start:end] are all finite."""
    itemsize = 2 if dtype == "bf16" else np.dtype(dtype).itemsize
    step = _SLICE - _SLICE % itemsize
    for offset in range(start, end - (end - start) % itemsize, step):
        count = min(step, end - offset) // itemsize
        if dtype == "bf16":
            bits = np.frombuffer(data, "<u2", count, offset)
            finite = not bool(np.any((bits & 0x7F80) == 0x7F80))
        else:
            finite = bool(np.isfinite(np.frombuffer(data, dtype, count, offset)).all())
        if not finite:
            return False
    return True


def _finite_half_varints(data: bytes | mmap.mmap, start: int, end: int, data_type: int) -> bool:
    """16-bit floats kept as packed varints in int32_data (onnx's make_tensor without raw)."""
    mask = 0x7C00 if data_type == 10 else 0x7F80
    position = start
    while position < end:
        value, position = _varint(data, position, end)
        if value & mask == mask:
            return False
    return True


def _tensor_is_finite(data: bytes | mmap.mmap, start: int, end: int) -> tuple[str, bool]:
    """(name, all values finite) of the TensorProto at data[start:end]."""
    name = ""
    data_type = 0
    spans: list[tuple[int, int, int, int]] = []  # (field, wire type, start, end)
    position = start
    while position < end:
        tag, position = _varint(data, position, end)
        field, wire_type = tag >> 3, tag & 7
        if field == _DATA_TYPE and wire_type == 0:
            data_type, position = _varint(data, position, end)
            continue
        if wire_type == 2:
            length, body = _varint(data, position, end)
            position = body + length
            if position > end:
                raise _Malformed
            if field == _NAME:
                name = bytes(data[body:position]).decode("utf-8", "replace")
            elif field in (_FLOAT_DATA, _INT32_DATA, _RAW_DATA, _DOUBLE_DATA):
                spans.append((field, wire_type, body, position))
            continue
        field_start = position
        position = _skip(data, wire_type, position, end)
        if position > end:
            raise _Malformed
        if field in (_FLOAT_DATA, _DOUBLE_DATA):  # unpacked repeated float/double
            spans.append((field, wire_type, field_start, position))
    for field, wire_type, body, stop in spans:
        if field == _RAW_DATA and data_type in _RAW_DTYPES:
            finite = _finite_span(data, body, stop, _RAW_DTYPES[data_type])
        elif field == _FLOAT_DATA:
            finite = _finite_span(data, body, stop, "<f4")
        elif field == _DOUBLE_DATA:
            finite = _finite_span(data, body, stop, "<f8")
        elif field == _INT32_DATA and data_type in (10, 16) and wire_type == 2:
            finite = _finite_half_varints(data, body, stop, data_type)
        else:
            continue
        if not finite:
            return name, False
    return name, True


def first_non_finite_tensor(data: bytes | mmap.mmap) -> str | None:
    """The name of the first tensor in the serialized ModelProto `data` holding inf or NaN, else None.

    Bytes that are not a well-formed protobuf give None here: the external-data
    check and onnxruntime refuse those with their own messages.
    """
    pending = [(_MODEL, 0, len(data))]
    try:
        while pending:
            kind, position, end = pending.pop()
            if kind == _TENSOR:
                name, finite = _tensor_is_finite(data, position, end)
                if not finite:
                    return name or "(unnamed)"
                continue
            children = _CHILDREN[kind]
            while position < end:
                tag, position = _varint(data, position, end)
                field, wire_type = tag >> 3, tag & 7
                start = position
                position = _skip(data, wire_type, position, end)
                if position > end:
                    raise _Malformed
                if wire_type == 2 and field in children:
                    length, body = _varint(data, start, end)
                    pending.append((children[field], body, body + length))
    except _Malformed:
        return None
    return None


def refuse_non_finite(path: Path, data: bytes | mmap.mmap) -> None:
    """A one-line ModelError when the ONNX bytes `data` (read from `path`) hold inf or NaN weights."""
    name = first_non_finite_tensor(data)
    if name is not None:
        raise ModelError(
            f"{path}: tensor {name!r} holds infinite or NaN values; such a graph gives NaN "
            "scores and empty captions (re-convert the model from finite weights)"
        )


def check_file_is_finite(path: Path) -> None:
    """`refuse_non_finite` for the ONNX file at `path`, read through a memory map."""
    try:
        with path.open("rb") as handle:
            if handle.seek(0, 2) == 0:
                return
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                refuse_non_finite(path, mapped)
    except (OSError, ValueError) as exc:  # ValueError: mmap of something that is no file
        raise ModelError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None

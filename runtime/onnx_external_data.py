"""Does an ONNX file keep tensors in side files? Answered from its bytes, without the onnx package.

ONNX lets a tensor's bytes live in another file ("external data", named by
a `location` relative to the model). A model folder's manifest vouches for
the files it lists, so a graph that pulls weights from an unlisted side file
could change its output without any checksum noticing, and every cache keyed
on the graph file would serve one model's weights for another. capgen
therefore refuses external data in model folders, at conversion and at load.

The runtime may not depend on `onnx`, so this walks the protobuf wire format
itself, descending only into the messages that can hold a tensor (graphs,
nodes, attributes, functions, sparse tensors) and skipping every other field
by its length. Field numbers are from onnx/onnx.proto3.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from capgen.runtime.errors import ModelError

# message kind -> {field number: message kind of that (length-delimited) field}
_MODEL, _GRAPH, _NODE, _ATTRIBUTE, _FUNCTION, _SPARSE, _TENSOR = range(7)
_CHILDREN: dict[int, dict[int, int]] = {
    _MODEL: {7: _GRAPH, 25: _FUNCTION},
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},
    _NODE: {5: _ATTRIBUTE},
    _FUNCTION: {7: _NODE, 11: _ATTRIBUTE},
    _ATTRIBUTE: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},
    _SPARSE: {1: _TENSOR, 2: _TENSOR},
    _TENSOR: {},
}
_TENSOR_EXTERNAL_DATA = 13  # repeated StringStringEntryProto
_TENSOR_DATA_LOCATION = 14  # enum: DEFAULT = 0, EXTERNAL = 1


class _Malformed(Exception):
    pass


def _varint(data: bytes | mmap.mmap, position: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= end or shift > 63:
            raise _Malformed
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7


def _skip(data: bytes | mmap.mmap, wire_type: int, position: int, end: int) -> int:
    if wire_type == 0:
        return _varint(data, position, end)[1]
    if wire_type == 1:
        return position + 8
    if wire_type == 5:
        return position + 4
    if wire_type == 2:
        length, position = _varint(data, position, end)
        return position + length
    raise _Malformed  # groups (3, 4) are not used by ONNX


def external_data_locations(data: bytes | mmap.mmap) -> frozenset[str] | None:
    """The `location` of every tensor in the serialized ModelProto `data` that names external data.

    Empty for a self-contained graph; None when the bytes are not a
    well-formed protobuf or a tensor says EXTERNAL without naming a location
    (onnxruntime would refuse those anyway, and a parser disagreement must
    not open a gap).
    """
    locations: set[str] = set()
    pending = [(_MODEL, 0, len(data))]
    try:
        while pending:
            kind, position, end = pending.pop()
            children = _CHILDREN[kind]
            external = False
            named = False
            while position < end:
                tag, position = _varint(data, position, end)
                field, wire_type = tag >> 3, tag & 7
                if kind == _TENSOR and field == _TENSOR_DATA_LOCATION and wire_type == 0:
                    location, position = _varint(data, position, end)
                    external = external or location != 0
                    continue
                start = position
                position = _skip(data, wire_type, position, end)
                if position > end:
                    raise _Malformed
                if kind == _TENSOR and field == _TENSOR_EXTERNAL_DATA:
                    if wire_type != 2:
                        raise _Malformed
                    key, value = _entry(data, start, end)
                    if key == "location":
                        locations.add(value)
                        named = True
                    external = True
                elif wire_type == 2 and field in children:
                    length, body = _varint(data, start, end)
                    pending.append((children[field], body, body + length))
            if external and not named:
                raise _Malformed
    except (_Malformed, UnicodeDecodeError):
        return None
    return frozenset(locations)


def _entry(data: bytes | mmap.mmap, start: int, end: int) -> tuple[str, str]:
    """(key, value) of the StringStringEntryProto whose length prefix starts at `start`."""
    length, position = _varint(data, start, end)
    stop = position + length
    if stop > end:
        raise _Malformed
    fields = {1: "", 2: ""}
    while position < stop:
        tag, position = _varint(data, position, stop)
        field, wire_type = tag >> 3, tag & 7
        if wire_type != 2:
            raise _Malformed
        size, body = _varint(data, position, stop)
        position = body + size
        if position > stop:
            raise _Malformed
        if field in fields:
            fields[field] = bytes(data[body:position]).decode("utf-8")
    return fields[1], fields[2]


def uses_external_data(data: bytes | mmap.mmap) -> bool:
    """True when any tensor in the serialized ModelProto `data` names external data.

    Bytes that are not a well-formed protobuf count as True: onnxruntime
    would refuse them anyway, and a parser disagreement must not open a gap.
    """
    return external_data_locations(data) != frozenset()


def _refuse_external_data(path: Path, data: bytes | mmap.mmap) -> None:
    if uses_external_data(data):
        raise ModelError(
            f"{path}: keeps tensors in external data files, which a capgen model folder may not "
            "(its manifest cannot vouch for them); save the graph as one file"
        )


def read_single_file_graph(path: Path) -> bytes:
    """The bytes of the ONNX file at `path`, or a one-line ModelError if it uses external data."""
    try:
        with path.open("rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read ({exc.strerror or exc})") from None
    _refuse_external_data(path, data)
    return data


_FD_FOLDER = Path("/proc/self/fd")


@contextlib.contextmanager
def single_file_graph(path: Path) -> Iterator[str | bytes]:
    """What to hand onnxruntime for the ONNX file at `path`, checked for external data.

    Why not the bytes (`read_single_file_graph`): onnxruntime's Python session
    keeps the bytes it was given for as long as it lives, so an 83 MB encoder
    or a 40 MB decoder step stayed resident twice (bytes plus initializers),
    and parsing from bytes peaked higher and took more CPU than from a file.
    Here the file is opened once and checked through a memory map (the walk
    skips tensor payloads by length, so it touches few pages); onnxruntime then
    reads that same open file through /proc/self/fd, so a file swapped in at
    `path` after the check is not the one loaded. Without /proc (not Linux)
    the checked bytes themselves are handed over, as before.
    """
    try:
        # O_NONBLOCK: a FIFO put in a graph's place fails the check instead of hanging the open.
        flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
        descriptor = os.open(path, flags)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        yield _checked(path, descriptor)
    finally:
        os.close(descriptor)


def _checked(path: Path, descriptor: int) -> str | bytes:
    """The /proc path of the open file (or its bytes without /proc) once it passed the check."""
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise ModelError(f"{path}: is not a regular file")
        if not _FD_FOLDER.is_dir() or status.st_size == 0:  # empty: cannot be mapped
            with os.fdopen(os.dup(descriptor), "rb") as handle:
                data = handle.read()
            _refuse_external_data(path, data)
            return data
        with mmap.mmap(descriptor, 0, access=mmap.ACCESS_READ) as mapped:
            _refuse_external_data(path, mapped)
    except (OSError, ValueError) as exc:  # ValueError: mmap of something that is no file
        raise ModelError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    return str(_FD_FOLDER / str(descriptor))

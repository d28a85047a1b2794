"""The files of the optimised-graph cache (runtime/graph_cache.py): entries, companions, pruning.

An entry is a graph sealed with its own sha256 and, if onnxruntime put its
large initializers outside it, a companion file whose name carries the
companion's sha256. Everything here works relative to an open folder
descriptor and never follows a link; only this user's files are deleted.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import stat
import time
from pathlib import Path

from capgen.runtime.atomic_write import STALE_AFTER_SECONDS
from capgen.runtime.home import ENTRY_MODE, trusted_entry
from capgen.runtime.onnx_external_data import external_data_locations

CACHE_LIMIT_BYTES = 1 << 30
COMPANION_SUFFIX = ".data"
READ = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
DIRECTORY = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
CHUNK = 1 << 20

# The seal: a ModelProto metadata_props entry (field 14) appended to the graph,
# {"capgen.sha256": sha256 of every byte before it}. Protobuf merges repeated
# fields however they are ordered, so onnxruntime reads the sealed graph as is.
_SEAL_KEY = b"capgen.sha256"
_SEAL_ENTRY_SIZE = 2 + len(_SEAL_KEY) + 2 + 64
_SEAL_SIZE = 2 + _SEAL_ENTRY_SIZE


def seal(graph: bytes) -> bytes:
    return graph + _seal_for(graph)


def _seal_for(graph: bytes) -> bytes:
    digest = hashlib.sha256(graph).hexdigest().encode("ascii")
    entry = bytes([0x0A, len(_SEAL_KEY)]) + _SEAL_KEY + bytes([0x12, len(digest)]) + digest
    return bytes([(14 << 3) | 2, _SEAL_ENTRY_SIZE]) + entry


def is_sealed(data: bytes) -> bool:
    """Whether `data` is a graph followed by the seal of exactly those bytes."""
    return len(data) > _SEAL_SIZE and data[-_SEAL_SIZE:] == _seal_for(data[:-_SEAL_SIZE])


def companion_name(entry: str, digest: str) -> str:
    """`<entry stem>.<random>.<sha256>.data`: the random part keeps rebuilds off older files."""
    return f"{entry.removesuffix('.onnx')}.{secrets.token_hex(8)}.{digest}{COMPANION_SUFFIX}"


def companion_digest(entry: str, name: str) -> str | None:
    """The sha256 a companion's name promises, if `name` is a companion of `entry`."""
    stem = re.escape(entry.removesuffix(".onnx"))
    match = re.fullmatch(rf"{stem}\.[0-9a-f]{{16}}\.(?P<digest>[0-9a-f]{{64}})\.data", name)
    return match["digest"] if match else None


def companions(graph: bytes, entry: str) -> frozenset[str] | None:
    """The companion files the entry's graph names; None if it names anything else."""
    locations = external_data_locations(graph)
    if locations is None or len(locations) > 1:
        return None
    if not all(companion_digest(entry, name) for name in locations):
        return None
    return locations


def read_at(folder: int, name: str) -> tuple[bytes, os.stat_result]:
    """A file's bytes and status, read through one descriptor opened without following a link."""
    descriptor = os.open(name, READ | NOFOLLOW, dir_fd=folder)
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise OSError(f"{name}: not a regular file")
        chunks = []
        while chunk := os.read(descriptor, CHUNK):
            chunks.append(chunk)
        return b"".join(chunks), status
    finally:
        os.close(descriptor)


def unlink_own(folder: int, name: str) -> None:
    """Delete `name` if this user wrote it: another user's file is theirs to delete, never ours."""
    with contextlib.suppress(OSError):
        if os.stat(name, dir_fd=folder, follow_symlinks=False).st_uid == os.geteuid():
            os.unlink(name, dir_fd=folder)


def prune_cache(folder: Path | int, limit_bytes: int = CACHE_LIMIT_BYTES) -> None:
    """Delete the least recently used entries until the folder holds at most `limit_bytes`.

    An entry is its graph and its companion file (if any); companions whose
    graph is gone or names another file are deleted once stale (their writer
    may still be about to put the graph in place). Only this user's files
    are deleted. `folder` may be an open folder descriptor. Never raises.
    """
    try:
        descriptor = folder if isinstance(folder, int) else os.open(folder, DIRECTORY)
    except OSError:
        return
    try:
        _prune_cache_at(descriptor, limit_bytes)
    finally:
        if descriptor is not folder:
            os.close(descriptor)


def _prune_cache_at(folder: int, limit_bytes: int) -> None:
    try:
        names = [name for name in os.listdir(folder) if not name.startswith(".")]
    except OSError:
        return
    status = {}
    for name in names:
        with contextlib.suppress(OSError):
            status[name] = os.stat(name, dir_fd=folder, follow_symlinks=False)
    graphs = [name for name in status if name.endswith(".onnx")]
    members = {graph: [graph] for graph in graphs}
    named: dict[str, str] = {}
    for graph in graphs:
        for companion in _named_companions(folder, graph):
            named[companion] = graph
    stale = time.time() - STALE_AFTER_SECONDS
    for name in status:
        if not name.endswith(COMPANION_SUFFIX):
            continue
        if name in named:
            members[named[name]].append(name)
        elif status[name].st_mtime < stale:  # a fresh one may be about to get its graph
            unlink_own(folder, name)
    recent_first = sorted(graphs, key=lambda graph: status[graph].st_mtime_ns, reverse=True)
    total = 0
    for graph in recent_first:
        total += sum(status[member].st_size for member in members[graph] if member in status)
        if total > limit_bytes:
            for member in members[graph]:  # the graph first: then no one loads the companion
                unlink_own(folder, member)


def _named_companions(folder: int, graph: str) -> frozenset[str]:
    try:
        data, _ = read_at(folder, graph)
    except OSError:
        return frozenset()
    return companions(data, graph) or frozenset()


def write_new(folder: int, name: str, data: bytes) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    descriptor = os.open(name, flags, 0o600, dir_fd=folder)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(descriptor, view) :]
    finally:
        os.close(descriptor)


def copy_companion(folder: int, name: str, private: int) -> bool:
    """Copy the companion into `private` and hash the copy; whether it is trusted and intact.

    The copy is made by the kernel (no pass through Python), then the copy
    itself is hashed, so the bytes checked are the bytes onnxruntime maps,
    and only this process's private folder holds them.
    Raises OSError when it is missing, cannot be read, or does not match.
    """
    expected = _companion_digest_of(name)
    source = os.open(name, READ | NOFOLLOW, dir_fd=folder)
    try:
        status = os.fstat(source)
        if not trusted_entry(status):
            return False
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        target = os.open(name, flags, 0o600, dir_fd=private)
        try:
            _copy_all(source, target)
            os.lseek(target, 0, os.SEEK_SET)
            digest = _sha256_of(target)
        finally:
            os.close(target)
    finally:
        os.close(source)
    if digest != expected:
        raise OSError(f"{name}: sha256 does not match its name")
    return True


def _sha256_of(descriptor: int) -> str:
    """The sha256 of the rest of an open file, read a CHUNK at a time into one buffer."""
    hasher = hashlib.sha256()
    buffer = bytearray(CHUNK)
    while size := os.readv(descriptor, [buffer]):
        hasher.update(memoryview(buffer)[:size])
    return hasher.hexdigest()


def _copy_all(source: int, target: int) -> None:
    """Copy the rest of `source` to `target`: in the kernel where it can, else through a buffer."""
    copy_file_range = getattr(os, "copy_file_range", None)
    if copy_file_range is not None:
        try:
            while copy_file_range(source, target, CHUNK * 64):
                pass
            return
        except OSError:  # EXDEV, ENOSYS, EINVAL on some file systems: start over below
            os.lseek(source, 0, os.SEEK_SET)
            os.lseek(target, 0, os.SEEK_SET)
            os.ftruncate(target, 0)
    while chunk := os.read(source, CHUNK):
        view = memoryview(chunk)
        while view:
            view = view[os.write(target, view) :]


def _companion_digest_of(name: str) -> str:
    return name.removesuffix(COMPANION_SUFFIX).rsplit(".", 1)[-1]


def refuse_foreign_entry(folder: int, entry: str) -> None:
    """Raise when `entry` exists and is not this user's: capgen replaces only files it wrote."""
    try:
        owner = os.stat(entry, dir_fd=folder, follow_symlinks=False).st_uid
    except FileNotFoundError:
        return
    if owner != os.geteuid():
        raise PermissionError(f"{entry} belongs to uid {owner}, not to this user")


def hash_companion(work: int, name: str) -> str | None:
    """The sha256 of the companion onnxruntime wrote (made ENTRY_MODE), or None if it wrote none."""
    try:
        descriptor = os.open(name, READ | NOFOLLOW, dir_fd=work)
    except FileNotFoundError:  # every initializer was small
        return None
    try:
        if os.fstat(descriptor).st_size == 0:
            return None
        os.fchmod(descriptor, ENTRY_MODE)  # readable by whoever shares the cache
        return _sha256_of(descriptor)
    finally:
        os.close(descriptor)

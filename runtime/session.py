"""One onnxruntime session per model file, configured the same way everywhere.

Creating a session costs tens to hundreds of milliseconds (graph load +
optimisation), so capgen makes each one once and reuses it;
`InferenceSession.run` is thread-safe, which is what makes one `Captioner`
usable from many threads.

Optimising the 83 MB Xception graph is most of a cold start's session time
(0.30 -> 0.16 s to load the real-size model here), so the encoder's
optimised graph is cached under $CAPGEN_HOME/optimized, keyed on the file's
sha256 (from the manifest, already verified; graphs with external data are
refused, so the file is the whole model), the optimisation level, the
onnxruntime version and the CPU's feature flags (fully optimised graphs are
specific to the CPU they were made on). A cache that cannot be written (full
disk, read-only) costs only the optimisation. Entries are shared by every
model folder with the same encoder, the least recently used are pruned
beyond `CACHE_LIMIT_BYTES`, and the folder is safe to delete at any time.

An entry keeps its large initializers in a companion file
(`<entry>.<random>.<sha256>.data`, named inside the entry's graph), so that
onnxruntime can memory-map them instead of copying: the decoder step's
31 MB word-gate table (7,577 words x 4 gates) stays out of RSS but for the
rows of the words a caption uses (a cold caption's peak RSS: the step
session's +75 MB peak became +23 MB), so the decoder graphs are cached too.

Nothing in the cache is trusted for where it lies, only for what it is:
- The folder is used through a descriptor opened without following links
  (`home.open_cache_folder`), and only when no one but this user or root can
  change it; another user's folder, a group- or world-writable one or a link
  costs the cache and one warning line, never a write elsewhere. onnxruntime
  writes an entry only inside a private 0700 work folder in it, named
  through /proc/self/fd, so no link can be swapped in under its writes; the
  files are then committed relative to the folder descriptor.
- The graph ends in its own sha256 (a metadata entry appended to the
  protobuf), and its companion's name carries the companion's sha256, so
  changed bytes (in place, size and mtime kept, or a file swapped in) are a
  miss, however they got there.
- A hit never hands onnxruntime a path into the cache: the verified graph
  and the companion, hashed while being copied, go into a private folder
  under the temporary directory that onnxruntime loads and capgen then
  removes. The mapped copy is unlinked, so no one (this user included) can
  truncate it under a live session (SIGBUS), nor swap it between the check
  and the load.
- Temporary work folders go even on Ctrl-C (BaseException), and those of
  killed runs, orphaned companions and private copies are pruned on every
  use, hit or miss.

An entry that cannot be read, is damaged or half-written, or was written by
another user (`home.trusted_entry`) is a miss; one of this user's is
rebuilt in place, another user's is left alone (it costs the cache for that
entry). `CAPGEN_NO_CACHE=1` skips the cache. Only CPU-provider sessions are
cached: an optimised graph may hold nodes specific to the provider it was
made for. Without /proc/self/fd (not Linux) the cache is not used.

Execution providers are onnxruntime's own names (`resolve_providers`), CPU
by default; a name this onnxruntime build does not have is a one-line
InputError naming the ones it has.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import re
import secrets
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import onnxruntime as ort

from capgen.runtime.atomic_write import (
    STALE_AFTER_SECONDS,
    prune_stale_temporaries,
    temporary_name,
    write_bytes_at,
)
from capgen.runtime.errors import InputError, ModelError
from capgen.runtime.home import (
    ENTRY_MODE,
    UntrustedCacheFolder,
    cache_enabled,
    capgen_home,
    open_cache_folder,
    trusted_entry,
    warn_cache_untrusted,
    warn_cache_unwritable,
)
from capgen.runtime.onnx_external_data import external_data_locations, single_file_graph


@cache
def _cpu_fingerprint() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


CACHE_LIMIT_BYTES = 1 << 30
# Bump when what goes into an optimised graph changes in a way the key below
# does not see (e.g. a new session option that alters the optimised graph).
CACHE_FORMAT = "4"  # 4: graphs sealed with their sha256, companions named by theirs
CPU_PROVIDER = "CPUExecutionProvider"
DEFAULT_PROVIDERS = (CPU_PROVIDER,)
# Initializers at least this large go to an entry's companion file (smaller ones stay inline).
COMPANION_MIN_BYTES = 4096
_COMPANION_SUFFIX = ".data"
_CACHE_FOLDER = "optimized"
_FD_FOLDER = Path("/proc/self/fd")
_PRIVATE_PREFIX = "capgen-session-"
_READ = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_CHUNK = 1 << 20
if hasattr(ort, "disable_telemetry_events"):  # also when onnxruntime was imported before capgen
    ort.disable_telemetry_events()


def available_providers() -> list[str]:
    """The execution providers this onnxruntime build has (onnxruntime's own names)."""
    return list(ort.get_available_providers())


# Which onnxruntime distribution brings each execution provider (docs/cli.md has the
# install recipe per family): the one-line refusal names it, so a GPU user learns what
# to install instead of only that the name is unknown.
PROVIDER_BUILDS = {
    "CUDAExecutionProvider": "onnxruntime-gpu (Linux/Windows, NVIDIA CUDA 12)",
    "TensorrtExecutionProvider": "onnxruntime-gpu with TensorRT installed",
    "OpenVINOExecutionProvider": "onnxruntime-openvino (Intel CPUs, GPUs, NPUs)",
    "DmlExecutionProvider": "onnxruntime-directml (Windows, DirectX 12 GPUs)",
    "CoreMLExecutionProvider": "the macOS onnxruntime wheel (Apple silicon)",
    "ROCMExecutionProvider": "onnxruntime-rocm (AMD GPUs)",
    "MIGraphXExecutionProvider": "onnxruntime-migraphx (AMD GPUs)",
    "QNNExecutionProvider": "onnxruntime-qnn (Qualcomm NPUs)",
}


def resolve_providers(providers: str | Sequence[str] | None) -> tuple[str, ...]:
    """Execution provider names, checked against this onnxruntime build; CPU when None.

    A name the build does not have is an InputError naming the ones it has:
    onnxruntime itself only warns and silently falls back to the CPU.
    """
    if providers is None:
        return DEFAULT_PROVIDERS
    names = (providers,) if isinstance(providers, str) else tuple(providers)
    available = available_providers()
    if not names:
        raise InputError(f"no execution provider given (available: {', '.join(available)})")
    for name in names:
        if not isinstance(name, str) or name not in available:
            build = PROVIDER_BUILDS.get(name) if isinstance(name, str) else None
            where = (
                f"it comes with {build}: see docs/cli.md, 'Execution providers', for the recipe"
                if build
                else "other providers come with other onnxruntime builds, see docs/cli.md"
            )
            raise InputError(
                f"execution provider {name!r} is not available in this onnxruntime "
                f"{ort.__version__} (available: {', '.join(available)}; {where})"
            )
    if len(set(names)) != len(names):
        raise InputError(f"execution providers are given more than once: {', '.join(names)}")
    return names


def _optimized_cache_path(content_sha256: str) -> Path:
    """The cache entry for a graph: everything that can change the optimised graph is in the key.

    The graph's bytes (its sha256; external data is refused, so those bytes
    are the whole model), the optimisation level, onnxruntime's version and
    the CPU's feature flags.
    """
    return capgen_home() / _CACHE_FOLDER / _entry_name(content_sha256)


def _entry_name(content_sha256: str) -> str:
    key = "\0".join(
        [
            CACHE_FORMAT,
            content_sha256,
            str(int(ort.GraphOptimizationLevel.ORT_ENABLE_ALL)),
            ort.__version__,
            _cpu_fingerprint(),
        ]
    )
    return f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.onnx"


# The seal: a ModelProto metadata_props entry (field 14) appended to the graph,
# {"capgen.sha256": sha256 of every byte before it}. Protobuf merges repeated
# fields however they are ordered, so onnxruntime reads the sealed graph as is.
_SEAL_KEY = b"capgen.sha256"
_SEAL_ENTRY_SIZE = 2 + len(_SEAL_KEY) + 2 + 64
_SEAL_SIZE = 2 + _SEAL_ENTRY_SIZE


def _seal(graph: bytes) -> bytes:
    return graph + _seal_for(graph)


def _seal_for(graph: bytes) -> bytes:
    digest = hashlib.sha256(graph).hexdigest().encode("ascii")
    entry = bytes([0x0A, len(_SEAL_KEY)]) + _SEAL_KEY + bytes([0x12, len(digest)]) + digest
    return bytes([(14 << 3) | 2, _SEAL_ENTRY_SIZE]) + entry


def _is_sealed(data: bytes) -> bool:
    """Whether `data` is a graph followed by the seal of exactly those bytes."""
    return len(data) > _SEAL_SIZE and data[-_SEAL_SIZE:] == _seal_for(data[:-_SEAL_SIZE])


def _companion_name(entry: str, digest: str) -> str:
    """`<entry stem>.<random>.<sha256>.data`: the random part keeps rebuilds off older files."""
    return f"{entry.removesuffix('.onnx')}.{secrets.token_hex(8)}.{digest}{_COMPANION_SUFFIX}"


def _companion_digest(entry: str, name: str) -> str | None:
    """The sha256 a companion's name promises, if `name` is a companion of `entry`."""
    stem = re.escape(entry.removesuffix(".onnx"))
    match = re.fullmatch(rf"{stem}\.[0-9a-f]{{16}}\.(?P<digest>[0-9a-f]{{64}})\.data", name)
    return match["digest"] if match else None


def _companions(graph: bytes, entry: str) -> frozenset[str] | None:
    """The companion files the entry's graph names; None if it names anything else."""
    locations = external_data_locations(graph)
    if locations is None or len(locations) > 1:
        return None
    if not all(_companion_digest(entry, name) for name in locations):
        return None
    return locations


def _read_at(folder: int, name: str) -> tuple[bytes, os.stat_result]:
    """A file's bytes and status, read through one descriptor opened without following a link."""
    descriptor = os.open(name, _READ | _NOFOLLOW, dir_fd=folder)
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise OSError(f"{name}: not a regular file")
        chunks = []
        while chunk := os.read(descriptor, _CHUNK):
            chunks.append(chunk)
        return b"".join(chunks), status
    finally:
        os.close(descriptor)


def _unlink_own(folder: int, name: str) -> None:
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
        descriptor = folder if isinstance(folder, int) else os.open(folder, _DIRECTORY)
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
        if not name.endswith(_COMPANION_SUFFIX):
            continue
        if name in named:
            members[named[name]].append(name)
        elif status[name].st_mtime < stale:  # a fresh one may be about to get its graph
            _unlink_own(folder, name)
    recent_first = sorted(graphs, key=lambda graph: status[graph].st_mtime_ns, reverse=True)
    total = 0
    for graph in recent_first:
        total += sum(status[member].st_size for member in members[graph] if member in status)
        if total > limit_bytes:
            for member in members[graph]:  # the graph first: then no one loads the companion
                _unlink_own(folder, member)


def _named_companions(folder: int, graph: str) -> frozenset[str]:
    try:
        data, _ = _read_at(folder, graph)
    except OSError:
        return frozenset()
    return _companions(data, graph) or frozenset()


@dataclass(frozen=True)
class SessionSettings:
    """How one session runs; none of it changes the optimised graph (so not in the cache key).

    `memory_pattern`: onnxruntime plans one block for all of a run's
    activations on the first run and keeps it. For the encoder that block was
    ~85 MB at batch 1 against ~45 MB allocated tensor by tensor from the arena,
    at the same per-image time (measured with 1 thread: 161-165 vs 166-177 ms
    CPU), so the encoder turns it off; the decoder's tiny graphs keep it.
    """

    threads: int | None = None
    memory_pattern: bool = True


def _options(settings: SessionSettings) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.inter_op_num_threads = 1
    if settings.threads is not None:
        options.intra_op_num_threads = settings.threads
    options.enable_mem_pattern = settings.memory_pattern
    # 4 = fatal only: at 3 a graph failing at run time also printed onnxruntime's
    # own coloured log line next to capgen's one-line ModelError.
    options.log_severity_level = 4
    return options


def _load_cached(
    folder: int, entry: str, settings: SessionSettings, providers: Sequence[str]
) -> ort.InferenceSession | None:
    """The cached optimised graph's session, or None for a miss.

    A miss is any entry that is absent, unreadable (another user's, 0600),
    not written by this user or root, or whose graph or companion does not
    match its sha256; a damaged one of this user's is deleted.
    """
    try:
        graph, status = _read_at(folder, entry)
    except OSError:
        return None
    if not trusted_entry(status):
        return None
    named = _companions(graph, entry) if _is_sealed(graph) else None
    if named is None:  # damaged, half-written, or names a file that is not its companion
        _unlink_own(folder, entry)
        return None
    options = _options(settings)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        with _private_copy(folder, graph, next(iter(named), None)) as model:
            if model is None:
                return None
            session = ort.InferenceSession(model, sess_options=options, providers=list(providers))
    except Exception:  # a damaged entry (its companion gone or changed): rebuilt by the caller
        _unlink_own(folder, entry)  # its companion is pruned once stale
        return None
    with contextlib.suppress(OSError):
        os.utime(entry, dir_fd=folder, follow_symlinks=False)  # recently used: pruned last
    return session


@contextlib.contextmanager
def _private_copy(folder: int, graph: bytes, companion: str | None) -> Iterator[str | None]:
    """A path to a private copy of the entry for onnxruntime to load, or None if it is not trusted.

    The copy lies in a fresh 0700 folder of this process under the temporary
    directory: the graph as verified, the companion as hashed while it was
    copied (so the bytes checked are the bytes mapped). The folder goes when
    the block ends; onnxruntime's mapping of the companion then outlives
    every name of it, so nothing can truncate it (SIGBUS) or swap it.
    """
    private = tempfile.mkdtemp(prefix=f"{_PRIVATE_PREFIX}{os.getpid()}-")
    try:
        private_fd = os.open(private, _DIRECTORY | _NOFOLLOW)
        try:
            if companion is not None and not _copy_companion(folder, companion, private_fd):
                yield None
                return
            _write_new(private_fd, "graph.onnx", graph)
            yield str(_FD_FOLDER / str(private_fd) / "graph.onnx")
        finally:
            os.close(private_fd)
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _write_new(folder: int, name: str, data: bytes) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    descriptor = os.open(name, flags, 0o600, dir_fd=folder)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(descriptor, view) :]
    finally:
        os.close(descriptor)


def _copy_companion(folder: int, name: str, private: int) -> bool:
    """Copy the companion into `private` and hash the copy; whether it is trusted and intact.

    The copy is made by the kernel (no pass through Python), then the copy
    itself is hashed, so the bytes checked are the bytes onnxruntime maps,
    and only this process's private folder holds them.
    Raises OSError when it is missing, cannot be read, or does not match.
    """
    expected = _companion_digest_of(name)
    source = os.open(name, _READ | _NOFOLLOW, dir_fd=folder)
    try:
        status = os.fstat(source)
        if not trusted_entry(status):
            return False
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        target = os.open(name, flags, 0o600, dir_fd=private)
        try:
            _copy_all(source, target)
            os.lseek(target, 0, os.SEEK_SET)
            hasher = hashlib.sha256()
            buffer = bytearray(_CHUNK)
            while size := os.readv(target, [buffer]):
                hasher.update(memoryview(buffer)[:size])
            digest = hasher.hexdigest()
        finally:
            os.close(target)
    finally:
        os.close(source)
    if digest != expected:
        raise OSError(f"{name}: sha256 does not match its name")
    return True


def _copy_all(source: int, target: int) -> None:
    """Copy the rest of `source` to `target`: in the kernel where it can, else through a buffer."""
    copy_file_range = getattr(os, "copy_file_range", None)
    if copy_file_range is not None:
        try:
            while copy_file_range(source, target, _CHUNK * 64):
                pass
            return
        except OSError:  # EXDEV, ENOSYS, EINVAL on some file systems: start over below
            os.lseek(source, 0, os.SEEK_SET)
            os.lseek(target, 0, os.SEEK_SET)
            os.ftruncate(target, 0)
    while chunk := os.read(source, _CHUNK):
        view = memoryview(chunk)
        while view:
            view = view[os.write(target, view) :]


def _companion_digest_of(name: str) -> str:
    return name.removesuffix(_COMPANION_SUFFIX).rsplit(".", 1)[-1]


def _optimise_into(
    graph: str | bytes,
    settings: SessionSettings,
    folder: int,
    entry: str,
    providers: Sequence[str],
) -> tuple[ort.InferenceSession | None, BaseException | None]:
    """(a session whose optimised graph is saved as `entry`, None) or (None, why it could not be).

    onnxruntime writes into a private 0700 work folder inside the cache
    folder, named through /proc/self/fd (no link can be planted in it, and
    no path it resolves can lead out); capgen then reads what it wrote,
    names the companion by its sha256, seals the graph and commits both
    relative to the folder descriptor. The work folder goes whatever
    happens, Ctrl-C included. A full disk or a read-only cache makes
    onnxruntime fail the whole session ("Protobuf serialization failed");
    the caller then runs without the cache, so it costs only speed.
    """
    work = temporary_name(entry)
    committed_companion: str | None = None
    done = False
    try:
        _refuse_foreign_entry(folder, entry)
        os.mkdir(work, 0o700, dir_fd=folder)
        work_fd = os.open(work, _DIRECTORY | _NOFOLLOW, dir_fd=folder)
        try:
            work_status = os.fstat(work_fd)
            if work_status.st_uid != os.geteuid() or stat.S_IMODE(work_status.st_mode) != 0o700:
                raise OSError(f"{work}: not the private work folder capgen made")
            placeholder = _companion_name(entry, secrets.token_hex(32))
            options = _options(settings)
            options.optimized_model_filepath = str(_FD_FOLDER / str(work_fd) / "graph.onnx")
            # Relative to the graph: onnxruntime writes the companion beside it.
            options.add_session_config_entry(
                "session.optimized_model_external_initializers_file_name", placeholder
            )
            options.add_session_config_entry(
                "session.optimized_model_external_initializers_min_size_in_bytes",
                str(COMPANION_MIN_BYTES),
            )
            session = ort.InferenceSession(graph, sess_options=options, providers=list(providers))
            written, _ = _read_at(work_fd, "graph.onnx")
            if not written:
                raise OSError("onnxruntime wrote no optimised graph")
            companion = _hash_companion(work_fd, placeholder)
            expected = frozenset() if companion is None else frozenset({placeholder})
            if external_data_locations(written) != expected:
                raise OSError("onnxruntime's optimised graph names unexpected external data")
            if companion is not None:
                final = placeholder[: -len(_COMPANION_SUFFIX) - 64] + companion + _COMPANION_SUFFIX
                os.link(
                    placeholder, final, src_dir_fd=work_fd, dst_dir_fd=folder, follow_symlinks=False
                )
                committed_companion = final
                # Same length, so every length prefix of the protobuf still holds.
                written = written.replace(placeholder.encode(), final.encode())
                if external_data_locations(written) != {final}:
                    raise OSError("the companion's name could not be set in the optimised graph")
            write_bytes_at(folder, entry, _seal(written), ENTRY_MODE)
            done = True
        finally:
            os.close(work_fd)
    except Exception as exc:
        return None, exc
    finally:
        if not done and committed_companion is not None:
            with contextlib.suppress(OSError):
                os.unlink(committed_companion, dir_fd=folder)
        with contextlib.suppress(OSError):
            shutil.rmtree(work, dir_fd=folder)
    prune_cache(folder)
    return session, None


def _refuse_foreign_entry(folder: int, entry: str) -> None:
    """Raise when `entry` exists and is not this user's: capgen replaces only files it wrote."""
    try:
        owner = os.stat(entry, dir_fd=folder, follow_symlinks=False).st_uid
    except FileNotFoundError:
        return
    if owner != os.geteuid():
        raise PermissionError(f"{entry} belongs to uid {owner}, not to this user")


def _hash_companion(work: int, name: str) -> str | None:
    """The sha256 of the companion onnxruntime wrote (made ENTRY_MODE), or None if it wrote none."""
    try:
        descriptor = os.open(name, _READ | _NOFOLLOW, dir_fd=work)
    except FileNotFoundError:  # every initializer was small
        return None
    try:
        if os.fstat(descriptor).st_size == 0:
            return None
        os.fchmod(descriptor, ENTRY_MODE)  # readable by whoever shares the cache
        digest = hashlib.sha256()
        while chunk := os.read(descriptor, _CHUNK):
            digest.update(chunk)
        return digest.hexdigest()
    finally:
        os.close(descriptor)


def _prune_private_copies() -> None:
    """Delete private copies left by processes killed while loading (this user's, writer gone)."""
    folder = Path(tempfile.gettempdir())
    try:
        candidates = [p for p in os.listdir(folder) if p.startswith(_PRIVATE_PREFIX)]
    except OSError:
        return
    for name in candidates:
        match = re.match(rf"{_PRIVATE_PREFIX}(\d+)-", name)
        if match is None or _alive(int(match[1])):
            continue
        with contextlib.suppress(OSError):
            if os.lstat(folder / name).st_uid == os.geteuid():
                shutil.rmtree(folder / name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _open_cache() -> int | None:
    """The cache folder's descriptor, created if need be; None (with one warning line) when unusable."""
    where = capgen_home() / _CACHE_FOLDER
    try:
        return open_cache_folder(_CACHE_FOLDER, create=True)
    except UntrustedCacheFolder as exc:
        warn_cache_untrusted(where, exc)
    except OSError as exc:
        warn_cache_unwritable(where, exc)
    return None


def _create(
    path: Path, settings: SessionSettings, cache_key: str | None, providers: Sequence[str]
) -> ort.InferenceSession:
    cache_failure: BaseException | None = None
    use_cache = cache_key and cache_enabled() and tuple(providers) == DEFAULT_PROVIDERS
    folder = _open_cache() if use_cache and _FD_FOLDER.is_dir() else None
    if folder is not None and cache_key:
        try:
            entry = _entry_name(cache_key)
            # Left by runs killed while optimising (`tmp*.partial`: capgen before 2026-12).
            prune_stale_temporaries(folder, legacy_glob="tmp*.partial")
            _prune_private_copies()
            # A hit never reads the source graph: the key holds its verified sha256,
            # and the entry was made from it after the same external-data check.
            session = _load_cached(folder, entry, settings, providers)
            if session is not None:
                prune_cache(folder)  # orphans go on every use, not only on a miss
                return session
            with single_file_graph(path) as graph:
                session, cache_failure = _optimise_into(graph, settings, folder, entry, providers)
            if session is not None:
                return session
        finally:
            os.close(folder)
    with single_file_graph(path) as graph:
        session = ort.InferenceSession(
            graph, sess_options=_options(settings), providers=list(providers)
        )
    if cache_failure is not None:  # the graph runs, so it was the cache that failed
        warn_cache_unwritable(capgen_home() / _CACHE_FOLDER, cache_failure)
    return session


class OnnxSession:
    """A session (CPU unless told otherwise) whose inputs and outputs are what capgen expects."""

    def __init__(
        self,
        path: Path,
        inputs: Sequence[str],
        outputs: Sequence[str],
        threads: int | None = None,
        cache_key: str | None = None,
        providers: Sequence[str] = DEFAULT_PROVIDERS,
        memory_pattern: bool = True,
    ) -> None:
        """`cache_key`: the file's sha256, to cache its optimised graph (see module docstring).

        `memory_pattern`: see `SessionSettings`.

        `providers`: execution provider names, already checked by `resolve_providers`.
        """
        try:
            self._session = _create(
                path, SessionSettings(threads, memory_pattern), cache_key, providers
            )
        except ModelError:
            raise
        except Exception as exc:  # onnxruntime raises its own unrelated exception types
            first_line = (
                str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            )
            # onnxruntime names the file it read: the open file's /proc path, not the user's.
            first_line = re.sub(r"/proc/self/fd/\d+", lambda _: str(path), first_line)
            where = "" if tuple(providers) == DEFAULT_PROVIDERS else f" with {', '.join(providers)}"
            raise ModelError(f"{path}: not a runnable ONNX graph{where} ({first_line})") from exc
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
            first_line = (str(exc).strip().splitlines() or [""])[0]  # ORT messages end in a newline
            raise ModelError(
                f"{self.path}: failed to run ({type(exc).__name__}: {first_line})"
            ) from exc

"""The optimised-graph cache of CPU sessions (runtime/session.py makes the sessions).

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
from collections.abc import Callable, Iterator, Sequence
from functools import cache
from pathlib import Path

import onnxruntime as ort

from capgen.runtime.atomic_write import (
    prune_stale_temporaries,
    temporary_name,
    write_bytes_at,
)
from capgen.runtime.cache_entries import (
    COMPANION_SUFFIX,
    DIRECTORY,
    NOFOLLOW,
    companion_name,
    companions,
    copy_companion,
    hash_companion,
    is_sealed,
    prune_cache,
    read_at,
    refuse_foreign_entry,
    seal,
    unlink_own,
    write_new,
)
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

# Fresh options for one session, as session.py makes them (threads, memory pattern, logging).
NewOptions = Callable[[], ort.SessionOptions]


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


# Bump when what goes into an optimised graph changes in a way the key below
# does not see (e.g. a new session option that alters the optimised graph).
CACHE_FORMAT = "4"  # 4: graphs sealed with their sha256, companions named by theirs
# Initializers at least this large go to an entry's companion file (smaller ones stay inline).
COMPANION_MIN_BYTES = 4096
_CACHE_FOLDER = "optimized"
_FD_FOLDER = Path("/proc/self/fd")
_PRIVATE_PREFIX = "capgen-session-"


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


def _load_cached(
    folder: int, entry: str, new_options: NewOptions, providers: Sequence[str]
) -> ort.InferenceSession | None:
    """The cached optimised graph's session, or None for a miss.

    A miss is any entry that is absent, unreadable (another user's, 0600),
    not written by this user or root, or whose graph or companion does not
    match its sha256; a damaged one of this user's is deleted.
    """
    try:
        graph, status = read_at(folder, entry)
    except OSError:
        return None
    if not trusted_entry(status):
        return None
    named = companions(graph, entry) if is_sealed(graph) else None
    if named is None:  # damaged, half-written, or names a file that is not its companion
        unlink_own(folder, entry)
        return None
    options = new_options()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        with _private_copy(folder, graph, next(iter(named), None)) as model:
            if model is None:
                return None
            session = ort.InferenceSession(model, sess_options=options, providers=list(providers))
    except Exception:  # a damaged entry (its companion gone or changed): rebuilt by the caller
        unlink_own(folder, entry)  # its companion is pruned once stale
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
        private_fd = os.open(private, DIRECTORY | NOFOLLOW)
        try:
            if companion is not None and not copy_companion(folder, companion, private_fd):
                yield None
                return
            write_new(private_fd, "graph.onnx", graph)
            yield str(_FD_FOLDER / str(private_fd) / "graph.onnx")
        finally:
            os.close(private_fd)
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _optimise_into(
    graph: str | bytes,
    new_options: NewOptions,
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
        refuse_foreign_entry(folder, entry)
        os.mkdir(work, 0o700, dir_fd=folder)
        work_fd = os.open(work, DIRECTORY | NOFOLLOW, dir_fd=folder)
        try:
            work_status = os.fstat(work_fd)
            if work_status.st_uid != os.geteuid() or stat.S_IMODE(work_status.st_mode) != 0o700:
                raise OSError(f"{work}: not the private work folder capgen made")
            placeholder = companion_name(entry, secrets.token_hex(32))
            options = new_options()
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
            written, _ = read_at(work_fd, "graph.onnx")
            if not written:
                raise OSError("onnxruntime wrote no optimised graph")
            companion = hash_companion(work_fd, placeholder)
            expected = frozenset() if companion is None else frozenset({placeholder})
            if external_data_locations(written) != expected:
                raise OSError("onnxruntime's optimised graph names unexpected external data")
            if companion is not None:
                final = placeholder[: -len(COMPANION_SUFFIX) - 64] + companion + COMPANION_SUFFIX
                os.link(
                    placeholder, final, src_dir_fd=work_fd, dst_dir_fd=folder, follow_symlinks=False
                )
                committed_companion = final
                # Same length, so every length prefix of the protobuf still holds.
                written = written.replace(placeholder.encode(), final.encode())
                if external_data_locations(written) != {final}:
                    raise OSError("the companion's name could not be set in the optimised graph")
            write_bytes_at(folder, entry, seal(written), ENTRY_MODE)
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


def cached_session(
    path: Path, cache_key: str, new_options: NewOptions, providers: Sequence[str]
) -> ort.InferenceSession:
    """A CPU session for the graph at `path` (sha256 `cache_key`), its optimised graph cached.

    `new_options()`: fresh options for the session, as made when not cached.
    Without a usable cache (`CAPGEN_NO_CACHE=1`, an untrusted folder, no
    /proc/self/fd) the graph is optimised as usual; a failing cache costs one warning line.
    """
    cache_failure: BaseException | None = None
    folder = _open_cache() if cache_enabled() and _FD_FOLDER.is_dir() else None
    if folder is not None:
        try:
            entry = _entry_name(cache_key)
            # Left by runs killed while optimising (`tmp*.partial`: capgen before 2026-12).
            prune_stale_temporaries(folder, legacy_glob="tmp*.partial")
            _prune_private_copies()
            # A hit never reads the source graph: the key holds its verified sha256,
            # and the entry was made from it after the same external-data check.
            session = _load_cached(folder, entry, new_options, providers)
            if session is not None:
                prune_cache(folder)  # orphans go on every use, not only on a miss
                return session
            with single_file_graph(path) as graph:
                session, cache_failure = _optimise_into(
                    graph, new_options, folder, entry, providers
                )
            if session is not None:
                return session
        finally:
            os.close(folder)
    with single_file_graph(path) as graph:
        session = ort.InferenceSession(graph, sess_options=new_options(), providers=list(providers))
    if cache_failure is not None:  # the graph runs, so it was the cache that failed
        warn_cache_unwritable(capgen_home() / _CACHE_FOLDER, cache_failure)
    return session

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
disk, read-only) costs only the optimisation, and temporary files left by a
killed run are pruned by the next one. Entries are shared by every model folder with the same encoder,
the least recently used are pruned beyond `CACHE_LIMIT_BYTES`, and the
folder is safe to delete at any time.

An entry keeps its large initializers in a companion file
(`<entry>.<random>.data`, named inside the entry's graph), which onnxruntime
memory-maps instead of copying: loading the cached 83 MB encoder took
0.014 s of CPU instead of 0.18 s (the graph itself is a few kB to parse), and
the decoder step's 31 MB word-gate table (7,577 words x 4 gates) stays on
disk but for the rows of the words a caption uses (a cold caption's peak
RSS: the step session's +75 MB peak became +23 MB). So the decoder graphs
are cached too. A graph names its companion with a random part, so two
processes filling the same entry never mix one's graph with the other's
weights; a companion whose graph is gone is pruned once it is stale. A
mapped companion is read for as long as the session lives: like every
entry, it is trusted for who wrote it (this user or root), and an entry
whose graph names any other external file is a miss.

The cache may belong to someone else (root filled it in a Docker build) or
be read-only: an entry that cannot be read, is damaged or half-written, or
was written by another user (`home.trusted_entry`) is a miss, and a cache
that cannot be written costs the optimisation and one warning line per
process (`home.warn_cache_unwritable`); `CAPGEN_NO_CACHE=1` skips it.
Only CPU-provider sessions are cached: an optimised graph may hold nodes
specific to the provider it was made for.

Execution providers are onnxruntime's own names (`resolve_providers`), CPU
by default; a name this onnxruntime build does not have is a one-line
InputError naming the ones it has.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import platform
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import onnxruntime as ort

from capgen.runtime.atomic_write import (
    STALE_AFTER_SECONDS,
    atomic_path,
    default_mode,
    prune_stale_temporaries,
)
from capgen.runtime.errors import InputError, ModelError
from capgen.runtime.home import (
    cache_enabled,
    capgen_home,
    trusted_entry,
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
CACHE_FORMAT = "3"  # 3: large initializers in a memory-mapped companion file
CPU_PROVIDER = "CPUExecutionProvider"
DEFAULT_PROVIDERS = (CPU_PROVIDER,)
# Initializers at least this large go to an entry's companion file (smaller ones stay inline).
COMPANION_MIN_BYTES = 4096
_COMPANION_SUFFIX = ".data"

if hasattr(ort, "disable_telemetry_events"):  # also when onnxruntime was imported before capgen
    ort.disable_telemetry_events()


def available_providers() -> list[str]:
    """The execution providers this onnxruntime build has (onnxruntime's own names)."""
    return list(ort.get_available_providers())


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
            raise InputError(
                f"execution provider {name!r} is not available in this onnxruntime "
                f"{ort.__version__} (available: {', '.join(available)}; other providers come "
                "with other onnxruntime builds, see the README)"
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
    key = "\0".join(
        [
            CACHE_FORMAT,
            content_sha256,
            str(int(ort.GraphOptimizationLevel.ORT_ENABLE_ALL)),
            ort.__version__,
            _cpu_fingerprint(),
        ]
    )
    return capgen_home() / "optimized" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.onnx"


def _companion_name(cached: Path) -> str:
    """A fresh name for an entry's companion file: `<entry>.<random>.data`."""
    return f"{cached.stem}.{secrets.token_hex(8)}{_COMPANION_SUFFIX}"


def _is_companion_of(cached: Path, name: str) -> bool:
    return re.fullmatch(rf"{re.escape(cached.stem)}\.[0-9a-f]{{16}}\.data", name) is not None


def _companions(graph: bytes | mmap.mmap, cached: Path) -> frozenset[str] | None:
    """The companion files the entry's graph names; None if it names anything else."""
    locations = external_data_locations(graph)
    if locations is None or len(locations) > 1:
        return None
    if not all(_is_companion_of(cached, name) for name in locations):
        return None
    return locations


def prune_cache(folder: Path, limit_bytes: int = CACHE_LIMIT_BYTES) -> None:
    """Delete the least recently used entries until the folder holds at most `limit_bytes`.

    An entry is its graph and its companion file (if any); companions whose
    graph is gone or names another file are deleted once stale (their writer
    may still be about to put the graph in place).
    """
    try:
        graphs = {entry.stem: entry for entry in folder.glob("*.onnx")}
        companions = list(folder.glob(f"*{_COMPANION_SUFFIX}"))
    except OSError:
        return
    members = {stem: [graph] for stem, graph in graphs.items()}
    now = time.time()
    for companion in companions:
        stem = companion.name.split(".", 1)[0]
        if stem in graphs and companion.name in _named_companions(graphs[stem]):
            members[stem].append(companion)
        elif _older_than(companion, now - STALE_AFTER_SECONDS):
            with contextlib.suppress(OSError):
                companion.unlink(missing_ok=True)
    recent_first = sorted(graphs, key=lambda stem: _mtime(graphs[stem]), reverse=True)
    total = 0
    for stem in recent_first:
        total += sum(_size(member) for member in members[stem])
        if total > limit_bytes:
            for member in members[stem]:  # the graph first: then no one loads the companion
                with contextlib.suppress(OSError):  # another user's entry: theirs to prune
                    member.unlink(missing_ok=True)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def _older_than(path: Path, moment: float) -> bool:
    try:
        return path.lstat().st_mtime < moment
    except OSError:
        return False


def _named_companions(graph: Path) -> frozenset[str]:
    try:
        with (
            graph.open("rb") as handle,
            mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data,
        ):
            return _companions(data, graph) or frozenset()
    except (OSError, ValueError):  # ValueError: an empty file cannot be mapped
        return frozenset()


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
    cached: Path, settings: SessionSettings, providers: Sequence[str]
) -> ort.InferenceSession | None:
    """The cached optimised graph's session, or None for a miss.

    A miss is any entry that is absent, unreadable (another user's, 0600),
    not written by this user or root, or damaged; a damaged one of ours is deleted.
    """
    try:
        if not trusted_entry(os.stat(cached)) or not os.access(cached, os.R_OK):
            return None
    except OSError:
        return None
    options = _options(settings)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = _entry_session(cached, options, providers)
    except Exception:  # a damaged or partial entry: rebuilt by the caller
        with contextlib.suppress(OSError):
            cached.unlink(missing_ok=True)  # its companion is pruned once stale
        return None
    if session is None:
        return None
    with contextlib.suppress(OSError):
        os.utime(cached)  # recently used: pruned last
    return session


def _entry_session(
    cached: Path, options: ort.SessionOptions, providers: Sequence[str]
) -> ort.InferenceSession | None:
    """The entry's session; None for a companion that is not this user's or root's.

    A graph without a companion is read through the descriptor that was
    checked (`single_file_graph`). One with a companion is loaded by its path,
    since onnxruntime finds the companion beside the graph; its graph must
    name its own companion and nothing else (else it is damaged: raises).
    Both files are held open from the check to the end of the load, and a
    graph or companion that is no longer the checked file once the session
    is built (someone renamed another file into its place) is a miss: a
    path-based load must not let a shared cache's other writers swap the bytes.
    """
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
    graph_fd = os.open(cached, flags | getattr(os, "O_NOFOLLOW", 0))
    try:
        graph_status = os.fstat(graph_fd)
        if not trusted_entry(graph_status):
            return None
        with mmap.mmap(graph_fd, 0, access=mmap.ACCESS_READ) as graph:
            named = _companions(graph, cached)
        if named is None:
            raise ModelError(f"{cached}: names external data other than its own companion file")
        if not named:
            with single_file_graph(cached) as checked:
                return ort.InferenceSession(
                    checked, sess_options=options, providers=list(providers)
                )
        (name,) = named
        companion = cached.parent / name
        try:
            companion_fd = os.open(companion, flags | getattr(os, "O_NOFOLLOW", 0))
        except OSError as exc:  # gone (or a link): the entry is damaged
            raise ModelError(f"{companion}: missing") from exc
        try:
            companion_status = os.fstat(companion_fd)
            if not trusted_entry(companion_status) or not os.access(companion, os.R_OK):
                return None
            session = ort.InferenceSession(
                str(cached), sess_options=options, providers=list(providers)
            )
            if not (_same_file(cached, graph_status) and _same_file(companion, companion_status)):
                return None
            return session
        finally:
            os.close(companion_fd)
    finally:
        os.close(graph_fd)


def _same_file(path: Path, checked: os.stat_result) -> bool:
    """Whether `path` (not followed) is still the file that was checked."""
    try:
        now = os.lstat(path)
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (checked.st_dev, checked.st_ino)


def _optimise_into(
    graph: str | bytes, settings: SessionSettings, cached: Path, providers: Sequence[str]
) -> tuple[ort.InferenceSession | None, BaseException | None]:
    """(a session whose optimised graph is saved as `cached`, None) or (None, why it could not be).

    A full disk or a read-only cache makes onnxruntime fail the whole session
    ("Protobuf serialization failed"); the caller then runs without the cache,
    so a cache that cannot be written costs only speed.
    """
    companion: Path | None = None
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        companion = _reserve_companion(cached)
        with atomic_path(cached) as temporary:
            options = _options(settings)
            options.optimized_model_filepath = str(temporary)
            # Relative to the graph: onnxruntime writes the companion beside it.
            options.add_session_config_entry(
                "session.optimized_model_external_initializers_file_name", companion.name
            )
            options.add_session_config_entry(
                "session.optimized_model_external_initializers_min_size_in_bytes",
                str(COMPANION_MIN_BYTES),
            )
            session = ort.InferenceSession(graph, sess_options=options, providers=list(providers))
            if temporary.stat().st_size == 0:
                raise OSError("onnxruntime wrote no optimised graph")
            os.chmod(temporary, default_mode())  # readable by whoever shares the cache
            # Every initializer was small: onnxruntime removed the companion, or left it empty.
            if not companion.is_file() or companion.stat().st_size == 0:
                companion.unlink(missing_ok=True)
                companion = None
            else:
                os.chmod(companion, default_mode())
    except Exception as exc:
        if companion is not None:
            with contextlib.suppress(OSError):
                companion.unlink(missing_ok=True)
        return None, exc
    prune_cache(cached.parent)
    return session, None


def _reserve_companion(cached: Path) -> Path:
    """Create the entry's companion file exclusively (never through a link) for onnxruntime to fill."""
    companion = cached.parent / _companion_name(cached)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    os.close(os.open(companion, flags | getattr(os, "O_CLOEXEC", 0), 0o600))
    return companion


def _create(
    path: Path, settings: SessionSettings, cache_key: str | None, providers: Sequence[str]
) -> ort.InferenceSession:
    cache_failure: BaseException | None = None
    if cache_key and cache_enabled() and tuple(providers) == DEFAULT_PROVIDERS:
        cached = _optimized_cache_path(cache_key)
        # Left by runs killed while optimising (`tmp*.partial`: capgen before 2026-12).
        prune_stale_temporaries(cached.parent, legacy_glob="tmp*.partial")
        # A hit never reads the source graph: the key holds its verified sha256,
        # and the entry was made from it after the same external-data check.
        session = _load_cached(cached, settings, providers)
        if session is not None:
            return session
        with single_file_graph(path) as graph:
            session, cache_failure = _optimise_into(graph, settings, cached, providers)
        if session is not None:
            return session
    with single_file_graph(path) as graph:
        session = ort.InferenceSession(
            graph, sess_options=_options(settings), providers=list(providers)
        )
    if cache_failure is not None:  # the graph runs, so it was the cache that failed
        warn_cache_unwritable(capgen_home() / "optimized", cache_failure)
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

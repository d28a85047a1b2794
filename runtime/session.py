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
folder is safe to delete at any time. The small decoder graphs are not
cached: loading their optimised form measured slower than optimising them.

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
import os
import platform
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import onnxruntime as ort

from capgen.runtime.atomic_write import atomic_path, default_mode, prune_stale_temporaries
from capgen.runtime.errors import InputError, ModelError
from capgen.runtime.home import (
    cache_enabled,
    capgen_home,
    trusted_entry,
    warn_cache_unwritable,
)
from capgen.runtime.onnx_external_data import single_file_graph


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
CACHE_FORMAT = "2"
CPU_PROVIDER = "CPUExecutionProvider"
DEFAULT_PROVIDERS = (CPU_PROVIDER,)

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


def prune_cache(folder: Path, limit_bytes: int = CACHE_LIMIT_BYTES) -> None:
    """Delete the least recently used entries until the folder holds at most `limit_bytes`."""
    try:
        entries = sorted(
            (
                (entry.stat().st_mtime_ns, entry.stat().st_size, entry)
                for entry in folder.glob("*.onnx")
            ),
            reverse=True,
        )
    except OSError:
        return
    total = 0
    for _, size, entry in entries:
        total += size
        if total > limit_bytes:
            with contextlib.suppress(OSError):  # another user's entry: theirs to prune
                entry.unlink(missing_ok=True)


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
        # Checked like a model folder's graph: an entry is trusted for who wrote it, not for its bytes.
        with single_file_graph(cached) as graph:
            session = ort.InferenceSession(graph, sess_options=options, providers=list(providers))
    except Exception:  # a damaged or partial entry: rebuilt by the caller
        with contextlib.suppress(OSError):
            cached.unlink(missing_ok=True)
        return None
    with contextlib.suppress(OSError):
        os.utime(cached)  # recently used: pruned last
    return session


def _optimise_into(
    graph: str | bytes, settings: SessionSettings, cached: Path, providers: Sequence[str]
) -> tuple[ort.InferenceSession | None, BaseException | None]:
    """(a session whose optimised graph is saved as `cached`, None) or (None, why it could not be).

    A full disk or a read-only cache makes onnxruntime fail the whole session
    ("Protobuf serialization failed"); the caller then runs without the cache,
    so a cache that cannot be written costs only speed.
    """
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cached) as temporary:
            options = _options(settings)
            options.optimized_model_filepath = str(temporary)
            session = ort.InferenceSession(graph, sess_options=options, providers=list(providers))
            if temporary.stat().st_size == 0:
                raise OSError("onnxruntime wrote no optimised graph")
            os.chmod(temporary, default_mode())  # readable by whoever shares the cache
    except Exception as exc:
        return None, exc
    prune_cache(cached.parent)
    return session, None


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

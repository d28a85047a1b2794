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
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np
import onnxruntime as ort

from capgen.runtime.atomic_write import atomic_path, prune_stale_temporaries
from capgen.runtime.errors import ModelError
from capgen.runtime.home import capgen_home
from capgen.runtime.onnx_external_data import read_single_file_graph


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
_PROVIDERS = ["CPUExecutionProvider"]


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
            entry.unlink(missing_ok=True)


def _options(threads: int | None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.inter_op_num_threads = 1
    if threads is not None:
        options.intra_op_num_threads = threads
    # 4 = fatal only: at 3 a graph failing at run time also printed onnxruntime's
    # own coloured log line next to capgen's one-line ModelError.
    options.log_severity_level = 4
    return options


def _load_cached(cached: Path, threads: int | None) -> ort.InferenceSession | None:
    options = _options(threads)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(str(cached), sess_options=options, providers=_PROVIDERS)
    except Exception:  # a damaged cache entry: rebuilt by the caller
        cached.unlink(missing_ok=True)
        return None
    with contextlib.suppress(OSError):
        os.utime(cached)  # recently used: pruned last
    return session


def _optimise_into(graph: bytes, threads: int | None, cached: Path) -> ort.InferenceSession | None:
    """A session whose optimised graph is saved as `cached`; None if that cannot be written.

    A full disk or a read-only cache makes onnxruntime fail the whole session
    ("Protobuf serialization failed"); the caller then runs without the cache,
    so a cache that cannot be written costs only speed.
    """
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cached) as temporary:
            options = _options(threads)
            options.optimized_model_filepath = str(temporary)
            session = ort.InferenceSession(graph, sess_options=options, providers=_PROVIDERS)
            if temporary.stat().st_size == 0:
                raise OSError("onnxruntime wrote no optimised graph")
    except Exception:
        return None
    prune_cache(cached.parent)
    return session


def _create(path: Path, threads: int | None, cache_key: str | None) -> ort.InferenceSession:
    graph = read_single_file_graph(path)
    if cache_key:
        cached = _optimized_cache_path(cache_key)
        # Left by runs killed while optimising (`tmp*.partial`: capgen before 2026-12).
        prune_stale_temporaries(cached.parent, legacy_glob="tmp*.partial")
        session = _load_cached(cached, threads) if cached.is_file() else None
        if session is None:
            session = _optimise_into(graph, threads, cached)
        if session is not None:
            return session
    return ort.InferenceSession(graph, sess_options=_options(threads), providers=_PROVIDERS)


class OnnxSession:
    """A CPU session whose inputs and outputs are checked against what capgen expects."""

    def __init__(
        self,
        path: Path,
        inputs: Sequence[str],
        outputs: Sequence[str],
        threads: int | None = None,
        cache_key: str | None = None,
    ) -> None:
        """`cache_key`: the file's sha256, to cache its optimised graph (see module docstring)."""
        try:
            self._session = _create(path, threads, cache_key)
        except ModelError:
            raise
        except Exception as exc:  # onnxruntime raises its own unrelated exception types
            first_line = (
                str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            )
            raise ModelError(f"{path}: not a runnable ONNX graph ({first_line})") from exc
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

"""One onnxruntime session per model file, configured the same way everywhere.

Creating a session costs tens to hundreds of milliseconds (graph load +
optimisation), so capgen makes each one once and reuses it;
`InferenceSession.run` is thread-safe, which is what makes one `Captioner`
usable from many threads.

Optimising the 83 MB Xception graph is most of a cold start's session time
(0.30 -> 0.16 s to load the real-size model here), so the encoder's
optimised graph is cached under $CAPGEN_HOME/optimized, keyed on the file's
sha256 (from the manifest, already verified), the onnxruntime version and the
CPU's feature flags (fully optimised graphs are specific to the CPU they were
made on). Entries are shared by every model folder with the same encoder,
the least recently used are pruned beyond `CACHE_LIMIT_BYTES`, and the
folder is safe to delete at any time. The small decoder graphs are not
cached: loading their optimised form measured slower than optimising them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import tempfile
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np
import onnxruntime as ort

from capgen.runtime.errors import ModelError
from capgen.runtime.home import capgen_home


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


def _optimized_cache_path(content_sha256: str) -> Path:
    key = "\0".join([content_sha256, ort.__version__, _cpu_fingerprint()])
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


def _create(path: Path, threads: int | None, cache_key: str | None) -> ort.InferenceSession:
    providers = ["CPUExecutionProvider"]
    cached = _optimized_cache_path(cache_key) if cache_key else None
    if cached is not None and cached.is_file():
        options = _options(threads)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            session = ort.InferenceSession(str(cached), sess_options=options, providers=providers)
        except Exception:  # a damaged cache entry: rebuild it below
            cached.unlink(missing_ok=True)
        else:
            with contextlib.suppress(OSError):
                os.utime(cached)  # recently used: pruned last
            return session
    options = _options(threads)
    temporary = None
    if cached is not None:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=cached.parent, suffix=".partial")
            os.close(handle)
            options.optimized_model_filepath = temporary
        except OSError:
            temporary = None  # a read-only cache only costs the optimisation next time
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception:
        if temporary:
            Path(temporary).unlink(missing_ok=True)
        raise
    if temporary and cached is not None:
        try:
            os.replace(temporary, cached)  # atomic: a crash never leaves half a graph as the cache
            prune_cache(cached.parent)
        except OSError:
            Path(temporary).unlink(missing_ok=True)
    return session


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

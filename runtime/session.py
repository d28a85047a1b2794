"""One onnxruntime session per model file, configured the same way everywhere.

Creating a session costs tens to hundreds of milliseconds (graph load +
optimisation), so capgen makes each one once and reuses it;
`InferenceSession.run` is thread-safe, which is what makes one `Captioner`
usable from many threads.

The optimised graphs of CPU sessions are cached: runtime/graph_cache.py.

Execution providers are onnxruntime's own names (`resolve_providers`), CPU
by default; a name this onnxruntime build does not have is a one-line
InputError naming the ones it has.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from capgen.runtime.errors import InputError, ModelError
from capgen.runtime.graph_cache import cached_session
from capgen.runtime.onnx_external_data import single_file_graph

CPU_PROVIDER = "CPUExecutionProvider"
DEFAULT_PROVIDERS = (CPU_PROVIDER,)
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


NO_SPINNING_VAR = "CAPGEN_NO_SPINNING"


def spinning_allowed() -> bool:
    """False when CAPGEN_NO_SPINNING is set to anything but '', '0', 'false' or 'no'.

    onnxruntime's idle intra-op threads spin (busy-wait) for their next piece of
    work, which wins a little latency on cores capgen has to itself and wastes
    the cores it shares: two test workers on 2 cores, several services or jobs
    on one machine. Off, the same suite of runtime tests took about a tenth less
    CPU (docs/cli.md, "Sharing cores"). It changes no number a model computes.
    """
    value = os.environ.get(NO_SPINNING_VAR, "").strip().lower()
    return value in ("", "0", "false", "no")


def plain_options() -> ort.SessionOptions:
    """onnxruntime's default options, with CAPGEN_NO_SPINNING honoured (every capgen session)."""
    options = ort.SessionOptions()
    if not spinning_allowed():
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def plain_cpu_session(
    model: str | bytes | Path, options: ort.SessionOptions | None = None
) -> ort.InferenceSession:
    """A CPU session on `plain_options` (or `options`, made from them) for the checks and tools
    outside the runtime's OnnxSession: the converter's speed report, quantization's feature
    check, training's feature extraction. One place, so none of them forgets the variable."""
    model = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(
        model, sess_options=options or plain_options(), providers=["CPUExecutionProvider"]
    )


def _options(settings: SessionSettings) -> ort.SessionOptions:
    options = plain_options()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.inter_op_num_threads = 1
    if settings.threads is not None:
        options.intra_op_num_threads = settings.threads
    options.enable_mem_pattern = settings.memory_pattern
    # 4 = fatal only: at 3 a graph failing at run time also printed onnxruntime's
    # own coloured log line next to capgen's one-line ModelError.
    options.log_severity_level = 4
    return options


def _create(
    path: Path, settings: SessionSettings, cache_key: str | None, providers: Sequence[str]
) -> ort.InferenceSession:
    def new_options() -> ort.SessionOptions:
        return _options(settings)

    # Only CPU sessions are cached: an optimised graph may hold provider-specific nodes.
    if cache_key and tuple(providers) == DEFAULT_PROVIDERS:
        return cached_session(path, cache_key, new_options, providers)
    with single_file_graph(path) as graph:
        return ort.InferenceSession(graph, sess_options=new_options(), providers=list(providers))


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

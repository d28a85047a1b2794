"""The engines that can run the encoder graph: onnxruntime (always) and OpenVINO (optional).

The encoder is ~95% of a caption's CPU time, and on CPUs with AMX or
AVX512-BF16 OpenVINO runs the same ONNX graph about 3x faster than
onnxruntime in bf16 (measured: 69.7 ms -> 22.6 ms per photo, feature cosine
0.9997). The model folder stays ONNX: OpenVINO reads the very files the
manifest lists, so nothing is converted or stored for it.
It is used for the FP32 graph (bf16), and for the INT8 graph only where
`capgen tune` found its captions agree with fp32's (precision.py says why).

OpenVINO is an optional extra (`pip install 'capgen[openvino]'`): it is
imported only when a precision mode needs it, so the runtime-only install and
every cold `capgen caption` in the default fp32 mode never load it.

`OpenVinoSession` has `OnnxSession`'s shape (`run(feeds) -> [outputs]`,
`path`), so `Encoder` does not care which engine it holds. It never hands
OpenVINO a path: the file is read once, its sha256 compared with the
manifest's (the runtime's rule: no unverified bytes) and checked for external
data (a side file would bring weights no checksum covers), and OpenVINO
parses those same bytes, so a file swapped in after the check is never read.
"""

from __future__ import annotations

import hashlib
import os
import queue
import stat
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from capgen.runtime.errors import InputError, ModelError, ModelIntegrityError

ONNXRUNTIME = "onnxruntime"
OPENVINO = "openvino"
ENGINES = (ONNXRUNTIME, OPENVINO)
OPENVINO_INSTALL = "pip install 'capgen[openvino]'"
# OpenVINO's names for the precision its CPU plugin computes in (INFERENCE_PRECISION_HINT).
F32, BF16 = "f32", "bf16"
BF16_UNSUPPORTED = (
    "precision bf16 needs a CPU with AMX or AVX512-BF16, which OpenVINO does not find here; "
    "use --precision fp32 or int8"
)


@cache
def _openvino_module() -> ModuleType | None:
    """The `openvino` package, or None when it is not installed (or cannot be imported)."""
    try:
        import openvino
    except ImportError:
        return None
    return openvino


def openvino_installed() -> bool:
    """Whether OpenVINO can be imported (imports it: only ask when a mode could use it)."""
    return _openvino_module() is not None


def openvino_version() -> str | None:
    """The installed OpenVINO release ("2026.4.1"), None when it is not installed."""
    module = _openvino_module()
    if module is None:
        return None
    # get_version() is "2026.4.1-22982-<commit>-releases/2026/4"; the release is what users know.
    return str(getattr(module, "__version__", "0")).split("-")[0]


def engine_version(engine: str) -> str | None:
    """The version of `engine` as installed here (None: OpenVINO is not installed)."""
    if engine == OPENVINO:
        return openvino_version()
    import onnxruntime

    return str(getattr(onnxruntime, "__version__", "0"))


@cache
def _core() -> Any:
    """One OpenVINO Core per process: creating one loads the plugin registry (tens of ms)."""
    module = require_openvino("this precision")
    return module.Core()


def require_openvino(what: str) -> ModuleType:
    """The `openvino` module, or a one-line InputError saying how to install it."""
    module = _openvino_module()
    if module is None:
        raise InputError(f"{what} runs on OpenVINO, which is not installed: {OPENVINO_INSTALL}")
    return module


@cache
def bf16_supported() -> bool:
    """Whether OpenVINO's CPU plugin computes in bf16 here (AMX or AVX512-BF16).

    On other CPUs a bf16 hint silently runs in f32, which would make `bf16`
    a slower fp32 under another name; asking for it there is refused instead.
    False when OpenVINO is not installed.
    """
    if not openvino_installed():
        return False
    try:
        capabilities = _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # no CPU plugin: nothing runs on OpenVINO at all
        return False
    return "BF16" in [str(item).upper() for item in capabilities]


def _one_line(exc: BaseException) -> str:
    """OpenVINO's messages are stacks of 'Exception from src/…' lines: keep the last real one."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    meaningful = [line for line in lines if not line.startswith(("Exception from ", "Check "))]
    text = (meaningful or lines or [type(exc).__name__])[-1]
    return text if len(text) <= 200 else text[:199] + "…"


def read_verified(path: Path, sha256: str) -> bytes:
    """The file's bytes, read once, after their sha256 matched and they name no external data.

    `verify_files` checked the file at load, but through a stamp keyed on
    (path, size, mtime); these bytes are what OpenVINO will parse, so they
    are hashed themselves.
    """
    from capgen.runtime.onnx_external_data import uses_external_data

    try:
        # O_NONBLOCK: a FIFO swapped in for the graph fails the check instead of hanging the open.
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise ModelError(f"{path}: is not a regular file")
        with os.fdopen(os.dup(descriptor), "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read ({exc.strerror or exc})") from None
    finally:
        os.close(descriptor)
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise ModelIntegrityError(
            f"{path}: sha256 {digest[:12]}… does not match the manifest's {sha256[:12]}…"
        )
    if uses_external_data(data):
        raise ModelError(
            f"{path}: keeps tensors in external data files, which a capgen model folder may not "
            "(its manifest cannot vouch for them); save the graph as one file"
        )
    return data


class OpenVinoSession:
    """One graph compiled by OpenVINO for the CPU; `run` is safe from many threads.

    A compiled model's own `__call__` shares one infer request, which is not
    thread-safe; here each call borrows an idle request from a pool (made on
    demand, so the pool grows to the number of concurrent callers and no more).
    """

    def __init__(
        self,
        path: Path,
        sha256: str,
        inputs: Sequence[str],
        outputs: Sequence[str],
        inference_precision: str = F32,
        threads: int | None = None,
    ) -> None:
        """`sha256`: the manifest's checksum of the file; the bytes read are checked against it.

        `inference_precision`: "f32" (exact to ~1e-6) or "bf16" (refused where the CPU lacks it).
        """
        if inference_precision not in (F32, BF16):
            raise InputError(
                f"inference precision must be {F32} or {BF16}, got {inference_precision!r}"
            )
        require_openvino(f"precision {inference_precision}")
        if inference_precision == BF16 and not bf16_supported():
            raise InputError(BF16_UNSUPPORTED)
        self.path = path
        self.output_names = list(outputs)
        core = _core()
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": inference_precision,
            "PERFORMANCE_HINT": "LATENCY",
        }
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        data = read_verified(path, sha256)
        try:
            model = core.read_model(model=data)
            del data  # OpenVINO keeps its own copy of the weights
            found_inputs = [node.get_any_name() for node in model.inputs]
            found_outputs = [node.get_any_name() for node in model.outputs]
            if sorted(found_inputs) != sorted(inputs) or not set(outputs) <= set(found_outputs):
                raise ModelError(
                    f"{path}: graph has inputs {found_inputs} and outputs {found_outputs}, "
                    f"expected inputs {list(inputs)} and outputs {list(outputs)} (see docs/design.md)"
                )
            self._compiled = core.compile_model(model, "CPU", config)
        except ModelError:
            raise
        except Exception as exc:  # OpenVINO raises RuntimeError and its own types
            raise ModelError(f"{path}: OpenVINO cannot run this graph ({_one_line(exc)})") from exc
        # What the plugin really computes in ("bf16", "f32"), an ov.Type: its name, not its repr.
        hint = self._compiled.get_property("INFERENCE_PRECISION_HINT")
        self.inference_precision = str(getattr(hint, "get_type_name", lambda: hint)())
        self._outputs = [self._compiled.output(name) for name in self.output_names]
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The outputs in the order given at construction (copies: the request is reused)."""
        try:
            request = self._idle.get_nowait()
        except queue.Empty:
            request = self._compiled.create_infer_request()
        try:
            results = request.infer(dict(feeds), share_outputs=False)
            outputs = [np.asarray(results[port]) for port in self._outputs]
        except Exception as exc:  # a graph that fails at run time is a broken model, not bad input
            raise ModelError(
                f"{self.path}: failed to run on OpenVINO ({type(exc).__name__}: {_one_line(exc)})"
            ) from exc
        self._idle.put(request)
        return outputs

"""capgen: run the Keras CNN+LSTM image captioner on a CPU with onnxruntime.

`from capgen import Captioner` is the whole Python API for captioning; the
import is lazy so `import capgen` stays cheap and never pulls in TensorFlow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from capgen.runtime.captioner import Captioner
    from capgen.runtime.decoding import DecodingOptions, DecodingResult
    from capgen.runtime.errors import CapgenError

_LAZY = {
    "Captioner": "capgen.runtime.captioner",
    "DecodingOptions": "capgen.runtime.decoding",
    "DecodingResult": "capgen.runtime.decoding",
    "CapgenError": "capgen.runtime.errors",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'capgen' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module_name), name)


__all__ = ["CapgenError", "Captioner", "DecodingOptions", "DecodingResult", "__version__"]

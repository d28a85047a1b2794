"""capgen: run the Keras CNN+LSTM image captioner on a CPU with onnxruntime.

    import capgen
    captioner = capgen.Captioner()                    # the model `capgen setup` built
    captioner.caption("photo.jpg", beam_size=1).text  # the tutorial's greedy loop
    capgen.list_models()                              # what `capgen models` lists

Every public name is imported on first use (module `__getattr__`), so
`import capgen` stays cheap: no onnxruntime, no numpy, never TensorFlow.
`__all__` and `__dir__` list those names anyway, so `dir(capgen)`, tab
completion and `from capgen import *` show the API rather than only what
happens to be imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from capgen.cli_support.exit_codes import ExitCode
    from capgen.runtime.captioner import Captioner
    from capgen.runtime.decoding import DecodingOptions, DecodingResult
    from capgen.runtime.errors import (
        CapgenError,
        ConversionError,
        ErrorCategory,
        GitLfsPointerError,
        ImageError,
        ImageTooLargeError,
        InputError,
        ModelError,
        ModelIntegrityError,
        TokenizerError,
        UnsafePickleError,
        UnsupportedModelError,
    )
    from capgen.runtime.installed import InstalledModel, list_models

_ERRORS = "capgen.runtime.errors"
# Public name -> the module that defines it; imported only when the name is first used.
_LAZY = {
    "Captioner": "capgen.runtime.captioner",
    "DecodingOptions": "capgen.runtime.decoding",
    "DecodingResult": "capgen.runtime.decoding",
    "InstalledModel": "capgen.runtime.installed",
    "list_models": "capgen.runtime.installed",
    "CapgenError": _ERRORS,
    "ConversionError": _ERRORS,
    "ErrorCategory": _ERRORS,
    # The command line's exit-code table (each ErrorCategory has its code).
    "ExitCode": "capgen.cli_support.exit_codes",
    "GitLfsPointerError": _ERRORS,
    "ImageError": _ERRORS,
    "ImageTooLargeError": _ERRORS,
    "InputError": _ERRORS,
    "ModelError": _ERRORS,
    "ModelIntegrityError": _ERRORS,
    "TokenizerError": _ERRORS,
    "UnsafePickleError": _ERRORS,
    "UnsupportedModelError": _ERRORS,
}

__all__ = [
    "CapgenError",
    "Captioner",
    "ConversionError",
    "DecodingOptions",
    "DecodingResult",
    "ErrorCategory",
    "ExitCode",
    "GitLfsPointerError",
    "ImageError",
    "ImageTooLargeError",
    "InputError",
    "InstalledModel",
    "ModelError",
    "ModelIntegrityError",
    "TokenizerError",
    "UnsafePickleError",
    "UnsupportedModelError",
    "__version__",
    "list_models",
]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (PEP 562), so `import capgen` imports nothing heavy."""
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'capgen' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    """The public API, whether or not it is imported yet (the default would list only `typing` leftovers)."""
    return sorted(__all__)

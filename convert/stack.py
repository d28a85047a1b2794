"""Which parts of the conversion stack a step needs, and keeping TensorFlow quiet.

Converting the decoder reads Keras files with h5py and writes graphs with
onnx; only exporting an encoder (and building the ImageNet weights file)
needs TensorFlow, Keras and tf2onnx, about 1.9 GB. So each step asks for
what it needs (`require`), a missing module is one line naming the extra to
install, and `capgen convert model --encoder FILE.onnx` runs with the light
`convert-decoder` extra.

This module imports nothing heavy: it is imported by every `capgen` run.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import warnings

from capgen.runtime.errors import ConversionError

CONVERT_STACK = ("tensorflow", "keras", "tf2onnx", "onnx", "h5py")
# What `capgen convert model` needs when the encoder exists (`--encoder FILE.onnx`
# or an export already in the cache): pip install 'capgen[convert-decoder]'.
DECODER_STACK = ("onnx", "h5py")
# What exporting an encoder to ONNX needs on top.
EXPORT_STACK = ("tensorflow", "keras", "tf2onnx")
CONVERT_EXTRA = "pip install 'capgen[convert]'"


def missing_modules(modules: tuple[str, ...]) -> list[str]:
    """The modules of `modules` that cannot be imported here (nothing is imported)."""
    return [name for name in modules if importlib.util.find_spec(name) is None]


def require(modules: tuple[str, ...], needs: str, hint: str = CONVERT_EXTRA) -> None:
    """Raise a one-line ConversionError (exit 6) when any of `modules` is missing.

    `needs` says what needs them ("this command needs the conversion stack").
    """
    missing = missing_modules(modules)
    if missing:
        raise ConversionError(f"{needs} ({', '.join(missing)} missing): {hint}")


def quiet_tensorflow() -> None:
    """Keep TensorFlow's, absl's and tf2onnx's start-up chatter off stderr (unless asked for).

    Set before TensorFlow is imported: its C++ log level is read once, at import.
    A user's own TF_CPP_MIN_LOG_LEVEL wins.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for name in ("tensorflow", "tf2onnx", "absl", "keras", "h5py"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for module in ("tensorflow", "keras", "tf_keras", "tf2onnx", "google.protobuf"):
        warnings.filterwarnings("ignore", module=module)
    if importlib.util.find_spec("absl") is not None:
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)

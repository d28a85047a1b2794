"""The encoder kinds the converter can export, and how a package adds one.

The converter itself knows the tutorial's ImageNet Xception (`xception`,
registered by `capgen.convert.encoder`) and the Keras applications its
variants use (`vgg16`, `resnet50`, `inceptionv3`, `densenet201`, registered
by `capgen.convert.applications`). Other kinds, such as
the demonstration model's `xception+colour`, live with the code that defines
them and register here, so the generic converter never imports them. A
package announces its kinds through the `capgen.encoders` entry-point group
(each entry point names an `EncoderKindSpec`); they are loaded lazily, the
first time a name is not already known, so nothing is imported until needed.

This module is light on purpose (no TensorFlow, no onnx): listing or
checking kinds, e.g. for an error message, must not pay for the conversion stack.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from capgen.runtime.errors import ConversionError, InputError

ENTRY_POINT_GROUP = "capgen.encoders"
XCEPTION_WEIGHTS_FILE = "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"


@dataclass(frozen=True)
class EncoderKindSpec:
    """One exportable encoder kind: what it outputs, how it is built, what its export depends on.

    `build(weights_path)` returns a TensorFlow function of uint8 images
    [N, input_size, input_size, 3] to float32 features [N, feature_size]; the
    converter exports it with tf2onnx, unless the kind has `write_onnx`, which
    writes the same function's graph itself. `recipe_version` must be bumped
    whenever the exported graph changes for the same inputs (it keys the
    export cache, with the weights' and `recipe_inputs()`'s content).
    `calibration_pixels(count)` may add kind-specific images (uint8 HWC) to
    the INT8 calibration set. `legacy_recipes` lists the cache keys older
    capgen versions wrote for exactly this recipe (they hashed source files);
    an export recorded under one is reused, since tf2onnx does not reproduce
    an export byte for byte and model folders record the encoder's sha256.
    """

    name: str
    feature_size: int
    build: Callable[[Path], Any]
    recipe_version: int
    input_size: int = 299
    recipe_inputs: Callable[[], Mapping[str, str]] = field(default=lambda: {})
    calibration_pixels: Callable[[int], list[Any]] | None = None
    legacy_recipes: frozenset[str] = frozenset()
    # Manifest `encoder.input` fields beyond the size (resize_filter, scaling, ...);
    # None: Xception's (BICUBIC, x / 127.5 - 1). `weights_file`: the Keras cache
    # name of the weights file `build` takes, for messages and --help.
    preprocessing: Mapping[str, str] | None = None
    weights_file: str = XCEPTION_WEIGHTS_FILE
    # Called as finish_graph(onnx_model, built_function) after tf2onnx, to complete the
    # graph in ONNX directly (VGG16's Dense layers: through tf2onnx they need > 22 GB).
    finish_graph: Callable[[Any, Any], None] | None = None
    # write_onnx(weights_path, output_path, props) writes the kind's encoder graph
    # straight from its weights file with onnx and h5py, in this process, without
    # TensorFlow (`xception` and the Keras application families); `build` stays the
    # TensorFlow reference. None: the graph is `build` through tf2onnx.
    write_onnx: Callable[[Path, Path, Mapping[str, str]], Path] | None = None


_KINDS: dict[str, EncoderKindSpec] = {}
_plugins_loaded = False


def register_encoder_kind(spec: EncoderKindSpec) -> EncoderKindSpec:
    """Make `spec` known under `spec.name`; registering the same spec twice is harmless."""
    known = _KINDS.get(spec.name)
    if known is not None and known is not spec:
        raise ConversionError(f"encoder kind {spec.name!r} is registered twice")
    _KINDS[spec.name] = spec
    return spec


def _load_plugins() -> None:
    """Register every kind announced in the `capgen.encoders` entry-point group, once."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        spec = entry_point.load()
        if not isinstance(spec, EncoderKindSpec):
            raise ConversionError(
                f"entry point {entry_point.name!r} in {ENTRY_POINT_GROUP} is not an EncoderKindSpec"
            )
        register_encoder_kind(spec)


def _builtin_kinds() -> None:
    """Register the converter's own kinds: `xception`, then the Keras application families."""
    # applications imports capgen.convert.encoder first, so `xception` stays the first kind.
    import capgen.convert.applications  # noqa: F401


def builtin_kind_names() -> tuple[str, ...]:
    """The kinds registered by the converter itself (loadable in any fresh process)."""
    from capgen.convert import applications, encoder

    return (encoder.XCEPTION.name, *applications.SPECS)


def encoder_kind_names() -> tuple[str, ...]:
    """Every known kind, built-in first, then plugins in registration order.

    Built-in first whatever was imported first: a plugin module imported
    directly (models.colour_encoder registers itself) can precede the families.
    """
    _builtin_kinds()
    _load_plugins()
    builtin = tuple(name for name in builtin_kind_names() if name in _KINDS)
    return (*builtin, *(name for name in _KINDS if name not in builtin))


def find_encoder_kind(name: str) -> EncoderKindSpec | None:
    """The spec registered under `name`, loading plugins only if it is not known yet."""
    _builtin_kinds()
    if name not in _KINDS:
        _load_plugins()
    return _KINDS.get(name)


def get_encoder_kind(name: str) -> EncoderKindSpec:
    """The spec registered under `name`, or a one-line InputError naming the known kinds."""
    spec = find_encoder_kind(name)
    if spec is None:
        raise InputError(
            f"unknown encoder {name!r}; choose one of {', '.join(encoder_kind_names())}"
        )
    return spec


def kinds_with_size(feature_size: int) -> tuple[str, ...]:
    """The known kinds that output `feature_size` features (for a mismatch's message)."""
    return tuple(name for name in encoder_kind_names() if _KINDS[name].feature_size == feature_size)

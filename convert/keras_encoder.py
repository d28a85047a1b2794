"""A user's own saved Keras encoder (`encoder.h5` / `.keras`) -> an encoder ONNX in the cache.

Some tutorial forks save the feature extractor itself, e.g.
`Model(vgg.inputs, vgg.layers[-2].output).save("encoder.h5")`. Such a file
says nothing about the preprocessing its photos got, so the user names it
(`--preprocessing caffe|torch|tf|none`, as `preprocess_input` does it) and it
goes inside the graph like every built-in kind's. The export runs in a child
process (TensorFlow), is cached per file content and preprocessing, and the
ONNX records kind `keras`, the feature size and the input size read from the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from capgen.convert.applications import PREPROCESSING_MODES, SCALING
from capgen.convert.hashing import sha256_file
from capgen.convert.isolated import read_untrusted
from capgen.convert.untrusted import describe
from capgen.runtime.errors import InputError, ModelError, UnsupportedModelError
from capgen.runtime.git_lfs import is_pointer
from capgen.runtime.home import encoders_dir

KERAS_KIND = "keras"
KERAS_SUFFIXES = (".h5", ".keras")
RECIPE_VERSION = 1


def is_keras_encoder_path(choice: str) -> bool:
    """`--encoder PATH` names a saved Keras model rather than an ONNX file."""
    return Path(choice).suffix.lower() in KERAS_SUFFIXES


def _check_mode(mode: str | None, path: Path) -> str:
    if mode is None:
        raise InputError(
            f"{path} is a Keras model: say how its photos were preprocessed with "
            f"--preprocessing {'|'.join(PREPROCESSING_MODES)} (as keras.applications."
            "<family>.preprocess_input: vgg16/resnet50 caffe, densenet torch, "
            "inception_v3/xception tf)"
        )
    if mode not in PREPROCESSING_MODES:
        raise InputError(f"--preprocessing {mode!r} is not one of {', '.join(PREPROCESSING_MODES)}")
    return mode


def ensure_keras_encoder(path: Path, mode: str | None, force: bool = False) -> Path:
    """The cached encoder ONNX for the saved Keras model at `path` with `mode` preprocessing."""
    from capgen.convert.encoder import export_recipe_versions
    from capgen.convert.stack import CONVERT_EXTRA, EXPORT_STACK, require

    path = Path(path)
    mode = _check_mode(mode, path)
    if not path.is_file():
        raise InputError(f"Keras encoder not found: {path}")
    with path.open("rb") as handle:
        if is_pointer(handle.read(200)):
            raise InputError(f"{path} is a Git LFS pointer, not a model; run `git lfs pull`")
    check_user_model(path)  # before the cache and the export child: no code from the file runs
    digest = sha256_file(path)
    target = encoders_dir() / f"{KERAS_KIND}-{mode}-{digest[:12]}.onnx"
    record_path = target.with_name(target.name + ".json")
    wanted = {
        "kind": KERAS_KIND,
        "model_sha256": digest,
        "preprocessing": mode,
        "recipe": {**export_recipe_versions(), "keras_encoder_recipe": str(RECIPE_VERSION)},
    }
    if (
        not force
        and target.is_file()
        and _read(record_path)
        == {
            **wanted,
            "onnx_sha256": sha256_file(target),
        }
    ):
        return target
    require(
        EXPORT_STACK,
        "exporting a Keras encoder to ONNX needs TensorFlow",
        f"{CONVERT_EXTRA}, or pass --encoder FILE.onnx (an encoder exported elsewhere)",
    )
    from capgen.convert.isolated import run_isolated

    run_isolated(export_keras_encoder, path, mode, target, what=f"exporting {path.name}")
    from capgen.runtime.atomic_write import atomic_write_text

    record = {**wanted, "onnx_sha256": sha256_file(target)}
    atomic_write_text(record_path, json.dumps(record, indent=2) + "\n")
    return target


def _read(record_path: Path) -> Any:
    try:
        return json.loads(record_path.read_text())
    except (OSError, ValueError):
        return None


# Every class a plain saved encoder's config names: layers that compute from their
# weights and config alone, and the initializers, regularizers, constraints and dtype
# policies Keras writes beside them. Lambda (Python code marshalled into the file),
# TFOpLambda (any TensorFlow function, named in the file) and custom classes are not
# here: loading them runs what the file says, which capgen never does.
PLAIN_LAYERS = frozenset(
    {
        "InputLayer", "Functional", "Model", "Sequential",
        "Dense", "EinsumDense", "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose",
        "Conv2DTranspose", "Conv3DTranspose", "SeparableConv1D", "SeparableConv2D",
        "DepthwiseConv1D", "DepthwiseConv2D", "Embedding",
        "Activation", "ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax", "ThresholdedReLU",
        "BatchNormalization", "LayerNormalization", "GroupNormalization", "UnitNormalization",
        "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
        "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization",
        "Flatten", "Reshape", "Permute", "RepeatVector",
        "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D",
        "AveragePooling2D", "AveragePooling3D", "GlobalAveragePooling1D",
        "GlobalAveragePooling2D", "GlobalAveragePooling3D", "GlobalMaxPooling1D",
        "GlobalMaxPooling2D", "GlobalMaxPooling3D",
        "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "Cropping1D", "Cropping2D",
        "Cropping3D", "UpSampling1D", "UpSampling2D", "UpSampling3D",
        "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate", "Dot",
        "Rescaling", "Normalization", "Resizing", "CenterCrop",
    }
)  # fmt: skip
_PLAIN_CONFIG_OBJECTS = frozenset(
    {
        "GlorotUniform", "GlorotNormal", "HeNormal", "HeUniform", "LecunNormal",
        "LecunUniform", "Zeros", "Ones", "Constant", "RandomNormal", "RandomUniform",
        "TruncatedNormal", "VarianceScaling", "Orthogonal", "Identity",
        "L1", "L2", "L1L2", "OrthogonalRegularizer",
        "MaxNorm", "MinMaxNorm", "NonNeg", "UnitNorm",
        "DTypePolicy", "FloatDTypePolicy", "Policy", "__keras_tensor__",
    }
)  # fmt: skip
_CONFIG_OBJECTS = PLAIN_LAYERS | _PLAIN_CONFIG_OBJECTS


def _config_objects(config: Any) -> Any:
    """Every dict in a parsed config (iteratively: the depth was bounded when parsing)."""
    pending = [config]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            yield item
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)


def check_plain_layers(config: dict[str, Any], path: Path) -> None:
    """UnsupportedModelError unless every class the config names is a plain Keras one.

    Checked on the config alone, before Keras sees the file: Keras 3's safe
    mode refuses a Lambda, but tf_keras (tried next, for Keras 2 files) ran its
    code. Classes must come from Keras itself (module `keras…` or none) and
    carry no registered (custom) name.
    """
    for item in _config_objects(config):
        if "class_name" not in item:
            continue
        name = item["class_name"]
        module = item.get("module")
        registered = item.get("registered_name")
        layer = describe(
            item.get("config", {}).get("name") if isinstance(item.get("config"), dict) else None
        )
        if not isinstance(name, str) or name not in _CONFIG_OBJECTS:
            raise UnsupportedModelError(
                f"{path}: layer {layer} is a {describe(name)}, which capgen does not load from a "
                "user's file (Lambda, TFOpLambda and custom layers run code the file names); "
                "rebuild the encoder from plain Keras layers"
            )
        if (
            module is not None
            and not (isinstance(module, str) and (module == "keras" or module.startswith("keras.")))
        ) or (registered is not None and registered != name):
            raise UnsupportedModelError(
                f"{path}: {describe(name)} names module {describe(module)} / registered name "
                f"{describe(registered)}, not Keras's own; capgen loads only plain Keras layers"
            )


def read_saved_config(path: Path) -> dict[str, Any]:
    """The model config of a saved .h5 or .keras file, read without Keras, its HDF5 checked.

    The HDF5 (the .h5 itself, or a .keras zip's model.weights.h5) must hold
    everything Keras will read: no external links, external storage or
    virtual datasets (keras_reader.check_self_contained). Read in a child with a
    time bound: a damaged HDF5 file can hang h5py in C (isolated.py).
    """
    return read_untrusted(_read_saved_config, path, what=f"Keras encoder {path}", error=InputError)


def _read_saved_config(path: Path) -> dict[str, Any]:
    import zipfile

    from capgen.convert.keras_reader import (
        _DAMAGE,
        MAX_CONFIG_BYTES,
        _h5py,
        _parse_config,
        _text,
        check_self_contained,
    )

    where = f"Keras encoder {path}"
    with path.open("rb") as handle:
        head = handle.read(8)
    try:
        if head.startswith(b"PK"):
            with zipfile.ZipFile(path) as archive:
                names = set(archive.namelist())
                if "config.json" not in names:
                    raise ModelError(
                        f"{where} is a zip but not a Keras .keras file (no config.json)"
                    )
                if archive.getinfo("config.json").file_size > MAX_CONFIG_BYTES:
                    raise ModelError(f"{where}: config.json is larger than any Keras config")
                config = _parse_config(
                    archive.read("config.json").decode("utf-8"), f"config.json inside {path}"
                )
                if "model.weights.h5" in names:
                    with (
                        archive.open("model.weights.h5") as weights,
                        _h5py().File(weights, "r") as h5,
                    ):
                        check_self_contained(h5, where)
                return config
        with _h5py().File(path, "r") as handle:
            check_self_contained(handle, where)
            saved = handle.attrs.get("model_config")
            if saved is None:
                raise InputError(
                    f"{path} holds weights only (no model config); save the whole encoder "
                    "with model.save()"
                )
            return _parse_config(_text(saved), f"the model_config inside {path}")
    except _DAMAGE as error:  # h5py, zipfile and json on damaged bytes
        raise InputError(
            f"cannot load {path} as a Keras model (damaged file: {type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''})"
        ) from None


def check_user_model(path: Path) -> None:
    """Refuse, in one line, a saved encoder Keras could not load without running its code."""
    check_plain_layers(read_saved_config(path), path)


def load_user_model(path: Path) -> Any:
    """Keras 3 first, then tf_keras (Keras 2 files Keras 3 cannot read); one line if neither can.

    Only after check_user_model: both loaders build exactly the classes the
    config names, and every one of them is a plain Keras layer.
    """
    import keras

    check_user_model(path)
    errors = []
    try:
        return keras.models.load_model(str(path), compile=False, safe_mode=True)
    except Exception as error:
        errors.append(f"Keras 3: {str(error).splitlines()[0] if str(error) else error!r}")
    try:
        import tf_keras

        return tf_keras.models.load_model(str(path), compile=False)
    except ImportError:
        pass
    except Exception as error:
        errors.append(f"tf_keras: {str(error).splitlines()[0] if str(error) else error!r}")
    raise InputError(f"cannot load {path} as a Keras model ({'; '.join(errors)})")


def _model_sizes(model: Any, path: Path) -> tuple[tuple[int, int], int]:
    """((height, width), feature size) of a model taking [N, H, W, 3] images to [N, F]."""
    inputs, outputs = list(model.inputs), list(model.outputs)
    if len(inputs) != 1 or len(outputs) != 1:
        raise InputError(
            f"{path}: an encoder takes one image input and gives one feature vector; this "
            f"model has {len(inputs)} inputs and {len(outputs)} outputs"
        )
    shape_in = tuple(inputs[0].shape)
    shape_out = tuple(outputs[0].shape)
    if len(shape_in) != 4 or shape_in[3] != 3 or not (shape_in[1] and shape_in[2]):
        raise InputError(
            f"{path}: input shape {shape_in} is not [N, height, width, 3] with a fixed size"
        )
    if len(shape_out) != 2 or not shape_out[1]:
        raise InputError(f"{path}: output shape {shape_out} is not a feature vector [N, F]")
    return (int(shape_in[1]), int(shape_in[2])), int(shape_out[1])


def export_keras_encoder(path: Path, mode: str, output_path: Path) -> Path:
    """In the export's child: load, check the shapes, put `mode` inside, save the ONNX."""
    from capgen.convert.applications import finish_dense_head, model_encoder_function
    from capgen.convert.encoder import preprocessing, save_function_as_onnx

    model = load_user_model(path)
    (height, width), feature_size = _model_sizes(model, path)
    encode = model_encoder_function(model, mode, (height, width))
    fields = {
        "resize_filter": "NEAREST",
        "scaling": SCALING[mode],
        "preprocess_input": f"--preprocessing {mode}",
    }
    recorded = {**preprocessing(height, fields), "width": width}
    props = {
        "capgen.encoder.kind": KERAS_KIND,
        "capgen.encoder.feature_size": str(feature_size),
        "capgen.encoder.preprocessing": json.dumps(recorded),
    }
    return save_function_as_onnx(
        encode, (height, width), props, output_path, lambda proto: finish_dense_head(proto, encode)
    )

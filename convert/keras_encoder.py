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
from capgen.runtime.errors import InputError
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


def load_user_model(path: Path) -> Any:
    """Keras 3 first, then tf_keras (Keras 2 files Keras 3 cannot read); one line if neither can."""
    import keras

    errors = []
    try:
        return keras.models.load_model(str(path), compile=False)
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

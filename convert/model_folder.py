"""Write a model folder exactly as docs/design.md describes it.

The folder is assembled in a hidden staging folder beside the target and moved
into place at the end, so an interrupted conversion never leaves a half-written
folder that the runtime would try to load. The manifest records each file's
sha256 and size (so the runtime can detect damage), the sources' sha256 (so a
folder can be traced to the exact `model_9.h5`/`tokenizer.p`) and the versions
that converted it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import stat
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from capgen.convert.delimiters import Delimiters
from capgen.convert.hashing import sha256_file
from capgen.convert.portable import file_requirement
from capgen.convert.step_graph import (
    DecoderWeights,
    build_projection_graph,
    build_step_graph,
    build_word_gates_graph,
    step_metadata,
)
from capgen.runtime.errors import InputError, ModelError
from capgen.runtime.finite_weights import refuse_non_finite
from capgen.runtime.home import encoders_dir
from capgen.runtime.manifest import (
    ENCODER_FILE,
    FORMAT_VERSION,
    MANIFEST_FILE,
    PROJECTION_FILE,
    STANDARD_FILES,
    STEP_FILE,
    VOCABULARY_FILE,
    WORD_GATES_FILE,
    DecoderSpec,
    Manifest,
    VocabularySpec,
    file_record,
    load_manifest,
    parse_encoder_spec,
    write_manifest,
)
from capgen.runtime.onnx_external_data import read_single_file_graph
from capgen.runtime.staging import create_staging, discard_staging, prune_stale, swap_in

# Bump when what the converter writes changes for the same sources (2: graphs at the
# lowest IR version, onnxruntime recorded per file; 3: word_gates.onnx, the step's
# word-gate table as its factors, for `capgen export web`). Recorded as
# converted_with.recipe, so `capgen setup` and the benchmark fixtures rebuild folders
# made by an older recipe.
CONVERTER_RECIPE = "3"

# manifest key -> the distributions that provide it (TensorFlow ships as tensorflow-cpu here).
_VERSIONED_PACKAGES = {
    "capgen": ("capgen",),
    "tensorflow": ("tensorflow", "tensorflow-cpu"),
    "keras": ("keras",),
    "tf2onnx": ("tf2onnx",),
    "onnx": ("onnx",),
    "h5py": ("h5py",),
}


@dataclass(frozen=True)
class EncoderInfo:
    """An encoder ONNX and what the manifest says about it."""

    path: Path
    kind: str
    feature_size: int
    preprocessing: dict[str, Any]
    weights_source: dict[str, str] | None = None


@dataclass(frozen=True)
class ModelFolderSpec:
    """Everything a model folder is made of, besides the encoder."""

    weights: DecoderWeights
    vocabulary: list[str | None]
    delimiters: Delimiters
    max_length: int
    sources: dict[str, dict[str, str]]
    name: str = "default"
    description: str = ""
    extra_decoder: dict[str, Any] = field(default_factory=dict)
    extra_manifest: dict[str, Any] = field(default_factory=dict)  # e.g. demonstration


def describe_encoder(path: Path, kind: str | None = None) -> EncoderInfo:
    """Read an encoder ONNX's feature size and recorded preprocessing from the file itself."""
    import onnx

    from capgen.convert.encoder import PREPROCESSING

    path = Path(path)
    if not path.is_file():
        raise InputError(f"encoder ONNX not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # onnx raises DecodeError and friends for non-ONNX bytes
        raise ModelError(f"{path} is not a readable ONNX encoder: {error}") from error
    data = read_single_file_graph(path)  # external data: refused here, not first at caption time
    refuse_non_finite(path, data)  # inf/NaN weights (e.g. from a --weights file): refused too
    del data
    props = {prop.key: prop.value for prop in model.metadata_props}
    outputs = {output.name: output for output in model.graph.output}
    if "features" not in outputs:
        raise ModelError(
            f"encoder {path} has no output named 'features' (has {', '.join(outputs)})"
        )
    dims = outputs["features"].type.tensor_type.shape.dim
    if len(dims) != 2 or not dims[1].dim_value:
        raise ModelError(f"encoder {path}: output 'features' must be [N, F] with a fixed F")
    size = int(dims[1].dim_value)
    preprocessing = dict(PREPROCESSING)
    if "capgen.encoder.preprocessing" in props:
        try:
            preprocessing = json.loads(props["capgen.encoder.preprocessing"])
        except (ValueError, RecursionError) as error:
            raise ModelError(
                f"encoder {path}: its capgen.encoder.preprocessing metadata is not JSON"
            ) from error
        if not isinstance(preprocessing, dict):
            raise ModelError(
                f"encoder {path}: its capgen.encoder.preprocessing metadata is not a JSON object"
            )
    preprocessing = _check_image_input(
        model, path, preprocessing, recorded="capgen.encoder.preprocessing" in props
    )
    recorded_kind = props.get("capgen.encoder.kind")
    chosen_kind = recorded_kind or kind or ("xception" if size == 2048 else "custom")
    return EncoderInfo(path=path, kind=chosen_kind, feature_size=size, preprocessing=preprocessing)


def _check_image_input(
    model: Any, path: Path, preprocessing: dict[str, Any], recorded: bool
) -> dict[str, Any]:
    """The runtime feeds one uint8 `image` [N, H, W, 3]; refuse at conversion what it could not run.

    A custom encoder with a fixed input size and no capgen metadata gets that
    size in the manifest (not Xception's 299); recorded metadata must agree with it.
    """
    import onnx

    constants = {initializer.name for initializer in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in constants]
    names = [value.name for value in inputs]
    contract = "the runtime feeds uint8 pixels [N, H, W, 3] named 'image', scaling inside the graph (docs/design.md)"
    if names != ["image"]:
        raise ModelError(f"encoder {path} has inputs {names}; {contract}")
    tensor = inputs[0].type.tensor_type
    dims = [dim.dim_value for dim in tensor.shape.dim]
    if tensor.elem_type != onnx.TensorProto.UINT8 or len(dims) != 4 or dims[3] not in (0, 3):
        element = onnx.TensorProto.DataType.Name(tensor.elem_type)
        raise ModelError(
            f"encoder {path}: input 'image' is {element} of rank {len(dims)}; {contract}"
        )
    height, width = dims[1], dims[2]
    if not (height and width):
        return preprocessing
    if not recorded:
        return {**preprocessing, "height": height, "width": width}
    if (preprocessing.get("height"), preprocessing.get("width")) != (height, width):
        raise ModelError(
            f"encoder {path}: its metadata says {preprocessing.get('height')}x{preprocessing.get('width')} "
            f"pixels but its input 'image' is fixed at {height}x{width}"
        )
    return preprocessing


# Pillow's filters (PIL.Image.Resampling), as --resize-filter and the manifest name them.
RESIZE_FILTERS = ("nearest", "box", "bilinear", "hamming", "bicubic", "lanczos")


def resize_filter_name(name: str) -> str:
    """The manifest's spelling (NEAREST, ...) of a --resize-filter choice, or a one-line InputError."""
    if name.lower() not in RESIZE_FILTERS:
        raise InputError(f"--resize-filter {name!r} is not one of {', '.join(RESIZE_FILTERS)}")
    return name.upper()


def with_resize_filter(encoder: EncoderInfo, resize_filter: str) -> EncoderInfo:
    """`encoder` whose manifest entry tells the runtime to resize with `resize_filter`."""
    preprocessing = {**encoder.preprocessing, "resize_filter": resize_filter_name(resize_filter)}
    return dataclasses.replace(encoder, preprocessing=preprocessing)


def check_encoder_fits(encoder: EncoderInfo, feature_size: int) -> None:
    if encoder.feature_size != feature_size:
        raise ModelError(
            f"encoder {encoder.kind!r} ({encoder.path.name}) outputs {encoder.feature_size} features "
            f"but the decoder's photo input takes {feature_size}; choose the encoder the model was "
            "trained with (--encoder KIND, see capgen convert encoder --help, or PATH to an encoder ONNX)"
        )


def converted_with() -> dict[str, str]:
    """Versions of what converted the folder (installed distributions; nothing is imported)."""
    versions = {"python": platform.python_version(), "recipe": CONVERTER_RECIPE}
    for key, distributions in _VERSIONED_PACKAGES.items():
        for distribution in distributions:
            try:
                versions[key] = metadata.version(distribution)
                break
            except metadata.PackageNotFoundError:
                continue
    return versions


def prepare_target(out_dir: Path, force: bool) -> set[str]:
    """Refuse to overwrite a folder unless --force, and never one holding anything capgen did not write.

    Returns the names --force may delete (empty when there is nothing to
    replace). A name counts as capgen's only when it is one capgen writes
    (STANDARD_FILES), is a regular file (not a link, not a folder), and its
    bytes match the sha256 the folder's manifest records (the manifest itself
    must load as capgen's). A manifest is a claim, not proof: one listing
    `NOTES.md` and `photos/` made --force delete them.
    """
    if out_dir.is_symlink():
        raise InputError(
            f"output {out_dir} is a link; capgen writes a model folder only in its place"
        )
    if not out_dir.exists():
        return set()
    if not out_dir.is_dir():
        raise InputError(f"output {out_dir} exists and is not a folder")
    entries = sorted(out_dir.iterdir())
    if not entries:
        return set()
    if not force:
        raise InputError(f"output folder {out_dir} already exists; pass --force to replace it")
    try:
        if not stat.S_ISREG((out_dir / MANIFEST_FILE).lstat().st_mode):
            raise ModelError("not a regular file")
        manifest = load_manifest(out_dir)
    except (OSError, ModelError):
        raise InputError(
            f"refusing to replace {out_dir}: it is not empty and not a capgen model folder"
        ) from None
    strangers = [
        (entry.name, why)
        for entry in entries
        if (why := _why_not_capgens(entry, manifest)) is not None
    ]
    if strangers:
        # e.g. the user kept model_9.h5 in the folder it was converted to: --force would delete it.
        names = [name for name, _ in strangers]
        raise InputError(
            f"refusing to replace {out_dir}: it also holds {', '.join(names[:3])}"
            f"{' …' if len(names) > 3 else ''}, which capgen did not write "
            f"({names[0]}: {strangers[0][1]}); move them out first"
        )
    return {entry.name for entry in entries}


def _why_not_capgens(entry: Path, manifest: Manifest) -> str | None:
    """None if `entry` is a file capgen wrote into this model folder, else why not (a few words)."""
    try:
        info = entry.lstat()
    except OSError as error:
        return f"unreadable: {error.strerror or error}"
    if stat.S_ISLNK(info.st_mode):
        return "a link"
    if stat.S_ISDIR(info.st_mode):
        return "a folder"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if entry.name not in STANDARD_FILES:
        return "not a file capgen writes"
    if entry.name == MANIFEST_FILE:
        return None  # loaded above as a capgen manifest
    record = manifest.files.get(entry.name)
    if record is None:
        return "not in the manifest"
    if info.st_size != record.bytes or sha256_file(entry) != record.sha256:
        return "changed since capgen wrote it"
    return None


def _place_encoder(source: Path, target: Path) -> None:
    """Hard-link capgen's own cached encoder (83 MB saved per model); copy anything else.

    A user's encoder is always copied: sharing its inode would let a later
    re-save of the user's file break (or silently change) the model folder.
    Sharing the cache's entry is safe the other way round too: the cache is
    replaced, never rewritten in place (`ensure_encoder` re-checks its sha256
    and re-exports through an atomic rename), so editing the model folder's
    `encoder.onnx` can at worst make the next conversion re-export it.
    """
    cache = encoders_dir().resolve()
    if source.resolve().parent == cache:
        try:
            os.link(source, target)
            return
        except OSError:
            pass
    shutil.copyfile(source, target)


def _manifest(spec: ModelFolderSpec, encoder: EncoderInfo, staging: Path) -> Manifest:
    weights = spec.weights
    words = spec.delimiters
    sources = dict(spec.sources)
    if encoder.weights_source is not None:
        sources["encoder_weights"] = encoder.weights_source
    entry = {
        "file": ENCODER_FILE,
        "kind": encoder.kind,
        "feature_size": encoder.feature_size,
        "input": encoder.preprocessing,
    }
    return Manifest(
        folder=staging,
        name=spec.name,
        description=spec.description,
        encoder=parse_encoder_spec(entry),  # checked now, not first at caption time
        decoder=DecoderSpec(
            projection_file=PROJECTION_FILE,
            step_file=STEP_FILE,
            word_gates_file=WORD_GATES_FILE,
            units=weights.units,
            embedding_size=weights.embedding_size,
            projection_size=weights.projection_size,
            recurrent_activation=weights.recurrent_activation,
            merge=weights.merge,
            scores="log_probabilities",
            extra=dict(spec.extra_decoder),
        ),
        vocabulary=VocabularySpec(
            file=VOCABULARY_FILE,
            size=len(spec.vocabulary),
            start_token=words.start_token,
            # None: the start word is not in the vocabulary (the first input is
            # padding) / there is no end word (captions run to max_length).
            end_token=words.end_token,
            start_id=words.start_id,
            end_id=words.end_id,
            delimiters=words.manifest_evidence(),
        ),
        max_length=spec.max_length,
        files={
            **{
                name: file_record(staging / name, file_requirement(staging / name))
                for name in (ENCODER_FILE, PROJECTION_FILE, STEP_FILE, WORD_GATES_FILE)
            },
            VOCABULARY_FILE: file_record(staging / VOCABULARY_FILE),
        },
        sources=sources,
        converted_with=converted_with(),
        created=datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        format_version=FORMAT_VERSION,
        extra=dict(spec.extra_manifest),
    )


def write_model_folder(
    out_dir: Path, spec: ModelFolderSpec, encoder: EncoderInfo, force: bool = False
) -> Path:
    """Build the decoder graphs, place the encoder, write vocabulary and manifest; return out_dir."""
    out_dir = Path(out_dir)
    check_encoder_fits(encoder, spec.weights.feature_size)
    if len(spec.vocabulary) != spec.weights.vocab_size:
        raise ModelError(
            f"vocabulary has {len(spec.vocabulary)} ids but the decoder predicts "
            f"{spec.weights.vocab_size}"
        )
    replaceable = prepare_target(out_dir, force)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        prune_stale(out_dir)
        # Created exclusively under a fresh name: nothing already there is reused or deleted.
        staging = create_staging(out_dir)
    except OSError as error:
        raise InputError(
            f"cannot create the model folder {out_dir} ({error.strerror or error})"
        ) from None
    try:
        _fill_and_place(staging, out_dir, spec, encoder, replaceable)
    except (
        OSError
    ) as error:  # a full disk or a folder that vanished mid-way: nothing half-written stays
        raise InputError(
            f"cannot write the model folder {out_dir} ({error.strerror or error})"
        ) from None
    finally:
        if staging.exists():
            discard_staging(staging)
    return out_dir


def _fill_and_place(
    staging: Path,
    out_dir: Path,
    spec: ModelFolderSpec,
    encoder: EncoderInfo,
    replaceable: set[str],
) -> None:
    """Write every file into `staging`, then swap it in for `out_dir` (deleting only `replaceable`)."""
    import onnx

    _place_encoder(encoder.path, staging / ENCODER_FILE)
    onnx.save(build_projection_graph(spec.weights), str(staging / PROJECTION_FILE))
    words = spec.delimiters
    meta = step_metadata(spec.vocabulary, words.start_token, words.end_token, spec.max_length)
    zero_padding_row = words.start_id is None
    step = build_step_graph(spec.weights, meta, zero_padding_row=zero_padding_row)
    onnx.save(step, str(staging / STEP_FILE))
    # The table's factors, for `capgen export web` (the Python runtime reads the table).
    gates = build_word_gates_graph(spec.weights, zero_padding_row=zero_padding_row)
    onnx.save(gates, str(staging / WORD_GATES_FILE))
    (staging / VOCABULARY_FILE).write_text(
        json.dumps(spec.vocabulary, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    write_manifest(_manifest(spec, encoder, staging))
    swap_in(staging, out_dir, replaceable=replaceable)

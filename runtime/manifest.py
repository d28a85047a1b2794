"""The model folder contract: its file names and its manifest.json, read and written here only.

A model folder (docs/design.md) is the converter's output and the runtime's
input. This module is the one definition both sides use: the standard file
names, a typed `Manifest` that is parsed from manifest.json (validated field
by field; every failure names the field) and dumped back to exactly the bytes
the converter writes (indent 2, UTF-8 without escapes, a trailing newline,
keys in the order below), and the one way to add an optional file (INT8
encoder, fast decoder step, word gates) to a converted folder. Keys capgen does not know
are kept and written back, after the known ones of their section.

The checks on the files themselves (sizes, sha256s, Git LFS pointers, links
out of the folder, the onnxruntime a graph needs) are runtime/integrity.py's;
they are re-exported here for the modules that import them from this one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capgen.runtime.atomic_write import atomic_write_bytes
from capgen.runtime.errors import GitLfsPointerError, ModelError
from capgen.runtime.git_lfs import is_pointer

# The file checks are integrity.py's; those not used here are re-exported for old importers.
from capgen.runtime.integrity import (
    check_file_name,
    check_onnxruntime,  # noqa: F401
    file_in_folder,
    installed_onnxruntime,  # noqa: F401
    onnxruntime_shortfall,  # noqa: F401
    refuse_non_folder,
    verify_file,  # noqa: F401
    verify_files,  # noqa: F401
)
from capgen.runtime.limits import (
    MAX_CAPTION_LENGTH,
    MAX_FEATURE_SIZE,
    MAX_INPUT_SIDE,
    MAX_UNITS,
    MAX_VOCABULARY_SIZE,
)
from capgen.runtime.manifest_fields import (
    NOT_A_KEY,
    bounded,
    nullable,
    optional,
    optional_str,
    required,
    requirement,
    unknown_keys,
    without_none,
)

FORMAT_NAME = "capgen-model"
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (FORMAT_VERSION,)

# The standard files of a model folder.
MANIFEST_FILE = "manifest.json"
ENCODER_FILE = "encoder.onnx"
PROJECTION_FILE = "photo_projection.onnx"
STEP_FILE = "decoder_step.onnx"
VOCABULARY_FILE = "vocabulary.json"
INT8_ENCODER_FILE = "encoder.int8.onnx"  # added by `capgen convert quantize`
FAST_STEP_FILE = "decoder_step.int8.onnx"  # added by `capgen convert quantize`
# The step's word-gate table as its factors (embedding, kernel, bias): written by the
# converter since recipe 3, read only by `capgen export web` (the site ships these).
WORD_GATES_FILE = "word_gates.onnx"
STANDARD_FILES = (
    MANIFEST_FILE,
    ENCODER_FILE,
    PROJECTION_FILE,
    STEP_FILE,
    VOCABULARY_FILE,
    INT8_ENCODER_FILE,
    FAST_STEP_FILE,
    WORD_GATES_FILE,
)


@dataclass(frozen=True)
class EncoderSpec:
    file: str
    int8_file: str | None
    kind: str
    feature_size: int
    height: int = field(metadata=NOT_A_KEY)
    width: int = field(metadata=NOT_A_KEY)
    resize_filter: str = field(metadata=NOT_A_KEY)
    # The whole `input` object as written (the encoder's recorded preprocessing);
    # height, width and resize_filter above are its checked, typed part.
    input: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict, metadata=NOT_A_KEY)


@dataclass(frozen=True)
class DecoderSpec:
    projection_file: str
    step_file: str
    units: int
    projection_size: int
    # Optional fast step (INT8 output layer, exact rescoring of the best words);
    # used only when asked for (Captioner(fast_decoder=True)).
    int8_step_file: str | None = None
    # Optional: the factors of step_file's word-gate table (a graph word -> x_gates);
    # the Python runtime never reads it, `capgen export web` ships it instead of the table.
    word_gates_file: str | None = None
    # Descriptive: what the converter found (shown by `capgen info`).
    embedding_size: int | None = None
    recurrent_activation: str | None = None
    merge: str | None = None
    scores: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, metadata=NOT_A_KEY)


@dataclass(frozen=True)
class VocabularySpec:
    """`start_id` None: the start word is not in the vocabulary, so the first input is
    padding; `end_token`/`end_id` None: the model has no end word (captions run to max_length)."""

    file: str
    size: int
    start_token: str
    end_token: str | None
    start_id: int | None
    end_id: int | None
    # How the words were chosen: chosen_by, documents, start_documents, end_documents.
    delimiters: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, metadata=NOT_A_KEY)


@dataclass(frozen=True)
class FileRecord:
    sha256: str
    bytes: int
    # The onnxruntime versions that load this file (">=1.20"); None: not recorded
    # (folders converted before capgen recorded it, and files that are not graphs).
    onnxruntime: str | None = None


@dataclass(frozen=True)
class Manifest:
    folder: Path = field(metadata=NOT_A_KEY)
    name: str
    description: str
    encoder: EncoderSpec
    decoder: DecoderSpec
    vocabulary: VocabularySpec
    max_length: int
    files: Mapping[str, FileRecord]
    # Where the folder came from: {role: {"name", "sha256"}} and {package: version}.
    sources: Mapping[str, Any] = field(default_factory=dict)
    converted_with: Mapping[str, Any] = field(default_factory=dict)
    created: str | None = None
    format_version: int = FORMAT_VERSION
    extra: Mapping[str, Any] = field(default_factory=dict, metadata=NOT_A_KEY)

    def path(self, name: str) -> Path:
        """Where the folder's file `name` is; refuses a link that leads out of the folder."""
        return file_in_folder(self.folder, name)


def parse_encoder_spec(enc: dict[str, Any]) -> EncoderSpec:
    """The manifest's `encoder` section, checked (the converter builds its entry with this too)."""
    enc_input = required(enc, "input", dict, "encoder.")
    return EncoderSpec(
        file=required(enc, "file", str, "encoder."),
        int8_file=optional_str(enc, "int8_file", "encoder."),
        kind=str(enc.get("kind", "xception")),
        feature_size=bounded(
            required(enc, "feature_size", int, "encoder."), MAX_FEATURE_SIZE, "encoder.feature_size"
        ),
        height=bounded(
            required(enc_input, "height", int, "encoder.input."),
            MAX_INPUT_SIDE,
            "encoder.input.height",
        ),
        width=bounded(
            required(enc_input, "width", int, "encoder.input."),
            MAX_INPUT_SIDE,
            "encoder.input.width",
        ),
        resize_filter=required(enc_input, "resize_filter", str, "encoder.input."),
        input=dict(enc_input),
        extra=unknown_keys(enc, EncoderSpec),
    )


def _parse_decoder(dec: dict[str, Any]) -> DecoderSpec:
    return DecoderSpec(
        projection_file=required(dec, "projection_file", str, "decoder."),
        step_file=required(dec, "step_file", str, "decoder."),
        units=bounded(required(dec, "units", int, "decoder."), MAX_UNITS, "decoder.units"),
        projection_size=bounded(
            required(dec, "projection_size", int, "decoder."), MAX_UNITS, "decoder.projection_size"
        ),
        int8_step_file=optional_str(dec, "int8_step_file", "decoder."),
        word_gates_file=optional_str(dec, "word_gates_file", "decoder."),
        embedding_size=optional(dec, "embedding_size", int, "decoder."),
        recurrent_activation=optional(dec, "recurrent_activation", str, "decoder."),
        merge=optional(dec, "merge", str, "decoder."),
        scores=optional(dec, "scores", str, "decoder."),
        extra=unknown_keys(dec, DecoderSpec),
    )


def _parse_vocabulary(voc: dict[str, Any]) -> VocabularySpec:
    spec = VocabularySpec(
        file=required(voc, "file", str, "vocabulary."),
        size=bounded(
            required(voc, "size", int, "vocabulary."), MAX_VOCABULARY_SIZE, "vocabulary.size"
        ),
        start_token=required(voc, "start_token", str, "vocabulary."),
        end_token=nullable(voc, "end_token", str, "vocabulary."),
        start_id=nullable(voc, "start_id", int, "vocabulary.", positive=False),  # 0 is an id
        end_id=nullable(voc, "end_id", int, "vocabulary.", positive=False),
        delimiters=optional(voc, "delimiters", dict, "vocabulary."),
        extra=unknown_keys(voc, VocabularySpec),
    )
    if (spec.end_token is None) != (spec.end_id is None):
        raise ModelError(
            "manifest.json: vocabulary.end_token and vocabulary.end_id must both be null "
            "(no end word) or both be set"
        )
    return spec


def _parse_files(files_raw: dict[str, Any]) -> dict[str, FileRecord]:
    files: dict[str, FileRecord] = {}
    for name, record in files_raw.items():
        check_file_name(name)
        where = f"files.{name}."
        files[name] = FileRecord(
            sha256=required(record, "sha256", str, where).lower(),
            bytes=required(record, "bytes", int, where),
            onnxruntime=requirement(record, where),
        )
    return files


def parse_manifest(folder: Path, data: Any) -> Manifest:
    """The typed manifest of `folder` from its decoded JSON, or a ModelError naming the bad field."""
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise ModelError(f"{folder}: manifest.json is not a capgen model manifest")
    version = data.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise ModelError(
            f"{folder}: model format_version {version!r} is not supported by this capgen "
            f"(supports {', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))}); upgrade capgen or reconvert"
        )
    encoder = parse_encoder_spec(required(data, "encoder", dict, ""))
    decoder = _parse_decoder(required(data, "decoder", dict, ""))
    vocabulary = _parse_vocabulary(required(data, "vocabulary", dict, ""))
    files = _parse_files(required(data, "files", dict, ""))
    needed = [encoder.file, decoder.projection_file, decoder.step_file, vocabulary.file]
    if encoder.int8_file:
        needed.append(encoder.int8_file)
    if decoder.int8_step_file:
        needed.append(decoder.int8_step_file)
    if decoder.word_gates_file:
        needed.append(decoder.word_gates_file)
    unlisted = [name for name in needed if name not in files]
    if unlisted:
        raise ModelError(
            f"manifest.json: files {unlisted} are used but have no entry under 'files'"
        )
    created = data.get("created")
    return Manifest(
        folder=folder,
        name=str(data.get("name", folder.name)),
        description=str(data.get("description", "")),
        encoder=encoder,
        decoder=decoder,
        vocabulary=vocabulary,
        max_length=bounded(required(data, "max_length", int, ""), MAX_CAPTION_LENGTH, "max_length"),
        files=files,
        sources=optional(data, "sources", dict, "") or {},
        converted_with=optional(data, "converted_with", dict, "") or {},
        created=None if created is None else str(created),
        format_version=version,
        extra=unknown_keys(data, Manifest, "format"),
    )


def load_manifest(folder: Path | str) -> Manifest:
    """The parsed manifest of `folder`, or a ModelError saying what is wrong with it."""
    return parse_manifest(Path(folder), _read_json(Path(folder)))


def _read_json(folder: Path) -> Any:
    if not folder.is_dir():
        refuse_non_folder(folder)
    path = file_in_folder(folder, MANIFEST_FILE)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(
            f"{folder}: no manifest.json, so this is not a capgen model folder"
        ) from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if is_pointer(text):
        raise GitLfsPointerError(f"{path}: is a Git LFS pointer; run `git lfs pull`")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
        raise ModelError(f"{path}: not valid JSON ({exc})") from None
    return data


def _dump_encoder(spec: EncoderSpec) -> dict[str, Any]:
    # `{**input, key: value}` keeps each key where the input object had it.
    preprocessing = {
        **spec.input,
        "height": spec.height,
        "width": spec.width,
        "resize_filter": spec.resize_filter,
    }
    fields = {
        "file": spec.file,
        "kind": spec.kind,
        "feature_size": spec.feature_size,
        "input": preprocessing,
    }
    return {**fields, **spec.extra, **without_none({"int8_file": spec.int8_file})}


def _dump_decoder(spec: DecoderSpec) -> dict[str, Any]:
    fields = without_none(
        {
            "projection_file": spec.projection_file,
            "step_file": spec.step_file,
            "word_gates_file": spec.word_gates_file,
            "units": spec.units,
            "embedding_size": spec.embedding_size,
            "projection_size": spec.projection_size,
            "recurrent_activation": spec.recurrent_activation,
            "merge": spec.merge,
            "scores": spec.scores,
        }
    )
    return {**fields, **spec.extra, **without_none({"int8_step_file": spec.int8_step_file})}


def _dump_vocabulary(spec: VocabularySpec) -> dict[str, Any]:
    fields = {
        "file": spec.file,
        "size": spec.size,
        "start_token": spec.start_token,
        "end_token": spec.end_token,
        "start_id": spec.start_id,
        "end_id": spec.end_id,
        **without_none({"delimiters": spec.delimiters}),
    }
    return {**fields, **spec.extra}


def _dump_file(record: FileRecord) -> dict[str, Any]:
    fields = {"sha256": record.sha256, "bytes": record.bytes}
    return {**fields, **without_none({"onnxruntime": record.onnxruntime})}


def manifest_json(manifest: Manifest) -> dict[str, Any]:
    """The manifest as the JSON object manifest.json holds, keys in the contract's order."""
    fields = {
        "format": FORMAT_NAME,
        "format_version": manifest.format_version,
        "name": manifest.name,
        "description": manifest.description,
        "encoder": _dump_encoder(manifest.encoder),
        "decoder": _dump_decoder(manifest.decoder),
        "vocabulary": _dump_vocabulary(manifest.vocabulary),
        "max_length": manifest.max_length,
        "files": {name: _dump_file(record) for name, record in manifest.files.items()},
        "sources": dict(manifest.sources),
        "converted_with": dict(manifest.converted_with),
    }
    return {**fields, **without_none({"created": manifest.created}), **manifest.extra}


def dump_manifest(manifest: Manifest) -> bytes:
    """manifest.json's bytes: indent 2, UTF-8 without escapes, a trailing newline.

    Strict JSON: a NaN or infinity (say, from an encoder's recorded preprocessing)
    is refused rather than written as `NaN`, which other JSON readers reject.
    """
    try:
        text = json.dumps(manifest_json(manifest), indent=2, ensure_ascii=False, allow_nan=False)
    except ValueError as exc:
        raise ModelError(
            f"{manifest.folder}: the manifest would hold a NaN or infinite number ({exc})"
        ) from None
    return (text + "\n").encode("utf-8")


def write_manifest(manifest: Manifest) -> Path:
    """Replace the folder's manifest.json atomically (a crash leaves the old, valid one)."""
    target = manifest.folder / MANIFEST_FILE
    atomic_write_bytes(target, dump_manifest(manifest))
    return target


def file_record(path: Path, onnxruntime: str | None = None) -> FileRecord:
    """The sha256 and size the manifest records for the file at `path` (and what runs it)."""
    with path.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    return FileRecord(sha256=digest, bytes=path.stat().st_size, onnxruntime=onnxruntime)


def own_file_names(folder: Path) -> set[str]:
    """What a model folder may hold: the standard files and whatever a readable manifest lists."""
    try:
        listed = set(load_manifest(folder).files)
    except ModelError:
        listed = set()
    return set(STANDARD_FILES) | listed

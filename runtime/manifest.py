"""The model folder contract: its file names and its manifest.json, read and written here only.

A model folder (docs/design.md) is the converter's output and the runtime's
input. This module is the one definition both sides use: the standard file
names, a typed `Manifest` that is parsed from manifest.json (validated field
by field; every failure names the field) and dumped back to exactly the bytes
the converter writes (indent 2, UTF-8 without escapes, a trailing newline,
keys in the order below), and the one way to add an optional file (INT8
encoder, fast decoder step) to a converted folder. Keys capgen does not know
are kept and written back, after the known ones of their section.

File checks catch the classic ways a model folder breaks (a Git LFS pointer
cloned without LFS, a truncated download, an edited file, a link out of the
folder).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from stat import S_ISREG
from typing import Any

from capgen.runtime.atomic_write import atomic_write_bytes
from capgen.runtime.errors import GitLfsPointerError, ModelError, ModelIntegrityError
from capgen.runtime.git_lfs import POINTER_PREFIX, is_pointer
from capgen.runtime.home import (
    cache_enabled,
    capgen_home,
    record_stamp,
    stamp_present,
)
from capgen.runtime.limits import MAX_CAPTION_LENGTH

FORMAT_NAME = "capgen-model"
# A file record's onnxruntime field: the versions that load the file.
_REQUIREMENT = re.compile(r">=\d+\.\d+(\.\d+)?")
_VERSION_PREFIX = re.compile(r"\d+(\.\d+)*")
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
STANDARD_FILES = (
    MANIFEST_FILE,
    ENCODER_FILE,
    PROJECTION_FILE,
    STEP_FILE,
    VOCABULARY_FILE,
    INT8_ENCODER_FILE,
    FAST_STEP_FILE,
)

# Bounds on numbers that size work: a manifest saying max_length 10**9 (or an
# encoder input of 10**5 x 10**5 pixels) would hang or exhaust memory on the
# first image instead of failing at load. The tutorial's values are 32-40 and 299.
MAX_INPUT_SIDE = 4096
# The same for the sizes that shape the decoder's state and the features
# (tutorial: 256 units, 256 projection, 2048 features, 7,577 words); a manifest
# saying 10**9 units would otherwise allocate gigabytes before any graph ran.
MAX_UNITS = 1 << 14
MAX_FEATURE_SIZE = 1 << 16
MAX_VOCABULARY_SIZE = 1 << 21


@dataclass(frozen=True)
class EncoderSpec:
    file: str
    int8_file: str | None
    kind: str
    feature_size: int
    height: int
    width: int
    resize_filter: str
    # The whole `input` object as written (the encoder's recorded preprocessing);
    # height, width and resize_filter above are its checked, typed part.
    input: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DecoderSpec:
    projection_file: str
    step_file: str
    units: int
    projection_size: int
    # Optional fast step (INT8 output layer, exact rescoring of the best words);
    # used only when asked for (Captioner(fast_decoder=True)).
    int8_step_file: str | None = None
    # Descriptive: what the converter found (shown by `capgen info`).
    embedding_size: int | None = None
    recurrent_activation: str | None = None
    merge: str | None = None
    scores: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


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
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FileRecord:
    sha256: str
    bytes: int
    # The onnxruntime versions that load this file (">=1.20"); None: not recorded
    # (folders converted before capgen recorded it, and files that are not graphs).
    onnxruntime: str | None = None


@dataclass(frozen=True)
class Manifest:
    folder: Path
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
    extra: Mapping[str, Any] = field(default_factory=dict)

    def path(self, name: str) -> Path:
        """Where the folder's file `name` is; refuses a link that leads out of the folder."""
        return file_in_folder(self.folder, name)


class OptionalFile(Enum):
    """Files a converted folder can gain later, and the manifest field that names each."""

    INT8_ENCODER = "encoder.int8_file"
    FAST_STEP = "decoder.int8_step_file"


def file_in_folder(folder: Path, name: str) -> Path:
    """`folder / name`, unless it is a symlink that leaves `folder` (ModelIntegrityError).

    Following such a link would read a file the model's author chose anywhere
    on the user's machine, and size or checksum mismatches would then leak
    what it holds; the message therefore says nothing about the link's target.
    """
    path = folder / name
    if path.is_symlink():
        try:
            inside = path.resolve().is_relative_to(folder.resolve())
        except (OSError, RuntimeError):  # a looping link
            inside = False
        if not inside:
            raise ModelIntegrityError(
                f"{path}: is a symbolic link that leaves the model folder; capgen refuses it"
            )
    return path


def _field(data: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if not isinstance(data, dict) or key not in data:
        raise ModelError(f"manifest.json: missing field {where}{key}")
    value = data[key]
    # bool is an int in Python; a manifest saying `true` for a size is still wrong.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ModelError(
            f"manifest.json: field {where}{key} should be {kind.__name__}, got {value!r}"
        )
    if kind is int and data[key] <= 0 and key not in ("start_id", "end_id"):
        raise ModelError(f"manifest.json: field {where}{key} must be positive, got {value}")
    return value


def _bounded(value: int, limit: int, where: str) -> int:
    if value > limit:
        raise ModelError(
            f"manifest.json: field {where} is {value}, more than capgen's limit of {limit}"
        )
    return value


def _optional_str(data: dict[str, Any], key: str, where: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise ModelError(f"manifest.json: field {where}{key} should be str, got {value!r}")
    return value


def check_file_name(name: str) -> str:
    """A manifest's file name must be a plain, printable name of a file inside the folder.

    A NUL makes every path operation raise ValueError; `..` or a slash reaches
    outside the folder; control characters would reach the terminal in messages.
    """
    printable = name.isprintable() and name.strip() == name
    if not name or name in (".", "..") or Path(name).name != name or not printable:
        raise ModelError(
            f"manifest.json: file name {name!r} must be a plain name inside the folder"
        )
    return name


def _optional(data: dict[str, Any], key: str, kind: type, where: str) -> Any:
    """A descriptive field: absent is fine, present must have the right type."""
    if key not in data:
        return None
    return _field(data, key, kind, where)


def _extra(data: dict[str, Any], known: tuple[str, ...]) -> dict[str, Any]:
    """The keys capgen does not know, in their order: kept so a rewrite loses nothing."""
    return {key: value for key, value in data.items() if key not in known}


_ENCODER_KEYS = ("file", "kind", "feature_size", "input", "int8_file")
_DECODER_KEYS = (
    "projection_file",
    "step_file",
    "units",
    "embedding_size",
    "projection_size",
    "recurrent_activation",
    "merge",
    "scores",
    "int8_step_file",
)
_VOCABULARY_KEYS = (
    "file",
    "size",
    "start_token",
    "end_token",
    "start_id",
    "end_id",
    "delimiters",
)
_MANIFEST_KEYS = (
    "format",
    "format_version",
    "name",
    "description",
    "encoder",
    "decoder",
    "vocabulary",
    "max_length",
    "files",
    "sources",
    "converted_with",
    "created",
)


def parse_encoder_spec(enc: dict[str, Any]) -> EncoderSpec:
    """The manifest's `encoder` section, checked (the converter builds its entry with this too)."""
    enc_input = _field(enc, "input", dict, "encoder.")
    return EncoderSpec(
        file=_field(enc, "file", str, "encoder."),
        int8_file=_optional_str(enc, "int8_file", "encoder."),
        kind=str(enc.get("kind", "xception")),
        feature_size=_bounded(
            _field(enc, "feature_size", int, "encoder."), MAX_FEATURE_SIZE, "encoder.feature_size"
        ),
        height=_bounded(
            _field(enc_input, "height", int, "encoder.input."),
            MAX_INPUT_SIDE,
            "encoder.input.height",
        ),
        width=_bounded(
            _field(enc_input, "width", int, "encoder.input."), MAX_INPUT_SIDE, "encoder.input.width"
        ),
        resize_filter=_field(enc_input, "resize_filter", str, "encoder.input."),
        input=dict(enc_input),
        extra=_extra(enc, _ENCODER_KEYS),
    )


def _parse_decoder(dec: dict[str, Any]) -> DecoderSpec:
    return DecoderSpec(
        projection_file=_field(dec, "projection_file", str, "decoder."),
        step_file=_field(dec, "step_file", str, "decoder."),
        units=_bounded(_field(dec, "units", int, "decoder."), MAX_UNITS, "decoder.units"),
        projection_size=_bounded(
            _field(dec, "projection_size", int, "decoder."), MAX_UNITS, "decoder.projection_size"
        ),
        int8_step_file=_optional_str(dec, "int8_step_file", "decoder."),
        embedding_size=_optional(dec, "embedding_size", int, "decoder."),
        recurrent_activation=_optional(dec, "recurrent_activation", str, "decoder."),
        merge=_optional(dec, "merge", str, "decoder."),
        scores=_optional(dec, "scores", str, "decoder."),
        extra=_extra(dec, _DECODER_KEYS),
    )


def _nullable(data: dict[str, Any], key: str, kind: type, where: str) -> Any:
    """A field that must be present but may be null."""
    if isinstance(data, dict) and data.get(key, ...) is None:
        return None
    return _field(data, key, kind, where)


def _parse_vocabulary(voc: dict[str, Any]) -> VocabularySpec:
    spec = VocabularySpec(
        file=_field(voc, "file", str, "vocabulary."),
        size=_bounded(
            _field(voc, "size", int, "vocabulary."), MAX_VOCABULARY_SIZE, "vocabulary.size"
        ),
        start_token=_field(voc, "start_token", str, "vocabulary."),
        end_token=_nullable(voc, "end_token", str, "vocabulary."),
        start_id=_nullable(voc, "start_id", int, "vocabulary."),
        end_id=_nullable(voc, "end_id", int, "vocabulary."),
        delimiters=_optional(voc, "delimiters", dict, "vocabulary."),
        extra=_extra(voc, _VOCABULARY_KEYS),
    )
    if (spec.end_token is None) != (spec.end_id is None):
        raise ModelError(
            "manifest.json: vocabulary.end_token and vocabulary.end_id must both be null "
            "(no end word) or both be set"
        )
    return spec


def _parse_requirement(record: dict[str, Any], where: str) -> str | None:
    requirement = _optional(record, "onnxruntime", str, where)
    if requirement is not None and _REQUIREMENT.fullmatch(requirement) is None:
        raise ModelError(
            f"manifest.json: {where}onnxruntime must look like '>=1.20', got {requirement!r}"
        )
    return requirement


def _parse_files(files_raw: dict[str, Any]) -> dict[str, FileRecord]:
    files: dict[str, FileRecord] = {}
    for name, record in files_raw.items():
        check_file_name(name)
        where = f"files.{name}."
        files[name] = FileRecord(
            sha256=_field(record, "sha256", str, where).lower(),
            bytes=_field(record, "bytes", int, where),
            onnxruntime=_parse_requirement(record, where),
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
    encoder = parse_encoder_spec(_field(data, "encoder", dict, ""))
    decoder = _parse_decoder(_field(data, "decoder", dict, ""))
    vocabulary = _parse_vocabulary(_field(data, "vocabulary", dict, ""))
    files = _parse_files(_field(data, "files", dict, ""))
    needed = [encoder.file, decoder.projection_file, decoder.step_file, vocabulary.file]
    if encoder.int8_file:
        needed.append(encoder.int8_file)
    if decoder.int8_step_file:
        needed.append(decoder.int8_step_file)
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
        max_length=_bounded(_field(data, "max_length", int, ""), MAX_CAPTION_LENGTH, "max_length"),
        files=files,
        sources=_optional(data, "sources", dict, "") or {},
        converted_with=_optional(data, "converted_with", dict, "") or {},
        created=None if created is None else str(created),
        format_version=version,
        extra=_extra(data, _MANIFEST_KEYS),
    )


def load_manifest(folder: Path | str) -> Manifest:
    """The parsed manifest of `folder`, or a ModelError saying what is wrong with it."""
    return parse_manifest(Path(folder), _read_json(Path(folder)))


def _refuse_non_folder(path: Path) -> None:
    """A file where a model folder belongs: say what it is and what to do, not just "not found"."""
    convert = (
        "convert the Keras model into a folder first: capgen convert model MODEL TOKENIZER -o DIR"
    )
    if not path.is_file():
        raise ModelError(f"{path}: model folder not found (or not a folder)")
    try:
        with path.open("rb") as handle:
            head = handle.read(len(POINTER_PREFIX))
    except OSError:
        head = b""
    if is_pointer(head):
        raise GitLfsPointerError(
            f"{path}: is a Git LFS pointer, not a model (fetch the real file with `git lfs pull`); "
            f"then {convert}"
        )
    raise ModelError(f"{path}: is a file, not a capgen model folder; {convert}")


def _read_json(folder: Path) -> Any:
    if not folder.is_dir():
        _refuse_non_folder(folder)
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


def _without_none(entries: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in entries.items() if value is not None}


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
    return {**fields, **spec.extra, **_without_none({"int8_file": spec.int8_file})}


def _dump_decoder(spec: DecoderSpec) -> dict[str, Any]:
    fields = _without_none(
        {
            "projection_file": spec.projection_file,
            "step_file": spec.step_file,
            "units": spec.units,
            "embedding_size": spec.embedding_size,
            "projection_size": spec.projection_size,
            "recurrent_activation": spec.recurrent_activation,
            "merge": spec.merge,
            "scores": spec.scores,
        }
    )
    return {**fields, **spec.extra, **_without_none({"int8_step_file": spec.int8_step_file})}


def _dump_vocabulary(spec: VocabularySpec) -> dict[str, Any]:
    fields = {
        "file": spec.file,
        "size": spec.size,
        "start_token": spec.start_token,
        "end_token": spec.end_token,
        "start_id": spec.start_id,
        "end_id": spec.end_id,
        **_without_none({"delimiters": spec.delimiters}),
    }
    return {**fields, **spec.extra}


def _dump_file(record: FileRecord) -> dict[str, Any]:
    fields = {"sha256": record.sha256, "bytes": record.bytes}
    return {**fields, **_without_none({"onnxruntime": record.onnxruntime})}


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
    return {**fields, **_without_none({"created": manifest.created}), **manifest.extra}


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


def with_optional_file(
    manifest: Manifest, role: OptionalFile, name: str, onnxruntime: str | None = None
) -> Manifest:
    """`manifest` naming `name` (already in the folder) as its INT8 encoder or fast step."""
    check_file_name(name)
    files = {**manifest.files, name: file_record(manifest.path(name), onnxruntime)}
    if role is OptionalFile.INT8_ENCODER:
        encoder = dataclasses.replace(manifest.encoder, int8_file=name)
        return dataclasses.replace(manifest, encoder=encoder, files=files)
    decoder = dataclasses.replace(manifest.decoder, int8_step_file=name)
    return dataclasses.replace(manifest, decoder=decoder, files=files)


def add_optional_file(
    folder: Path, role: OptionalFile, name: str, onnxruntime: str | None = None
) -> Manifest:
    """Record the folder's file `name` as its INT8 encoder or fast step, with sha256 and size."""
    manifest = with_optional_file(load_manifest(folder), role, name, onnxruntime)
    write_manifest(manifest)
    return manifest


def own_file_names(folder: Path) -> set[str]:
    """What a model folder may hold: the standard files and whatever a readable manifest lists."""
    try:
        listed = set(load_manifest(folder).files)
    except ModelError:
        listed = set()
    return set(STANDARD_FILES) | listed


# Part of every stamp's key: bumped when verify_file checks more than before (2: the
# graphs' weights are finite), so a stamp from an older check does not skip the new one.
_VERIFY_RECIPE = "2"


def _stamp_path(path: Path, record: FileRecord, size: int, mtime_ns: int) -> Path:
    key = f"{path.resolve()}\0{size}\0{mtime_ns}\0{record.sha256}\0{_VERIFY_RECIPE}".encode(
        "utf-8", "surrogateescape"
    )
    return capgen_home() / "verified" / hashlib.sha256(key).hexdigest()


def _read_head(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            return handle.read(len(POINTER_PREFIX))
    except OSError as exc:
        raise ModelIntegrityError(f"{path}: cannot read ({exc.strerror or exc})") from None


def verify_file(path: Path, record: FileRecord, use_stamps: bool = True) -> None:
    """Size always; sha256 (and finite weights in a graph) unless a stamp says this exact
    (path, size, mtime) already matched.

    Hashing the 83 MB encoder takes ~0.1 s, too much for every start of the
    CLI; the stamp makes the second start free while a missing, truncated or
    rewritten file (which changes size or mtime) is still caught.
    """
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise ModelIntegrityError(f"{path}: missing from the model folder") from None
    except OSError as exc:
        raise ModelIntegrityError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not S_ISREG(stat.st_mode):  # a folder or a FIFO in its place: opening it would fail or block
        raise ModelIntegrityError(f"{path}: is not a regular file")
    if stat.st_size != record.bytes:
        if is_pointer(_read_head(path)):
            raise GitLfsPointerError(
                f"{path}: is a Git LFS pointer, not the model file; run `git lfs pull`"
            )
        raise ModelIntegrityError(
            f"{path}: is {stat.st_size} bytes, manifest says {record.bytes} (truncated or replaced?)"
        )
    use_stamps = use_stamps and cache_enabled()
    stamp = _stamp_path(path, record, stat.st_size, stat.st_mtime_ns)
    if use_stamps and _stamped(stamp):
        return
    try:
        with path.open("rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError as exc:
        raise ModelIntegrityError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if digest != record.sha256:
        raise ModelIntegrityError(
            f"{path}: sha256 {digest[:12]}… does not match the manifest's {record.sha256[:12]}…"
        )
    if path.suffix == ".onnx":
        # A checksum only says the file is the one the manifest lists; a graph whose
        # weights are inf or NaN captions nothing. Checked once, like the sha256.
        from capgen.runtime.finite_weights import check_file_is_finite

        check_file_is_finite(path)
    if not use_stamps:
        return
    record_stamp(stamp.parent.name, stamp.name)  # never through a link; failures only warn


def _stamped(stamp: Path) -> bool:
    """A stamp counts only if this user or root wrote it, in a folder only they can change."""
    return stamp_present(stamp.parent.name, stamp.name)


def verify_files(
    manifest: Manifest, names: list[str] | None = None, use_stamps: bool = True
) -> None:
    """Check the listed files (default: all in the manifest): the onnxruntime they need first
    (one line naming the version instead of onnxruntime's own error), then size and sha256."""
    chosen = names if names is not None else list(manifest.files)
    for name in chosen:
        check_onnxruntime(manifest.path(name), manifest.files[name])
    for name in chosen:
        verify_file(manifest.path(name), manifest.files[name], use_stamps=use_stamps)


def _version_numbers(text: str) -> tuple[int, ...]:
    """(1, 22, 0) from '1.22.0', '1.24.1+openvino' or '1.20.0.dev2024'; () if none."""
    match = _VERSION_PREFIX.match(text)
    return tuple(int(part) for part in match.group(0).split(".")) if match else ()


def installed_onnxruntime() -> str:
    """The version of the onnxruntime module (whichever distribution installed it)."""
    import onnxruntime

    return str(getattr(onnxruntime, "__version__", "0"))


def onnxruntime_shortfall(record: FileRecord, installed: str) -> str | None:
    """The version `record` needs when `installed` is older, else None."""
    if record.onnxruntime is None:
        return None
    needed = record.onnxruntime.removeprefix(">=")
    if _version_numbers(installed) >= _version_numbers(needed):
        return None
    return needed


def check_onnxruntime(path: Path, record: FileRecord) -> None:
    """ModelError (exit 3) when the installed onnxruntime is older than the file needs."""
    if record.onnxruntime is None:
        return
    installed = installed_onnxruntime()
    needed = onnxruntime_shortfall(record, installed)
    if needed is not None:
        raise ModelError(
            f"{path}: needs onnxruntime >= {needed}, this is onnxruntime {installed}; "
            f"upgrade it: pip install 'onnxruntime>={needed}'"
        )

"""Read and check a model folder's manifest.json (schema in docs/design.md).

The manifest is the only thing the runtime trusts about a model folder, so it
is validated field by field and every failure names the field; file checks
catch the classic ways a model folder breaks (a Git LFS pointer cloned
without LFS, a truncated download, an edited file).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG
from typing import Any

from capgen.runtime.errors import GitLfsPointerError, ModelError, ModelIntegrityError
from capgen.runtime.home import capgen_home

SUPPORTED_FORMAT_VERSIONS = (1,)
MANIFEST_NAME = "manifest.json"
_LFS_PREFIX = b"version https://git-lfs"
# Bounds on numbers that size work: a manifest saying max_length 10**9 (or an
# encoder input of 10**5 x 10**5 pixels) would hang or exhaust memory on the
# first image instead of failing at load. The tutorial's values are 32-40 and 299.
MAX_CAPTION_LENGTH = 1000
MAX_INPUT_SIDE = 4096


@dataclass(frozen=True)
class EncoderSpec:
    file: str
    int8_file: str | None
    kind: str
    feature_size: int
    height: int
    width: int
    resize_filter: str


@dataclass(frozen=True)
class DecoderSpec:
    projection_file: str
    step_file: str
    units: int
    projection_size: int
    # Optional fast step (INT8 output layer, exact rescoring of the best words);
    # used only when asked for (Captioner(fast_decoder=True)).
    int8_step_file: str | None = None


@dataclass(frozen=True)
class VocabularySpec:
    file: str
    size: int
    start_token: str
    end_token: str
    start_id: int
    end_id: int


@dataclass(frozen=True)
class FileRecord:
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Manifest:
    folder: Path
    name: str
    description: str
    encoder: EncoderSpec
    decoder: DecoderSpec
    vocabulary: VocabularySpec
    max_length: int
    files: dict[str, FileRecord]
    raw: dict[str, Any]

    def path(self, name: str) -> Path:
        return self.folder / name


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


def _parse(folder: Path, data: Any) -> Manifest:
    if not isinstance(data, dict) or data.get("format") != "capgen-model":
        raise ModelError(f"{folder}: manifest.json is not a capgen model manifest")
    version = data.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise ModelError(
            f"{folder}: model format_version {version!r} is not supported by this capgen "
            f"(supports {', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))}); upgrade capgen or reconvert"
        )
    enc = _field(data, "encoder", dict, "")
    enc_input = _field(enc, "input", dict, "encoder.")
    dec = _field(data, "decoder", dict, "")
    voc = _field(data, "vocabulary", dict, "")
    int8_file = _optional_str(enc, "int8_file", "encoder.")
    int8_step_file = _optional_str(dec, "int8_step_file", "decoder.")
    encoder = EncoderSpec(
        file=_field(enc, "file", str, "encoder."),
        int8_file=int8_file,
        kind=str(enc.get("kind", "xception")),
        feature_size=_field(enc, "feature_size", int, "encoder."),
        height=_bounded(
            _field(enc_input, "height", int, "encoder.input."),
            MAX_INPUT_SIDE,
            "encoder.input.height",
        ),
        width=_bounded(
            _field(enc_input, "width", int, "encoder.input."), MAX_INPUT_SIDE, "encoder.input.width"
        ),
        resize_filter=_field(enc_input, "resize_filter", str, "encoder.input."),
    )
    decoder = DecoderSpec(
        projection_file=_field(dec, "projection_file", str, "decoder."),
        step_file=_field(dec, "step_file", str, "decoder."),
        units=_field(dec, "units", int, "decoder."),
        projection_size=_field(dec, "projection_size", int, "decoder."),
        int8_step_file=int8_step_file,
    )
    vocabulary = VocabularySpec(
        file=_field(voc, "file", str, "vocabulary."),
        size=_field(voc, "size", int, "vocabulary."),
        start_token=_field(voc, "start_token", str, "vocabulary."),
        end_token=_field(voc, "end_token", str, "vocabulary."),
        start_id=_field(voc, "start_id", int, "vocabulary."),
        end_id=_field(voc, "end_id", int, "vocabulary."),
    )
    files_raw = _field(data, "files", dict, "")
    files: dict[str, FileRecord] = {}
    for name, record in files_raw.items():
        if Path(name).name != name:
            raise ModelError(
                f"manifest.json: file name {name!r} must be a plain name inside the folder"
            )
        files[name] = FileRecord(
            sha256=_field(record, "sha256", str, f"files.{name}.").lower(),
            bytes=_field(record, "bytes", int, f"files.{name}."),
        )
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
    return Manifest(
        folder=folder,
        name=str(data.get("name", folder.name)),
        description=str(data.get("description", "")),
        encoder=encoder,
        decoder=decoder,
        vocabulary=vocabulary,
        max_length=_bounded(_field(data, "max_length", int, ""), MAX_CAPTION_LENGTH, "max_length"),
        files=files,
        raw=data,
    )


def load_manifest(folder: Path | str) -> Manifest:
    """The parsed manifest of `folder`, or a ModelError saying what is wrong with it."""
    return _parse(Path(folder), read_raw_manifest(folder))


def read_raw_manifest(folder: Path | str) -> Any:
    """The manifest's JSON as written; the converter extends it with this, the runtime parses it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"{folder}: model folder not found (or not a folder)")
    path = folder / MANIFEST_NAME
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(
            f"{folder}: no manifest.json, so this is not a capgen model folder"
        ) from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if text.startswith(_LFS_PREFIX):
        raise GitLfsPointerError(f"{path}: is a Git LFS pointer; run `git lfs pull`")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
        raise ModelError(f"{path}: not valid JSON ({exc})") from None
    return data


def _stamp_path(path: Path, record: FileRecord, size: int, mtime_ns: int) -> Path:
    key = f"{path.resolve()}\0{size}\0{mtime_ns}\0{record.sha256}".encode(
        "utf-8", "surrogateescape"
    )
    return capgen_home() / "verified" / hashlib.sha256(key).hexdigest()


def _read_head(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            return handle.read(len(_LFS_PREFIX))
    except OSError as exc:
        raise ModelIntegrityError(f"{path}: cannot read ({exc.strerror or exc})") from None


def verify_file(path: Path, record: FileRecord, use_stamps: bool = True) -> None:
    """Size always; sha256 unless a stamp says this exact (path, size, mtime) already matched.

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
        if _read_head(path) == _LFS_PREFIX:
            raise GitLfsPointerError(
                f"{path}: is a Git LFS pointer, not the model file; run `git lfs pull`"
            )
        raise ModelIntegrityError(
            f"{path}: is {stat.st_size} bytes, manifest says {record.bytes} (truncated or replaced?)"
        )
    stamp = _stamp_path(path, record, stat.st_size, stat.st_mtime_ns)
    if use_stamps and stamp.exists():
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
    try:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.touch()
    except OSError:
        pass  # a read-only cache only costs a re-hash next time


def verify_files(
    manifest: Manifest, names: list[str] | None = None, use_stamps: bool = True
) -> None:
    """Check the listed files (default: all in the manifest) against size and sha256."""
    for name in names if names is not None else list(manifest.files):
        verify_file(manifest.path(name), manifest.files[name], use_stamps=use_stamps)

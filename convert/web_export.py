"""`capgen export web`: a static site folder that captions images in the browser.

The site is one flat folder that any static host serves: the page
(`index.html`, `page.mjs`), the JS module (web/*.mjs: Pillow's resampler,
the search, the loader), onnxruntime-web's WASM files, and the model files
the page runs, copied from the model folder and verified against its
manifest while they are copied (the bytes written are the bytes hashed).
Flat, so that the model's own `manifest.json` and file names are served
beside the page and the page loads the model from `./`.

A model folder with word gates (`decoder.word_gates_file`, written by the
converter since recipe 3) ships its exact step split (convert/web_step.py)
when the table's factors are smaller than the table (`ships_word_gates`):
`decoder_step.web.onnx` without the word-gate table and `word_gates.bin`
with the table's factors and exceptions, 21 MB less for the default model.
The site's manifest.json is then the model's plus a `web` section naming
and laying out those two files, and `files` records of both (sha256, size);
`decoder.step_file` and `decoder.word_gates_file` still name the model
folder's files, which the site does not ship. The split needs the `onnx`
package (a one-line error names the extra when it is missing); a folder
without word gates ships its step graph and manifest as they are.

`_headers` asks Netlify/Cloudflare-style hosts for the COOP/COEP headers
that let onnxruntime-web use threads; `HOSTING.txt` says what to set on
other hosts. `capgen-site.json` records every file's sha256: it is how a
later export knows a folder is one it wrote, the only kind it replaces
(and only with `force`); anything else in a non-empty folder is refused.
The folder is assembled in a marked staging folder beside it and swapped
in whole (runtime/staging.py), every file created exclusively, no link
followed. Nothing printed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from capgen.convert.stack import require
from capgen.convert.web_step import SITE_STEP_FILE, WORD_GATES_DATA_FILE
from capgen.runtime.atomic_write import default_mode
from capgen.runtime.captioner import resolve_model_dir
from capgen.runtime.errors import InputError, ModelError
from capgen.runtime.manifest import (
    MANIFEST_FILE,
    FileRecord,
    Manifest,
    dump_manifest,
    load_manifest,
)
from capgen.runtime.staging import create_staging, discard_staging, prune_stale, swap_in

SITE_RECORD = "capgen-site.json"
SITE_FORMAT = "capgen-web-site"
# From web/: the module, and the page that uses it.
MODULE_FILES = ("capgen.mjs", "resample.mjs", "search.mjs")
PAGE_FILES = ("index.html", "page.mjs")
# From onnxruntime-web's dist folder: the WASM build only (no WebGPU/WebGL), ~14 MB, ~3.7 MB gzipped.
ORT_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
HEADERS_FILE = "_headers"
HOSTING_FILE = "HOSTING.txt"
# Every file the site holds besides the model's.
SITE_OWN_FILES = frozenset(
    (*MODULE_FILES, *PAGE_FILES, *ORT_FILES, HEADERS_FILE, HOSTING_FILE, SITE_RECORD)
)
ONNX_EXTRA = "pip install 'capgen[convert-decoder]'"

# Cross-origin isolation (COOP + COEP) is what makes SharedArrayBuffer, and so
# onnxruntime-web's threads, available; without it the page runs single-threaded.
HEADERS = """\
/*
  Cross-Origin-Opener-Policy: same-origin
  Cross-Origin-Embedder-Policy: require-corp
  Cross-Origin-Resource-Policy: same-origin
  X-Content-Type-Options: nosniff
/*.wasm
  Content-Type: application/wasm
/*.mjs
  Content-Type: text/javascript
"""

HOSTING = """\
A capgen web site: static files, no server-side code.

Serve this folder over https (or from localhost): the page checks every model
file's sha256 with crypto.subtle, which browsers offer only in secure contexts.

For threads (about twice as fast), every response needs these two headers:

  Cross-Origin-Opener-Policy: same-origin
  Cross-Origin-Embedder-Policy: require-corp

Netlify and Cloudflare Pages read them from _headers (included). Elsewhere:

  nginx:   add_header Cross-Origin-Opener-Policy same-origin always;
           add_header Cross-Origin-Embedder-Policy require-corp always;
  Apache:  Header always set Cross-Origin-Opener-Policy "same-origin"
           Header always set Cross-Origin-Embedder-Policy "require-corp"
  GitHub Pages sets no custom headers: the page then runs single-threaded.

.wasm files must be served as application/wasm and .mjs as text/javascript.
See docs/web.md in the capgen repository.
"""

_CHUNK = 1 << 20
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


@dataclass(frozen=True)
class WebSite:
    """What `export_web` wrote: the folder, the model it runs, every file's size."""

    folder: Path
    model: str
    int8: bool
    files: dict[str, int] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(self.files.values())

    @property
    def model_bytes(self) -> int:
        """What a first visit downloads for the model (the page caches it after that)."""
        return sum(size for name, size in self.files.items() if name not in SITE_OWN_FILES)


def checkout_web_dir() -> Path:
    """web/ of the capgen checkout this module runs from (a wheel has none)."""
    return Path(__file__).resolve().parents[1] / "web"  # convert/ and web/ are siblings


def default_ort_dir() -> Path:
    """onnxruntime-web's dist folder as `make web` (npm ci in web/) installs it."""
    return checkout_web_dir() / "node_modules" / "onnxruntime-web" / "dist"


def model_files(manifest: Manifest, int8: bool) -> list[str]:
    """The model folder's files the page runs: encoder (FP32 or INT8), projection, exact step, vocabulary.

    With word gates the site ships the step split instead of the step (`site_model_files`).
    """
    encoder = manifest.encoder.file
    if int8:
        if manifest.encoder.int8_file is None:
            raise ModelError(
                f"{manifest.folder}: this model has no INT8 encoder (manifest lists no "
                "encoder.int8_file); make one with capgen convert quantize, or leave out --int8"
            )
        encoder = manifest.encoder.int8_file
    return [
        encoder,
        manifest.decoder.projection_file,
        manifest.decoder.step_file,
        manifest.vocabulary.file,
    ]


def ships_word_gates(manifest: Manifest, word_gates: bool | None = None) -> bool:
    """Whether the site ships the step split (table-less step + word_gates.bin) instead of the step.

    Only a folder with word gates can; `word_gates` None: when the factors are
    smaller than the table they replace (the default model: 8.5 MB for 30 MB;
    not a small vocabulary's, such as the shapes model's 41 words).
    """
    name = manifest.decoder.word_gates_file
    if name is None or word_gates is False:
        return False
    if word_gates:
        return True
    table_bytes = manifest.vocabulary.size * 4 * manifest.decoder.units * 4
    record = manifest.files.get(name)
    return record is not None and record.bytes < table_bytes


def site_model_files(manifest: Manifest, int8: bool, split: bool = False) -> list[str]:
    """The model files the site holds: `model_files`, with the step split when `split`."""
    names = model_files(manifest, int8)
    if not split:
        return names
    step = names.index(manifest.decoder.step_file)
    return [*names[:step], SITE_STEP_FILE, WORD_GATES_DATA_FILE, *names[step + 1 :]]


def _missing(folder: Path, names: Iterable[str]) -> list[str]:
    return [name for name in names if not (folder / name).is_file()]


def _check_sources(web_dir: Path, ort_dir: Path) -> None:
    missing = _missing(web_dir, MODULE_FILES) + _missing(web_dir / "page", PAGE_FILES)
    if missing:
        raise InputError(
            f"the capgen web module is not in {web_dir} (missing {missing[0]}): "
            "capgen export web runs from a capgen checkout"
        )
    missing = _missing(ort_dir, ORT_FILES)
    if missing:
        raise InputError(
            f"onnxruntime-web's files are not in {ort_dir} (missing {missing[0]}); run `make web` "
            "(npm ci in web/) or pass --ort-dir FOLDER holding onnxruntime-web's dist files"
        )


def _sha256_of(path: Path) -> str | None:
    """The sha256 of a regular file (not through a link), None for anything else."""
    try:
        descriptor = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
    except OSError:
        return None
    with os.fdopen(descriptor, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return None
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _prepare_target(out_dir: Path, force: bool) -> set[str]:
    """The names a replace may delete; refuse a folder holding anything this export did not write."""
    if out_dir.is_symlink():
        raise InputError(
            f"output {out_dir} is a link; capgen writes a site folder only in its place"
        )
    if not out_dir.exists():
        return set()
    if not out_dir.is_dir():
        raise InputError(f"output {out_dir} exists and is not a folder")
    entries = sorted(out_dir.iterdir())
    if not entries:
        return set()
    try:
        record = json.loads((out_dir / SITE_RECORD).read_bytes())
        if (out_dir / SITE_RECORD).is_symlink() or record.get("format") != SITE_FORMAT:
            raise ValueError("not a capgen site record")
        recorded: dict[str, str] = dict(record["files"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        raise InputError(
            f"refusing to write into {out_dir}: it is not empty and not a site capgen exported"
        ) from None
    strangers = [
        entry.name
        for entry in entries
        if entry.name != SITE_RECORD and _sha256_of(entry) != recorded.get(entry.name)
    ]
    if strangers:
        raise InputError(
            f"refusing to replace {out_dir}: it holds {', '.join(strangers[:3])}"
            f"{' …' if len(strangers) > 3 else ''}, which capgen did not write (or which changed "
            "since); move them out first"
        )
    if not force:
        raise InputError(
            f"output folder {out_dir} already holds a site; pass --force to replace it"
        )
    return {entry.name for entry in entries}


def _create(folder: Path, name: str) -> BinaryIO:
    """A new file `folder/name`, created exclusively and never through a link."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
    return os.fdopen(os.open(folder / name, flags, default_mode()), "wb")


def _copy(source: Path, folder: Path, name: str, expected: FileRecord | None = None) -> str:
    """Copy `source` to a new file `folder/name` (created exclusively); return the sha256 written.

    `expected`: the manifest's record; the copy is refused unless the bytes
    read (and written) match, so a file changed after the manifest never ships.
    """
    digest = hashlib.sha256()
    size = 0
    with open(source, "rb") as reader, _create(folder, name) as writer:
        while chunk := reader.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            writer.write(chunk)
        writer.flush()
        os.fsync(writer.fileno())
    got = digest.hexdigest()
    if expected is not None:
        _check_against_manifest(source, expected, (got, size))
    return got


def _check_against_manifest(path: Path, expected: FileRecord, got: tuple[str, int]) -> None:
    """Refuse bytes (their sha256, size) that are not what the model's manifest records."""
    if got != (expected.sha256, expected.bytes):
        raise ModelError(
            f"{path}: does not match the sha256 and size in the model's manifest.json "
            "(damaged or altered file); rebuild or re-download the model"
        )


def _write(folder: Path, name: str, data: bytes) -> str:
    with _create(folder, name) as writer:
        writer.write(data)
        writer.flush()
        os.fsync(writer.fileno())
    return hashlib.sha256(data).hexdigest()


def export_web(
    out_dir: str | Path,
    model: str | Path | None = None,
    int8: bool = False,
    ort_dir: str | Path | None = None,
    force: bool = False,
    web_dir: str | Path | None = None,
    word_gates: bool | None = None,
) -> WebSite:
    """Write the static site for `model` (a folder or installed NAME; default: capgen setup's) to `out_dir`.

    `word_gates`: ship the step split (True), the step as it is (False), or the smaller (None).
    """
    out_dir = Path(out_dir)
    web = Path(web_dir) if web_dir is not None else checkout_web_dir()
    ort = Path(ort_dir) if ort_dir is not None else default_ort_dir()
    model_dir, _ = resolve_model_dir(None if model is None else str(model))
    manifest = load_manifest(model_dir)
    split = ships_word_gates(manifest, word_gates)
    names = site_model_files(manifest, int8, split)
    _check_sources(web, ort)
    if split:
        require(("onnx",), "capgen export web needs onnx to split the decoder step", ONNX_EXTRA)
    clashes = sorted(SITE_OWN_FILES.intersection(names))
    if clashes:
        raise ModelError(
            f"{model_dir}: the model's file {clashes[0]!r} would clash with the site's own"
        )
    replaceable = _prepare_target(out_dir, force)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        prune_stale(out_dir)
        staging = create_staging(out_dir)
    except OSError as error:
        raise InputError(
            f"cannot create the site folder {out_dir} ({error.strerror or error})"
        ) from None
    try:
        digests = _fill(staging, manifest, names, web, ort, split)
        record = {
            "format": SITE_FORMAT,
            "format_version": 1,
            "model": {"name": manifest.name, "int8": int8, "files": names},
            "files": digests,
        }
        _write(staging, SITE_RECORD, (json.dumps(record, indent=2) + "\n").encode())
        sizes = {name: (staging / name).stat().st_size for name in [*digests, SITE_RECORD]}
        swap_in(staging, out_dir, replaceable=replaceable)
    except OSError as error:  # a full disk, a vanished folder: nothing half-written stays
        raise InputError(
            f"cannot write the site folder {out_dir} ({error.strerror or error})"
        ) from None
    finally:
        if staging.exists():
            discard_staging(staging)
    return WebSite(folder=out_dir, model=manifest.name, int8=int8, files=sizes)


def _record(manifest: Manifest, name: str) -> FileRecord:
    record = manifest.files.get(name)
    if record is None:
        raise ModelError(f"{manifest.folder}: manifest.json lists no sha256 for {name}")
    return record


def _read_verified(manifest: Manifest, name: str) -> bytes:
    """The bytes of the model's file `name`, refused unless they match the manifest's sha256 and size."""
    with open(manifest.path(name), "rb") as reader:
        data = reader.read()
    got = (hashlib.sha256(data).hexdigest(), len(data))
    _check_against_manifest(manifest.path(name), _record(manifest, name), got)
    return data


def _write_split_step(staging: Path, manifest: Manifest) -> tuple[dict[str, str], bytes]:
    """decoder_step.web.onnx and word_gates.bin into `staging`; their digests and the site's manifest."""
    from capgen.convert.web_step import web_step

    step_name, gates_name = manifest.decoder.step_file, manifest.decoder.word_gates_file
    assert gates_name is not None
    split = web_step(
        _read_verified(manifest, step_name),
        _read_verified(manifest, gates_name),
        str(manifest.folder),
    )
    digests = {
        SITE_STEP_FILE: _write(staging, SITE_STEP_FILE, split.step),
        WORD_GATES_DATA_FILE: _write(staging, WORD_GATES_DATA_FILE, split.word_gates),
    }
    step_record = manifest.files[step_name]
    files = {
        **manifest.files,
        SITE_STEP_FILE: FileRecord(
            digests[SITE_STEP_FILE], len(split.step), step_record.onnxruntime
        ),
        WORD_GATES_DATA_FILE: FileRecord(digests[WORD_GATES_DATA_FILE], len(split.word_gates)),
    }
    site = dataclasses.replace(manifest, files=files, extra={**manifest.extra, "web": split.layout})
    return digests, dump_manifest(site)


def _fill(
    staging: Path, manifest: Manifest, names: list[str], web: Path, ort: Path, split: bool
) -> dict[str, str]:
    """Every file of the site into `staging`; name -> sha256 of what was written."""
    digests: dict[str, str] = {}
    for name in names:
        if name in (SITE_STEP_FILE, WORD_GATES_DATA_FILE):
            continue  # written by _write_split_step
        digests[name] = _copy(manifest.path(name), staging, name, _record(manifest, name))
    if split:
        written, site_manifest = _write_split_step(staging, manifest)
        digests.update(written)
        # The model's manifest plus the `web` section: what the page reads the model's fields from.
        digests[MANIFEST_FILE] = _write(staging, MANIFEST_FILE, site_manifest)
    else:
        # The manifest as it is: its bytes are what the page reads the model's fields from.
        digests[MANIFEST_FILE] = _copy(manifest.path(MANIFEST_FILE), staging, MANIFEST_FILE)
    for name in MODULE_FILES:
        digests[name] = _copy(web / name, staging, name)
    for name in PAGE_FILES:
        digests[name] = _copy(web / "page" / name, staging, name)
    for name in ORT_FILES:
        digests[name] = _copy(ort / name, staging, name)
    digests[HEADERS_FILE] = _write(staging, HEADERS_FILE, HEADERS.encode())
    digests[HOSTING_FILE] = _write(staging, HOSTING_FILE, HOSTING.encode())
    return digests

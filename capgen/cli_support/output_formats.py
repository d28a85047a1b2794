"""The file formats `capgen caption` can write besides JSON Lines: csv, tsv, coco and per-image txt.

Why these and how they stay safe:

- **jsonl** (outputs.py) is the batch format: appended as each image
  finishes, so a killed run keeps its captions and `--resume` continues it.
- **csv** / **tsv** (a `path,caption` header row, then one row per captioned
  image; written with the csv module, so any path or caption round-trips
  through `csv.reader`) and **coco** (`[{"image_id": ..., "caption": ...}]`,
  the results file COCO caption evaluation reads) are whole files: rows go to
  a temporary file created exclusively beside the target, and when the run
  ends (normally, on a failure or on Ctrl-C) that file is moved into place in
  one rename. A reader never sees half a file, and what finished is kept.
- **txt** writes one `<stem>.txt` per image (in `--output-dir DIR`, or beside
  the image), each created exclusively: an existing file is never replaced.

capgen replaces an existing csv/tsv/coco file only when it has, byte for
byte, the layout capgen writes (its header row, quoting and line endings;
for coco, its one-record-per-line JSON): parsed and written again, it must
give the same bytes. Anything else, a link, a folder or an input image is
refused untouched. Failed images appear on stderr (and as error records in
jsonl) but not in these files: they hold captions only.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import IO, Any, Protocol

from capgen.cli_support.outputs import InputFiles, _read_existing, _reason, open_output
from capgen.runtime.atomic_write import default_mode
from capgen.runtime.errors import InputError


class OutputFormat(StrEnum):
    """What `--format` accepts."""

    TXT = "txt"
    TSV = "tsv"
    CSV = "csv"
    JSONL = "jsonl"
    COCO = "coco"


# The formats an --output extension stands for; the first is the default. `.json`
# stays JSON Lines (what every --output was before --format existed) and also
# allows coco, whose results files are conventionally `.json`. `.txt` is one file
# in the tsv layout (`path<TAB>caption` header, then a line per image). Any other
# extension (or none) defaults to jsonl and accepts every explicit --format.
EXTENSION_FORMATS: dict[str, tuple[OutputFormat, ...]] = {
    ".jsonl": (OutputFormat.JSONL,),
    ".json": (OutputFormat.JSONL, OutputFormat.COCO),
    ".csv": (OutputFormat.CSV,),
    ".tsv": (OutputFormat.TSV,),
    ".txt": (OutputFormat.TXT, OutputFormat.TSV),
}
TABLE_HEADER = ["path", "caption"]
_STANDARD_INPUT = "-"


class CaptionFileRefused(InputError):
    """One image's caption file could not be written: that image fails, the batch goes on."""


class OutputWriter(Protocol):
    """What CaptionSinks writes records to: JsonlWriter, WholeFileWriter or CaptionFiles."""

    def write(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


# Choosing the format ---------------------------------------------------------


def parse_format(text: str | None) -> OutputFormat | None:
    """--format's value, case-insensitive; a name capgen does not write is a usage error."""
    if text is None:
        return None
    try:
        return OutputFormat(text.strip().lower())
    except ValueError:
        names = ", ".join(f.value for f in OutputFormat)
        raise InputError(
            f"--format {text!r}: not a format capgen writes; choose one of {names}"
        ) from None


def choose_format(
    explicit: OutputFormat | None, output: Path | None, output_dir: Path | None
) -> OutputFormat | None:
    """The format --output / --output-dir are written in (None: no file output at all).

    Checked before the model loads, so a contradictory command changes
    nothing: an explicit --format must fit the --output extension, because a
    `.csv` file holding JSON (or COCO) would mislead every tool that opens it.
    """
    if output is not None and output_dir is not None:
        raise InputError(
            "give --output FILE (one file) or --output-dir DIR (one txt file per image), not both"
        )
    if output_dir is not None:
        if explicit not in (None, OutputFormat.TXT):
            raise InputError(
                f"--output-dir is for --format txt (one caption file per image); "
                f"--format {explicit.value} writes one file: give --output FILE"
            )
        return OutputFormat.TXT
    if output is None:
        if explicit in (None, OutputFormat.TXT):
            return explicit  # txt alone: a caption file beside each image
        raise InputError(
            f"--format {explicit.value} needs --output FILE (standard output is "
            "path<TAB>caption lines, or JSON Lines with --json)"
        )
    suffix = output.suffix.lower()
    allowed = EXTENSION_FORMATS.get(suffix)
    if explicit is None:
        return allowed[0] if allowed else OutputFormat.JSONL
    if allowed is not None and explicit not in allowed:
        names = " or ".join(f.value for f in allowed)
        raise InputError(
            f"--output {output} ends in {suffix}, which is {names}, not --format {explicit.value}: "
            f"rename the file (e.g. .{_extension_for(explicit)}) or leave out --format"
        )
    return explicit


def _extension_for(fmt: OutputFormat) -> str:
    return "json" if fmt is OutputFormat.COCO else fmt.value


def check_resume(fmt: OutputFormat | None, output: Path | None, resume: bool) -> None:
    """--resume needs something to resume: a jsonl file, or txt files per image."""
    if not resume:
        return
    if fmt is None:
        raise InputError("--resume needs --output FILE")
    if fmt is OutputFormat.JSONL or (fmt is OutputFormat.TXT and output is None):
        return
    raise InputError(
        f"--resume cannot continue a {fmt.value} file (it is written whole when a run ends); "
        "--resume works with --format jsonl (-o FILE.jsonl) and txt files per image"
    )


def open_writer(
    fmt: OutputFormat | None,
    output: Path | None,
    output_dir: Path | None,
    resume: bool,
    inputs: InputFiles,
) -> tuple[OutputWriter | None, set[str]]:
    """Check the output against the inputs and what exists, then open it: (writer, images done).

    Every refusal happens here, before the first image is captioned.
    """
    if fmt is None:
        return None, set()
    if fmt is OutputFormat.TXT and output is None:
        files = CaptionFiles(output_dir, inputs)
        done = files.check(resume)
        files.create()
        return files, done
    assert output is not None  # choose_format gives every other format an --output
    if fmt is OutputFormat.JSONL:
        return open_output(output, resume, inputs)
    return open_whole_file(output, fmt, inputs), set()


# coco ----------------------------------------------------------------------


def coco_image_id(path: str) -> int | str:
    """The image_id COCO evaluation matches on: the stem's integer when it is all digits, else the stem.

    COCO's own files are named by their id (`000000391895.jpg` → 391895);
    for other names the stem is the only stable id there is.
    """
    stem = Path(path).stem
    return int(stem) if stem.isascii() and stem.isdigit() else stem


def _check_coco_ids(images: list[str]) -> None:
    """Two images with one image_id would make an evaluation score the wrong caption: refuse."""
    seen: dict[int | str, str] = {}
    for image in dict.fromkeys(images):
        if image == _STANDARD_INPUT:
            raise InputError(
                "--format coco needs image files; - (standard input) has no name for an image_id"
            )
        image_id = coco_image_id(image)
        if image_id in seen:
            raise InputError(
                f"{seen[image_id]} and {image} would both be image_id {image_id!r} in the COCO "
                "results file; caption them in separate runs or rename one"
            )
        seen[image_id] = image


def _coco_line(record: dict[str, Any]) -> str:
    return json.dumps({"image_id": record["image_id"], "caption": record["caption"]})


def _coco_bytes(records: list[dict[str, Any]]) -> bytes:
    """What WholeFileWriter writes for these records: `[`, one record per line, `]`."""
    body = "".join(("\n" if n == 0 else ",\n") + _coco_line(r) for n, r in enumerate(records))
    return ("[" + body + "\n]\n").encode("ascii")


def _is_coco_record(value: object) -> bool:
    if not isinstance(value, dict) or set(value) != {"image_id", "caption"}:
        return False
    image_id = value["image_id"]
    return (
        isinstance(image_id, (int, str))
        and not isinstance(image_id, bool)
        and isinstance(value["caption"], str)
    )


# csv / tsv -----------------------------------------------------------------

# csv: the csv module's defaults (RFC 4180: commas, CRLF); tsv: tabs and LF.
_DIALECTS: dict[OutputFormat, dict[str, str]] = {
    OutputFormat.CSV: {"delimiter": ",", "lineterminator": "\r\n"},
    OutputFormat.TSV: {"delimiter": "\t", "lineterminator": "\n"},
}
# A path is str as the OS gave it: undecodable bytes of a file name are written back as those bytes.
_ENCODING_ERRORS = "surrogateescape"


def _table_dialect(fmt: OutputFormat) -> dict[str, str]:
    return _DIALECTS[OutputFormat.TSV if fmt is OutputFormat.TXT else fmt]


def _table_bytes(rows: list[list[str]], fmt: OutputFormat) -> bytes:
    buffer = io.StringIO(newline="")
    csv.writer(buffer, **_table_dialect(fmt)).writerows(rows)  # type: ignore[arg-type]
    return buffer.getvalue().encode("utf-8", _ENCODING_ERRORS)


def is_own_file(fmt: OutputFormat, data: bytes) -> bool:
    """True when `data` is exactly what capgen writes in `fmt`: read back and written again, the same bytes."""
    try:
        if fmt is OutputFormat.COCO:
            records = json.loads(data)
            return (
                isinstance(records, list)
                and all(_is_coco_record(r) for r in records)
                and _coco_bytes(records) == data
            )
        text = data.decode("utf-8", _ENCODING_ERRORS)
        rows = list(csv.reader(io.StringIO(text, newline=""), **_table_dialect(fmt)))  # type: ignore[arg-type]
        return (
            bool(rows)
            and rows[0] == TABLE_HEADER
            and all(len(row) == 2 for row in rows)
            and _table_bytes(rows, fmt) == data
        )
    except (ValueError, RecursionError, csv.Error, UnicodeError):
        return False


# Whole files: csv, tsv, coco (and txt given as --output FILE) ----------------


def open_whole_file(path: Path, fmt: OutputFormat, inputs: InputFiles) -> WholeFileWriter:
    """A writer whose file replaces `path` when the run ends; refused if `path` is not capgen's."""
    if inputs.holds(path):
        raise InputError(f"{path}: is one of the input images; choose another --output")
    if fmt is OutputFormat.COCO:
        _check_coco_ids(inputs.images)
    existing = _read_existing(path)  # refuses a link, a folder, a FIFO …
    expected: tuple[int, int, int, int] | None = None
    if existing is not None:
        data, info = existing
        if not is_own_file(fmt, data):
            raise InputError(
                f"{path}: not a {fmt.value} file capgen wrote (its exact header and layout); "
                "refusing to replace it (choose another --output, or delete the file)"
            )
        expected = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
    try:
        descriptor, temporary = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".partial"
        )
    except OSError as exc:
        raise InputError(f"{path}: cannot open for writing ({_reason(exc)})") from None
    os.fchmod(descriptor, default_mode())
    handle = os.fdopen(descriptor, "w", encoding="utf-8", errors=_ENCODING_ERRORS, newline="")
    return WholeFileWriter(path, fmt, handle, Path(temporary), expected)


class WholeFileWriter:
    """Rows to a private temporary file; close() moves it over --output in one rename.

    The target is checked again at the end: it must still be the capgen file
    verified at the start (or still absent), so a file someone put there
    during the run is never replaced.
    """

    def __init__(
        self,
        path: Path,
        fmt: OutputFormat,
        handle: IO[str],
        temporary: Path,
        expected: tuple[int, int, int, int] | None,
    ) -> None:
        self._path = path
        self._fmt = fmt
        self._handle = handle
        self._temporary = temporary
        self._expected = expected
        self._count = 0
        self._table: Any = None  # a csv writer, for csv/tsv/txt
        try:
            if fmt is OutputFormat.COCO:
                handle.write("[")
            else:
                self._table = csv.writer(handle, **_table_dialect(fmt))  # type: ignore[arg-type]
                self._table.writerow(TABLE_HEADER)
        except OSError as exc:
            self.discard()
            raise InputError(f"{path}: cannot write ({_reason(exc)})") from None

    def write(self, record: dict[str, Any]) -> None:
        """Add a captioned image's row; failed images are not rows (stderr reports them)."""
        if "caption" not in record:
            return
        try:
            if self._table is None:
                coco = {"image_id": coco_image_id(record["path"]), "caption": record["caption"]}
                self._handle.write(("\n" if self._count == 0 else ",\n") + _coco_line(coco))
            else:
                self._table.writerow([record["path"], record["caption"]])
        except OSError as exc:
            raise InputError(
                f"{self._path}: cannot write ({_reason(exc)}); stopped, nothing was replaced"
            ) from None
        self._count += 1

    def discard(self) -> None:
        """Drop the temporary file: the target stays as it was."""
        with contextlib.suppress(OSError):
            self._handle.close()
        with contextlib.suppress(OSError):
            self._temporary.unlink()

    def close(self) -> None:
        """Finish the file and move it into place: what finished is kept, even after Ctrl-C."""
        try:
            if self._table is None:
                self._handle.write("\n]\n")
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
        except OSError as exc:
            self.discard()
            raise InputError(
                f"{self._path}: cannot write ({_reason(exc)}); nothing was replaced"
            ) from None
        self._move_into_place()

    def _move_into_place(self) -> None:
        try:
            info = os.lstat(self._path)
            now: tuple[int, int, int, int] | None = (
                info.st_dev,
                info.st_ino,
                info.st_size,
                info.st_mtime_ns,
            )
        except FileNotFoundError:
            now = None
        except OSError as exc:
            self.discard()
            raise InputError(f"{self._path}: cannot inspect it ({_reason(exc)})") from None
        if now != self._expected:
            # Someone else's file now: keep it, and keep this run's captions too.
            raise InputError(
                f"{self._path}: changed while capgen was running; not replaced, this run's "
                f"captions are in {self._temporary}"
            )
        try:
            if self._expected is None:
                _link_new(self._temporary, self._path)
                self._temporary.unlink()
            else:
                os.replace(self._temporary, self._path)  # the verified capgen file
        except FileExistsError:
            raise InputError(
                f"{self._path}: appeared while capgen was running; not replaced, this run's "
                f"captions are in {self._temporary}"
            ) from None
        except OSError as exc:
            self.discard()
            raise InputError(f"{self._path}: cannot write ({_reason(exc)})") from None


def _link_new(temporary: Path, target: Path) -> None:
    """Give `temporary` the name `target` only if nothing has it: a link planted there is not followed."""
    try:
        os.link(temporary, target, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        # A filesystem without hard links: an exclusive create, then the bytes.
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
        with os.fdopen(fd, "wb") as out, open(temporary, "rb") as source:
            out.write(source.read())


# txt: one caption file per image ---------------------------------------------


class CaptionFiles:
    """`<stem>.txt` per image, in `folder` or (folder None) beside the image; never over any file."""

    def __init__(self, folder: Path | None, inputs: InputFiles) -> None:
        self.folder = folder
        self._inputs = inputs
        self.targets: dict[str, Path] = {}
        self._written: set[Path] = set()
        owners: dict[Path, str] = {}
        for image in dict.fromkeys(inputs.images):
            if image == _STANDARD_INPUT:
                raise InputError(
                    "--format txt needs image files; - (standard input) has no name to save under"
                )
            stem = Path(image).stem or "image"
            target = (folder if folder is not None else Path(image).parent) / f"{stem}.txt"
            if target in owners:
                raise InputError(
                    f"{owners[target]} and {image} would both be captioned to {target}; "
                    "caption them in separate runs (or rename one)"
                )
            owners[target] = image
            self.targets[image] = target

    def check(self, resume: bool) -> set[str]:
        """The images whose caption file exists (--resume skips them); without --resume, refuse."""
        if self.folder is not None and self.folder.exists() and not self.folder.is_dir():
            raise InputError(f"{self.folder}: is not a folder; --output-dir needs a folder")
        existing: list[tuple[str, Path]] = []
        for image, target in self.targets.items():
            if self._inputs.holds(target):
                raise InputError(
                    f"{target}: is one of the input images; its caption file cannot go there"
                )
            if os.path.lexists(target):
                existing.append((image, target))
        if existing and not resume:
            more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
            raise InputError(
                f"{existing[0][1]}: exists{more}; capgen writes only new caption files: "
                "delete them, choose another --output-dir, or add --resume to skip those images"
            )
        return {image for image, _ in existing}

    def create(self) -> None:
        if self.folder is None:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"{self.folder}: cannot create folder ({_reason(exc)})") from None

    def write(self, record: dict[str, Any]) -> None:
        """Create the image's caption file, whole (a temporary file linked into place); never replace one."""
        if "caption" not in record:
            return
        target = self.targets[record["path"]]
        if target in self._written:  # the same image given twice
            return
        temporary: str | None = None
        try:
            fd, temporary = tempfile.mkstemp(
                dir=target.parent, prefix=f".{target.name}.{os.getpid()}.", suffix=".partial"
            )
            os.fchmod(fd, default_mode())
            with os.fdopen(fd, "wb") as handle:
                handle.write((record["caption"] + "\n").encode("utf-8", _ENCODING_ERRORS))
            _link_new(Path(temporary), target)
        except FileExistsError:
            raise CaptionFileRefused(
                f"{target}: appeared while capgen was running; not overwritten"
            ) from None
        except OSError as exc:
            raise CaptionFileRefused(
                f"{target}: cannot write caption file ({_reason(exc)})"
            ) from None
        finally:
            if temporary is not None:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
        self._written.add(target)

    def close(self) -> None:
        """Nothing stays open: each file is finished as its image is."""

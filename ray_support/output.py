"""Where `capgen ray caption` writes: a JSON Lines file (the local batch's) or a Parquet folder.

JSON Lines goes through runtime/outputs.py unchanged: the same checks (a
file only capgen wrote, never an input, never through a link), the same
`--resume` reading, the same one-write-per-line appends. Parquet cannot be
appended to, so a `.parquet` output is a folder of part files: every 1,000
rows (and at the end) one part is written to a temporary file created
exclusively in the folder and linked to a new name, so a killed run leaves
whole parts behind. `--resume` reads the parts' `path` and `error` columns;
a folder holding anything but capgen's parts is refused untouched, and one
that exists is only added to with `--resume`.

Reading parts for `--resume` is bounded: a file named like a part is
trusted with nothing before its footer says it is one of capgen's (the
schema, at most ROWS_PER_PART rows, sizes a part of that many rows can
have); only then are its two columns read, one row group at a time. A
0.9 MB file whose footer promised millions of dictionary-encoded rows took
3.4 GB to read whole; now it is one line, read no further.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

from capgen.cli_support.console import say
from capgen.cli_support.outputs import InputFiles, JsonlWriter, open_output
from capgen.ray.rows import arrow_schema, record_from_row
from capgen.runtime import results
from capgen.runtime.errors import InputError

PARQUET_SUFFIX = ".parquet"
PART_NAME = re.compile(r"part-\d{8}T\d{6}-[0-9a-f]{8}-\d{5}\.parquet")
PARTIAL_NAME = re.compile(r"\.part-.*\.partial")  # a run killed while writing a part
ROWS_PER_PART = 1000
# Bounds on a file to be read as a part (a real 1,000-row part is well under 1 MB).
MAX_PART_BYTES = 16 * 1024 * 1024  # the file, and its columns once uncompressed
MAX_FOOTER_BYTES = 1024 * 1024  # Parquet's metadata; capgen's is a few KB
MAX_PATH_CHARS = 64 * 1024  # one path or error value
RESUME_COLUMNS = ("path", "error")


class RaySink(Protocol):
    done: set[str]

    def write(self, row: dict[str, Any]) -> None: ...
    def error(self, path: str, reason: str) -> int: ...
    def close(self) -> None: ...


class JsonlSink:
    """Rows as `capgen caption --json` records, appended through the local batch's writer."""

    def __init__(self, writer: JsonlWriter, done: set[str]) -> None:
        self._writer = writer
        self.done = done

    def write(self, row: dict[str, Any]) -> None:
        self._writer.write(record_from_row(row))

    def error(self, path: str, reason: str) -> int:
        say(f"capgen: {path}: {reason}")
        self._writer.write(results.error_record(path, reason))
        return 1

    def close(self) -> None:
        self._writer.close()


def _parquet_done(folder: Path) -> set[str]:
    """Paths the folder's parts hold captions for; InputError if it is not capgen's."""
    done: set[str] = set()
    schema = arrow_schema()
    for name in sorted(os.listdir(folder)):
        if PARTIAL_NAME.fullmatch(name):
            continue
        path = folder / name
        if not PART_NAME.fullmatch(name) or not stat.S_ISREG(os.lstat(path).st_mode):
            raise InputError(
                f"{folder}: holds {name!r}, which capgen did not write; choose another --output"
            )
        done.update(_part_done(path, schema))
    return done


def _not_a_part(path: Path, why: str) -> InputError:
    return InputError(f"{path}: not a capgen caption part ({why}); choose another --output")


def _part_done(path: Path, schema: Any) -> set[str]:
    """The captioned paths of one part, read within the bounds of a part capgen writes."""
    import pyarrow.parquet as pq

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > MAX_PART_BYTES:
            raise _not_a_part(path, f"{size} bytes, more than a part of {ROWS_PER_PART} rows")
        if size < 12:
            raise _not_a_part(path, "too short for Parquet")
        handle.seek(size - 8)
        tail = handle.read(8)
        footer = int.from_bytes(tail[:4], "little")
        if tail[4:] != b"PAR1" or footer > min(MAX_FOOTER_BYTES, size - 12):
            raise _not_a_part(path, "no Parquet footer of a part's size")
        handle.seek(0)
        try:
            # Dictionary arrays as they are stored: one long value repeated
            # in every row is checked once, not copied into each row first.
            part = pq.ParquetFile(handle, read_dictionary=list(RESUME_COLUMNS))
            meta = part.metadata
            _check_part_metadata(path, part.schema.to_arrow_schema(), meta, schema)
            done: set[str] = set()
            for group in range(meta.num_row_groups):
                table = part.read_row_group(group, columns=list(RESUME_COLUMNS))
                columns = [_bounded_values(path, table.column(name)) for name in RESUME_COLUMNS]
                for row_path, error in zip(*columns, strict=True):
                    if not isinstance(row_path, str):
                        raise _not_a_part(path, "a row without a path")
                    if error is None:
                        done.add(row_path)
        except InputError:
            raise
        except Exception as exc:  # pyarrow raises several kinds for a broken file
            message = " ".join(str(exc).split())[:200]
            raise InputError(f"{path}: not a readable Parquet part ({message})") from None
    return done


def _bounded_values(path: Path, column: Any) -> list[Any]:
    """A string column's values, once each value is known to be at most MAX_PATH_CHARS long."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for chunk in column.chunks:
        values = chunk.dictionary if pa.types.is_dictionary(chunk.type) else chunk
        longest = pc.max(pc.utf8_length(values)).as_py() if len(values) else None
        if longest is not None and longest > MAX_PATH_CHARS:
            raise _not_a_part(path, f"a value of {longest} characters")
    return [value for chunk in column.chunks for value in chunk.to_pylist()]


def _check_part_metadata(path: Path, found: Any, meta: Any, schema: Any) -> None:
    """Refuse a footer no capgen part has: other columns, more rows, bigger columns."""
    if not found.equals(schema):
        raise _not_a_part(path, "other columns")
    if meta.num_rows > ROWS_PER_PART:
        raise _not_a_part(path, f"{meta.num_rows} rows, more than {ROWS_PER_PART}")
    unpacked = 0
    for group in range(meta.num_row_groups):
        row_group = meta.row_group(group)
        if row_group.num_rows > ROWS_PER_PART:
            raise _not_a_part(path, f"a row group of {row_group.num_rows} rows")
        for column in range(row_group.num_columns):
            chunk = row_group.column(column)
            unpacked += max(chunk.total_uncompressed_size, chunk.total_compressed_size)
    if unpacked > MAX_PART_BYTES:
        raise _not_a_part(path, f"{unpacked} bytes of columns, more than a part has")


class ParquetSink:
    """Rows into new part files of a folder, ROWS_PER_PART at a time."""

    def __init__(self, folder: Path, done: set[str]) -> None:
        self.folder = folder
        self.done = done
        self._rows: list[dict[str, Any]] = []
        self._stem = f"part-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.urandom(4).hex()}"
        self._parts = 0

    def write(self, row: dict[str, Any]) -> None:
        self._rows.append(row)
        if len(self._rows) >= ROWS_PER_PART:
            self._flush()

    def error(self, path: str, reason: str) -> int:
        from capgen.ray.rows import COLUMNS

        say(f"capgen: {path}: {reason}")
        self.write({**dict.fromkeys(COLUMNS), "path": path, "error": reason})
        return 1

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._rows:
            return
        table = pa.Table.from_pylist(self._rows, schema=arrow_schema())
        target = self.folder / f"{self._stem}-{self._parts:05d}{PARQUET_SUFFIX}"
        fd, temporary = tempfile.mkstemp(dir=self.folder, prefix=".part-", suffix=".partial")
        try:
            with os.fdopen(fd, "wb") as handle:
                pq.write_table(table, handle)
            os.link(temporary, target, follow_symlinks=False)  # never over an existing name
        except OSError as exc:
            raise InputError(
                f"{target}: cannot write ({exc.strerror or exc}); the parts written so far are "
                "kept: run again with --resume"
            ) from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
        self._parts += 1
        self._rows = []

    def close(self) -> None:
        self._flush()


def _open_parquet(folder: Path, resume: bool) -> ParquetSink:
    try:
        info = os.lstat(folder)
    except FileNotFoundError:
        try:
            folder.mkdir(parents=True)
        except OSError as exc:
            raise InputError(f"{folder}: cannot create folder ({exc.strerror or exc})") from None
        return ParquetSink(folder, set())
    if not stat.S_ISDIR(info.st_mode):
        raise InputError(f"{folder}: exists and is not a folder (a .parquet output is a folder)")
    done = _parquet_done(folder)
    if not resume and os.listdir(folder):
        raise InputError(
            f"{folder}: already holds captions; add --resume to add to them, or choose another --output"
        )
    return ParquetSink(folder, done)


def open_ray_output(output: Path, resume: bool, paths: list[str]) -> RaySink:
    """The sink for --output, after the checks of its kind; nothing written before they pass."""
    inputs = InputFiles(paths)
    if output.name.endswith(PARQUET_SUFFIX):
        if inputs.holds(output):
            raise InputError(f"{output}: is one of the input images; choose another --output")
        return _open_parquet(output, resume)
    writer, done = open_output(output, resume, inputs)
    return JsonlSink(writer, done)

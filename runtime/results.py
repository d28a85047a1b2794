"""JSON Lines results: written and flushed one line per image, resumable after a crash.

Each line is written with a single `write()` on an O_APPEND file descriptor,
so a process killed mid-batch leaves whole lines behind (and at most one
partial last line, which `prepare_resume` cuts off before appending).
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

from capgen.runtime.decoding import DecodingResult
from capgen.runtime.errors import InputError


def success_record(path: str, result: DecodingResult, raw: bool = False) -> dict[str, Any]:
    record: dict[str, Any] = {
        "path": path,
        "caption": result.raw if raw else result.text,
        "log_probability": round(result.log_probability, 6),
        "finished": result.finished,
        "tokens": list(result.tokens),
        "timings": {name: round(seconds * 1000.0, 3) for name, seconds in result.timings.items()},
    }
    if result.alternatives:
        record["alternatives"] = [
            {
                "caption": alt.raw if raw else alt.text,
                "log_probability": round(alt.log_probability, 6),
            }
            for alt in result.alternatives
        ]
    return record


def error_record(path: str, message: str) -> dict[str, Any]:
    return {"path": path, "error": message}


def to_line(record: dict[str, Any]) -> str:
    # ensure_ascii keeps undecodable file names (lone surrogates) as \udcXX escapes,
    # which json.loads turns back into the very same str for --resume.
    return json.dumps(record, ensure_ascii=True) + "\n"


class JsonlWriter:
    """Appends records to a file, each one on disk (in the OS) before the next image starts."""

    def __init__(self, path: Path) -> None:
        self._path = path
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise InputError(f"{path}: cannot open for writing ({exc.strerror or exc})") from exc

    def write(self, record: dict[str, Any]) -> None:
        data = to_line(record).encode("utf-8")
        try:
            start = os.fstat(self._fd).st_size
            written = os.write(self._fd, data)
            if written != len(data):
                # A short write (disk full) would leave half a line that later lines
                # follow: cut it, so the file stays whole lines and --resume can read it.
                os.ftruncate(self._fd, start)
                raise OSError(
                    errno.ENOSPC, f"only {written} of {len(data)} bytes written, disk full?"
                )
        except OSError as exc:  # disk full, file too large: stop, keeping what is written
            raise InputError(
                f"{self._path}: cannot write ({exc.strerror or exc}); stopped, the captions written so far "
                "are kept: make room and run again with --resume"
            ) from None

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _require_regular_file(path: Path) -> None:
    """--output is read (resume, overwrite check): a FIFO would block and /dev/zero never ends."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if stat.S_ISDIR(mode):
        raise InputError(f"{path}: is a folder; --output needs a file")
    if not stat.S_ISREG(mode):
        raise InputError(
            f"{path}: is not a regular file; --output needs a file (use --json for stdout)"
        )


def check_replaceable(path: Path) -> None:
    """Refuse to empty an existing --output that is not a capgen JSON Lines file.

    `capgen caption -o photo.jpg other.jpg` (a slip of the finger) would
    otherwise truncate the user's photo; a previous capgen output, an empty
    file or a new path are fine to (re)write.
    """
    _require_regular_file(path)
    try:
        with path.open("rb") as handle:
            head = handle.read(1 << 16)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if not head.strip():
        return
    first = head.lstrip().split(b"\n", 1)[0]
    try:
        record = json.loads(first)
    except (ValueError, RecursionError):
        record = None
    if not (isinstance(record, dict) and "path" in record):
        raise InputError(
            f"{path}: exists and is not a capgen JSON Lines file; refusing to overwrite it "
            "(choose another --output, or delete the file)"
        )


def prepare_resume(path: Path) -> set[str]:
    """Paths already captioned in `path`, after cutting a partial last line left by a crash.

    Failed images are not in the set: they are retried on resume (the file may
    have been fixed since).
    """
    _require_regular_file(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return set()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    complete = data.rfind(b"\n") + 1
    if complete != len(data):
        with path.open("r+b") as handle:
            handle.truncate(complete)
    done: set[str] = set()
    for number, line in enumerate(data[:complete].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
            raise InputError(
                f"{path}:{number}: not a JSON line; is this a capgen --output file?"
            ) from None
        if isinstance(record, dict) and isinstance(record.get("path"), str) and "caption" in record:
            done.add(record["path"])
    return done

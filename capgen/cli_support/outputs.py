"""The files `capgen caption` writes besides stdout: the --output JSON Lines file and --annotate copies.

The rule both follow: capgen changes a byte only in a file it has verified
as its own. `--output` (with or without `--resume`) is read whole, through
a descriptor that did not follow a link, and every line must have the exact
shape of a record capgen writes (results.py) before anything is truncated or
appended; the one thing `--resume` may cut is a half-written last line that
starts like a capgen record. Annotated copies are written to a temporary
file created exclusively in the target folder, then moved into place: a
link planted at the target is replaced, never written through, and an
existing file is replaced only when it carries capgen's annotate marker.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from capgen.runtime import results
from capgen.runtime.errors import InputError

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
# Written into every annotated JPEG (a COM segment right after the JFIF header),
# so a later run can tell its own picture from a user's file of the same name.
ANNOTATE_MARKER = b"written by capgen caption --annotate"


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _identity(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """(device, inode) of what a path names, following links; None if it does not exist."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


class InputFiles:
    """Every input image, by resolved path and by inode: no output may be one of them.

    Comparing real paths catches an input given through a symbolic link
    (`links/holiday.jpg`); comparing inodes also catches hard links.
    """

    def __init__(self, images: Iterable[str]) -> None:
        self.images = list(images)
        self.real_paths = {os.path.realpath(image) for image in self.images}
        self.identities = {i for i in map(_identity, self.images) if i is not None}

    def holds(self, path: str | os.PathLike[str]) -> bool:
        return (
            os.path.realpath(path) in self.real_paths
            or (_identity(path) or (-1, -1)) in self.identities
        )

    def folders(self) -> set[str]:
        """The folders the inputs are in, as given and after resolving links."""
        return {os.path.realpath(os.path.dirname(image) or ".") for image in self.images} | {
            os.path.dirname(path) for path in self.real_paths
        }


# --output ------------------------------------------------------------------


def _read_existing(path: Path) -> tuple[bytes, os.stat_result] | None:
    """The whole file and its stat, read without following a link; None if it does not exist."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(
                f"{path}: is a symbolic link; capgen does not write through links "
                "(give the file itself as --output)"
            ) from None
        raise InputError(f"{path}: cannot read ({_reason(exc)})") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise InputError(f"{path}: is a folder; --output needs a file")
        if not stat.S_ISREG(info.st_mode):
            # A FIFO would block and /dev/zero never ends.
            raise InputError(
                f"{path}: is not a regular file; --output needs a file (use --json for stdout)"
            )
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks), info
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({_reason(exc)})") from None
    finally:
        os.close(fd)


def _not_capgen(path: Path, where: str) -> InputError:
    return InputError(
        f"{path}:{where}: not a JSON line capgen writes, so this is not a capgen JSON Lines "
        "file; refusing to change it (choose another --output, or delete the file)"
    )


def _check_lines(path: Path, data: bytes) -> tuple[int, bool, set[str]]:
    """Verify every line is capgen's: (bytes to keep on resume, add a newline?, paths captioned).

    Raises InputError, having changed nothing, at the first line that is not.
    """
    complete = data.rfind(b"\n") + 1  # the whole lines; after them, at most one unfinished line
    done: set[str] = set()
    for number, line in enumerate(data[:complete].split(b"\n")[:-1], start=1):
        if not line.strip():
            continue
        record = results.parse_line(line)
        if record is None:
            raise _not_capgen(path, str(number))
        if "caption" in record:
            done.add(record["path"])
    tail = data[complete:]
    if not tail.strip():
        return len(data), False, done
    record = results.parse_line(tail)
    if record is not None:  # a whole record whose newline was never written: keep it
        if "caption" in record:
            done.add(record["path"])
        return len(data), True, done
    if tail.startswith(results.LINE_START):  # half a record: a crash mid-write
        return complete, False, done
    last = data.count(b"\n") + 1
    raise _not_capgen(path, f"{last} (last line)")


def _open_for_append(path: Path, create: bool) -> int:
    """An O_APPEND descriptor holding an exclusive lock: one capgen at a time per --output.

    Two runs appending to one file would caption the same images twice; the
    second is refused instead (the lock goes with the process, even on a kill).
    """
    flags = _APPEND_FLAGS | (os.O_CREAT | os.O_EXCL if create else 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            raise InputError(f"{path}: appeared while capgen was checking it; run again") from None
        raise InputError(f"{path}: cannot open for writing ({_reason(exc)})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise InputError(
                f"{path}: another capgen process is writing to it; wait for it to finish "
                "(then --resume) or choose another --output"
            ) from None
        raise InputError(f"{path}: cannot lock for writing ({_reason(exc)})") from None
    return fd


def open_output(path: Path, resume: bool, inputs: InputFiles) -> tuple[JsonlWriter, set[str]]:
    """A writer appending to --output, and the images it already has captions for (resume only).

    Without --resume a verified capgen file is emptied; with it, only a
    half-written last line is cut. Any other file is refused untouched.
    """
    if inputs.holds(path):
        raise InputError(f"{path}: is one of the input images; choose another --output")
    existing = _read_existing(path)
    if existing is None:
        return JsonlWriter(path, _open_for_append(path, create=True)), set()
    data, read_info = existing
    keep, add_newline, done = _check_lines(path, data)
    fd = _open_for_append(path, create=False)
    try:
        info = os.fstat(fd)
        if (info.st_dev, info.st_ino, info.st_size) != (
            read_info.st_dev,
            read_info.st_ino,
            len(data),
        ):
            raise InputError(f"{path}: changed while capgen was reading it; run again")
        os.ftruncate(fd, keep if resume else 0)
        if resume and add_newline:
            os.write(fd, b"\n")
    except OSError as exc:
        os.close(fd)
        raise InputError(f"{path}: cannot write ({_reason(exc)})") from None
    except InputError:
        os.close(fd)
        raise
    return JsonlWriter(path, fd), done if resume else set()


class JsonlWriter:
    """Appends records to --output, each one on disk (in the OS) before the next image starts.

    Each line is one `write()` on an O_APPEND descriptor, so a process killed
    mid-batch leaves whole lines behind and at most one partial last line.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self._path = path
        self._fd = fd

    def write(self, record: dict[str, Any]) -> None:
        data = results.to_line(record).encode("utf-8")
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
                f"{self._path}: cannot write ({_reason(exc)}); stopped, the captions written so far "
                "are kept: make room and run again with --resume"
            ) from None

    def close(self) -> None:
        os.close(self._fd)


# --annotate ----------------------------------------------------------------


class AnnotateFolder:
    """Where annotated copies go: DIR/<stem>.jpg, never over an input or a file capgen did not write."""

    def __init__(self, folder: Path, inputs: InputFiles) -> None:
        target = os.path.realpath(folder)
        for image in inputs.images:
            if target in {
                os.path.realpath(os.path.dirname(image) or "."),
                os.path.dirname(os.path.realpath(image)),
            }:
                raise InputError(
                    f"--annotate {folder} is where input images are ({image}); annotated copies "
                    "would overwrite them, choose another folder"
                )
        self.folder = folder
        self._inputs = inputs
        self._taken: set[Path] = set()

    def create(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"{self.folder}: cannot create folder ({_reason(exc)})") from None

    def target(self, source: str) -> Path:
        """folder/<stem>.jpg, with _2, _3 … when two inputs share a name."""
        stem = Path(os.fsdecode(source)).stem or "image"
        candidate = self.folder / f"{stem}.jpg"
        number = 2
        while candidate in self._taken:
            candidate = self.folder / f"{stem}_{number}.jpg"
            number += 1
        self._taken.add(candidate)
        return candidate

    def _why_not_replaceable(self, target: Path) -> str | None:
        """None if `target` is free or capgen's own earlier copy; else why it must stay."""
        try:
            info = os.lstat(target)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return f"cannot inspect it ({_reason(exc)})"
        if stat.S_ISLNK(info.st_mode):
            return "is a symbolic link; capgen does not write through links"
        if not stat.S_ISREG(info.st_mode):
            return "exists and is not a file capgen wrote"
        if self._inputs.holds(target):
            return "is an input image"
        try:
            fd = os.open(target, _READ_FLAGS)
            try:
                head = os.read(fd, 256)
            finally:
                os.close(fd)
        except OSError as exc:
            return f"cannot read it ({_reason(exc)})"
        if ANNOTATE_MARKER not in head:
            return "exists and capgen did not write it"
        return None

    def save(self, source: str, picture: Any) -> Path:
        """Write `picture` (a PIL image) as source's annotated copy; InputError if it must not be."""
        target = self.target(source)
        refusal = self._why_not_replaceable(target)
        if refusal is not None:
            raise InputError(f"{target}: {refusal}; not overwritten")
        temporary: str | None = None
        try:
            fd, temporary = tempfile.mkstemp(
                dir=self.folder, prefix=f".{target.name}.", suffix=".partial"
            )
            with os.fdopen(fd, "wb") as handle:
                picture.save(handle, "JPEG", quality=90, comment=ANNOTATE_MARKER)
            self._move_into_place(temporary, target)
        except OSError as exc:
            raise InputError(f"{target}: cannot write annotated image ({_reason(exc)})") from None
        finally:
            if temporary is not None and os.path.lexists(temporary):
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
        return target

    def _move_into_place(self, temporary: str, target: Path) -> None:
        """A new name is linked (fails if someone created it meanwhile); capgen's own copy is replaced."""
        if os.path.lexists(target):
            os.replace(temporary, target)  # verified above as capgen's own copy
            return
        try:
            os.link(temporary, target, follow_symlinks=False)
        except FileExistsError:
            raise OSError(
                errno.EEXIST, "appeared while capgen was writing; not overwritten"
            ) from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            os.replace(temporary, target)  # a filesystem without hard links

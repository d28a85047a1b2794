"""Replace a file whole and atomically, never writing through a link: the one way capgen writes files.

A fixed temporary name such as `encoder.int8.onnx.partial` can be planted as
a symlink in a folder someone sent you; opening it for writing would then
overwrite whatever it points to. So every temporary file is created here,
exclusively (`mkstemp`: O_CREAT|O_EXCL, a random name) in the target's own
folder, written through the descriptor that created it where possible,
flushed to disk, and renamed over the target (`os.replace` replaces a link
at the target itself instead of following it). On any failure the temporary
file is removed and the old target is left as it was.

Temporary names carry the writer's pid, so a later run can tell the
leftovers of a killed process (`prune_stale_temporaries`).
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import secrets
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

SUFFIX = ".partial"
# `.<target>.<pid>.<random>.partial`, optionally followed by the target's suffix.
_TEMPORARY_NAME = re.compile(r"\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.partial(\.[^.]*)?$")
# A temporary file this old is a leftover of a killed or crashed writer:
# the largest write capgen makes (optimising the 83 MB encoder) takes seconds.
STALE_AFTER_SECONDS = 600
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def default_mode(directory: bool = False) -> int:
    """What open()/mkdir() would give: 0o666 (0o777 for a folder) minus the process umask.

    mkstemp and mkdtemp create 0o600/0o700, which would hide model files from
    other users once renamed into place. The umask is read, not set: setting
    it to read it would race with other threads.
    """
    full = 0o777 if directory else 0o666
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return full & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return full & ~0o022


def _reserve(target: Path, keep_suffix: bool = False) -> tuple[int, Path]:
    suffix = SUFFIX + (target.suffix if keep_suffix else "")
    descriptor, name = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.{os.getpid()}.", suffix=suffix
    )
    os.fchmod(descriptor, default_mode())
    return descriptor, Path(name)


def _commit(temporary: Path, target: Path) -> None:
    os.replace(temporary, target)
    with contextlib.suppress(OSError):  # a folder that cannot be fsynced only loses durability
        folder = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


@contextlib.contextmanager
def atomic_writer(target: Path) -> Iterator[BinaryIO]:
    """A binary file that becomes `target` when the block ends without an exception."""
    target = Path(target)
    descriptor, temporary = _reserve(target)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        _commit(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def temporary_name(target_name: str) -> str:
    """A fresh temporary name for `target_name` that `prune_stale_temporaries` recognises."""
    return f".{target_name}.{os.getpid()}.{secrets.token_hex(6)}{SUFFIX}"


def write_bytes_at(folder: int, name: str, data: bytes, mode: int) -> None:
    """Replace `name` in the folder open as `folder` with `data`, atomically, with exactly `mode`.

    For folders used through a descriptor (a cache others might rename
    around): the temporary file is created there exclusively and without
    following links, written through the descriptor that created it, and
    renamed over `name` relative to the same folder descriptor.
    """
    temporary = temporary_name(name)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
    descriptor = os.open(temporary, flags, 0o600, dir_fd=folder)
    try:
        try:
            os.fchmod(descriptor, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(descriptor, view) :]
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=folder)
        raise
    with contextlib.suppress(OSError):  # a folder that cannot be fsynced only loses durability
        os.fsync(folder)


def atomic_write_bytes(target: Path, data: bytes) -> None:
    """Replace `target` with `data`, atomically."""
    with atomic_writer(target) as handle:
        handle.write(data)


def atomic_write_text(target: Path, text: str) -> None:
    """Replace `target` with `text` encoded as UTF-8, atomically."""
    atomic_write_bytes(target, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_path(target: Path, keep_suffix: bool = False) -> Iterator[Path]:
    """An exclusively created, empty temporary path for libraries that only write to a name.

    The file exists (so no one else can create it) before the library opens
    it; it replaces `target` when the block ends without an exception.
    `keep_suffix` ends the temporary name with the target's suffix, for
    libraries that choose a format by it (Keras `.h5`).
    """
    target = Path(target)
    descriptor, temporary = _reserve(target, keep_suffix)
    os.close(descriptor)
    try:
        yield temporary
        # Not through a link: what the library wrote is ours to flush, nothing else is.
        descriptor = os.open(temporary, os.O_RDWR | _NOFOLLOW | _CLOEXEC)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        _commit(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _writer_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def prune_stale_temporaries(
    folder: Path | int, older_than: float = STALE_AFTER_SECONDS, legacy_glob: str | None = None
) -> None:
    """Delete temporary files left in `folder` by writers that were killed (Ctrl-C, SIGKILL, power).

    Only names this module makes (`.<target>.<pid>.<random>.partial`) are
    considered, so a user's own files in a model folder are never touched,
    and only ones this user wrote (another user's are theirs to delete).
    One goes when its writer's pid is gone, or when it is older than
    `older_than` seconds (a pid can be reused, or belong to another
    container sharing the folder). A temporary folder (a writer's private
    work folder) goes whole. `folder` may be an open folder descriptor; a
    path is opened once, and everything after is relative to it, never
    following a link. `legacy_glob` adds names an older capgen used in a
    folder that is capgen's own (age alone condemns those).
    Never raises: this is housekeeping.
    """
    try:
        if isinstance(folder, int):
            descriptor = folder
        else:
            descriptor = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _CLOEXEC)
    except OSError:
        return
    try:
        _prune_at(descriptor, older_than, legacy_glob)
    finally:
        if descriptor is not folder:
            os.close(descriptor)


def _prune_at(folder: int, older_than: float, legacy_glob: str | None) -> None:
    now = time.time()
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        match = _TEMPORARY_NAME.search(name)
        ours = name.startswith(".") and fnmatch.fnmatchcase(name, f".*{SUFFIX}*") and match
        legacy = legacy_glob is not None and fnmatch.fnmatchcase(name, legacy_glob)
        if not (ours or legacy):
            continue
        try:
            status = os.stat(name, dir_fd=folder, follow_symlinks=False)
            if status.st_uid != os.geteuid():
                continue
            old = now - status.st_mtime > older_than
            if not (old or (match is not None and not _writer_alive(int(match["pid"])))):
                continue
            if stat.S_ISDIR(status.st_mode):
                shutil.rmtree(name, dir_fd=folder)  # fd-based: never follows a link inside
            else:
                os.unlink(name, dir_fd=folder)
        except OSError:
            continue

"""Hidden staging folders swapped in whole, and the leftovers of killed writers.

A folder capgen writes whole (a converted model folder, a Ray node's copy of a
shipped model) is assembled in `.NAME.partial-XXXX` beside its target and
renamed into place, so a reader never sees half a folder. A writer killed
hard (SIGKILL, out of memory, power) cannot clean up after itself, and each
leftover holds a copy of the 83 MB encoder. Every staging folder therefore
carries a marker file that its writer keeps locked (flock) for as long as it
lives; the next writer into the same parent removes only folders whose marker
says they are capgen's and whose marker it can lock itself. A lock, not a pid:
a pid means nothing in another pid namespace (a container sharing the folder
with the same host name and boot id saw a live writer's pid as dead), while
the kernel releases a lock exactly when its holder dies, wherever it ran. So
nothing capgen did not write, and nothing another running writer is using, is
ever deleted. Standard library and runtime only, so the runtime-only install
(and Ray's actors) can use it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import socket
import stat
import tempfile
from collections.abc import Callable, Collection
from pathlib import Path

from capgen.runtime.atomic_write import default_mode

MARKER = ".capgen-staging.json"
_KINDS = ("partial", "replaced")
# `.<target name>.partial-<random>` / `.<target name>.replaced-<random>`
_STAGING_NAME = re.compile(r"^\..+\.(?:partial|replaced)-[^/]+$")


def _boot_id() -> str:
    """Recorded in the marker for people reading it; liveness comes from the marker's lock."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except OSError:
        return ""


def _owner() -> dict[str, object]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "boot": _boot_id()}


# staging folder -> the descriptor of its marker, kept open (and so locked) while we write it.
_HELD: dict[str, int] = {}


def _mark(folder: Path) -> None:
    """Write the marker, locked before it appears under its name, and keep it locked.

    It is written under a temporary name (created exclusively), locked, then
    renamed to MARKER: a pruner never sees the marker unlocked while we live.
    """
    temporary = folder / f"{MARKER}.{os.getpid()}.tmp"
    descriptor = os.open(
        temporary,
        os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
        0o644,
    )
    try:
        with contextlib.suppress(OSError):  # no locks on this filesystem: pruners then keep it
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(descriptor, json.dumps(_owner()).encode("utf-8"))
        os.rename(temporary, folder / MARKER)
    except BaseException:
        os.close(descriptor)
        raise
    _HELD[str(folder)] = descriptor


def _release(folder: Path) -> None:
    """Close (and so unlock) the marker of a staging folder we made; nothing if we hold none."""
    descriptor = _HELD.pop(str(folder), None)
    if descriptor is not None:
        with contextlib.suppress(OSError):
            os.close(descriptor)


def create_staging(out_dir: Path) -> Path:
    """Create a fresh, marked staging folder beside `out_dir` (exclusively, under a new name)."""
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.partial-"))
    os.chmod(staging, default_mode(directory=True))
    _mark(staging)
    return staging


def discard_staging(staging: Path) -> None:
    """Remove a staging folder we made and did not place (a failed write), and unlock it."""
    shutil.rmtree(staging, ignore_errors=True)
    _release(staging)


def swap_in(staging: Path, out_dir: Path, replaceable: Collection[str] | None = None) -> None:
    """Move `staging` to `out_dir`; an existing `out_dir` is set aside first, then removed.

    Setting it aside with one rename (instead of deleting it before the move)
    means a kill at any moment leaves either the old folder or the new one in
    place, never neither for longer than two renames. `replaceable`: the names
    in the old folder the caller verified as its own; only those regular files
    are deleted, and a folder that then still holds anything (something that
    appeared after the check) is left where it was set aside, unmarked, so no
    pruner deletes it either. None: the old folder is removed whole.
    """
    (staging / MARKER).unlink()
    if not out_dir.exists():
        os.replace(staging, out_dir)
        _release(staging)
        return
    aside = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.replaced-"))
    os.rename(out_dir, aside)  # onto the empty folder just made: atomic on POSIX
    os.replace(staging, out_dir)
    _release(staging)
    if replaceable is None:
        _mark(aside)
        shutil.rmtree(aside, ignore_errors=True)
        _release(aside)
        return
    for name in replaceable:
        entry = aside / name
        with contextlib.suppress(OSError):
            if stat.S_ISREG(entry.lstat().st_mode):
                entry.unlink()
    with contextlib.suppress(OSError):
        os.rmdir(aside)  # fails, keeping it, if anything but the verified files is inside


def place(staging: Path, target: Path) -> bool:
    """Rename `staging` to `target` unless `target` is already there; False leaves `staging` as it was.

    For folders whose content is fixed by their name (a model copy named after
    its manifest's sha256): when another writer got there first, its copy is
    as good as ours and is kept. The marker is removed after the rename, so a
    kill at any moment leaves a marked leftover or the finished folder.
    """
    try:
        os.rename(staging, target)  # fails on an existing non-empty folder or a file
    except OSError:
        if not target.exists() and not target.is_symlink():
            raise
        return False
    with contextlib.suppress(OSError):
        (target / MARKER).unlink()
    _release(staging)
    return True


def _lock_if_abandoned(marker: Path) -> int | None:
    """An open, locked descriptor of `marker` if no live writer holds its lock, else None.

    The caller deletes the folder while holding the lock and then closes it.
    A filesystem without locks, or any error, counts as held: not ours to delete.
    """
    try:
        descriptor = os.open(
            marker, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        )
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(descriptor)
        return None
    return descriptor


def prune_stale(out_dir: Path) -> list[Path]:
    """Remove staging leftovers of `out_dir` from writers that died; return what went."""
    prefixes = tuple(f".{out_dir.name}.{kind}-" for kind in _KINDS)
    return _prune(out_dir.parent, lambda name: name.startswith(prefixes))


def prune_stale_in(parent: Path) -> list[Path]:
    """Remove the dead writers' staging leftovers of any target in `parent` (a folder capgen owns,
    such as the Ray model store, where every target is capgen's); return what went."""
    return _prune(parent, lambda name: _STAGING_NAME.match(name) is not None)


def _prune(parent: Path, is_staging_name: Callable[[str], bool]) -> list[Path]:
    removed: list[Path] = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if not is_staging_name(entry.name):
            continue
        try:
            info = entry.lstat()
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
                continue  # a link, a file, or someone else's: not ours to judge
            if str(entry) in _HELD:
                continue  # our own, in use
            marker = entry / MARKER
            if marker.is_symlink():
                continue
            owner = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # no readable marker: not provably capgen's
        if not isinstance(owner, dict) or "pid" not in owner:
            continue
        descriptor = _lock_if_abandoned(marker)
        if descriptor is None:
            continue  # a live writer holds it, wherever (whichever pid namespace) it runs
        try:
            shutil.rmtree(entry, ignore_errors=True)
        finally:
            os.close(descriptor)
        removed.append(entry)
    return removed

"""Hidden staging folders swapped in whole, and the leftovers of killed writers.

A folder capgen writes whole (a converted model folder, a Ray node's copy of a
shipped model) is assembled in `.NAME.partial-XXXX` beside its target and
renamed into place, so a reader never sees half a folder. A writer killed
hard (SIGKILL, out of memory, power) cannot clean up after itself, and each
leftover holds a copy of the 83 MB encoder. Every staging folder therefore
carries a marker naming the process that made it; the next writer into the
same parent removes only folders whose marker says they are capgen's and whose
process is gone, so nothing capgen did not write, and nothing another running
writer is using, is ever deleted. Standard library and runtime only, so the
runtime-only install (and Ray's actors) can use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from capgen.runtime.atomic_write import default_mode

MARKER = ".capgen-staging.json"
_KINDS = ("partial", "replaced")
# `.<target name>.partial-<random>` / `.<target name>.replaced-<random>`
_STAGING_NAME = re.compile(r"^\..+\.(?:partial|replaced)-[^/]+$")


def _boot_id() -> str:
    """Tell reboots apart: a pid from before a reboot says nothing about a process now."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except OSError:
        return ""


def _owner() -> dict[str, object]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "boot": _boot_id()}


def _mark(folder: Path) -> None:
    """Write the marker exclusively, so an existing file of that name is never rewritten."""
    descriptor = os.open(
        folder / MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644
    )
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump(_owner(), handle)


def create_staging(out_dir: Path) -> Path:
    """Create a fresh, marked staging folder beside `out_dir` (exclusively, under a new name)."""
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.partial-"))
    os.chmod(staging, default_mode(directory=True))
    _mark(staging)
    return staging


def swap_in(staging: Path, out_dir: Path) -> None:
    """Move `staging` to `out_dir`; an existing `out_dir` is set aside first, then removed.

    Setting it aside with one rename (instead of deleting it before the move)
    means a kill at any moment leaves either the old folder or the new one in
    place, never neither for longer than two renames.
    """
    (staging / MARKER).unlink()
    if not out_dir.exists():
        os.replace(staging, out_dir)
        return
    aside = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.replaced-"))
    os.rename(out_dir, aside)  # onto the empty folder just made: atomic on POSIX
    os.replace(staging, out_dir)
    _mark(aside)
    shutil.rmtree(aside, ignore_errors=True)


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
    return True


def _alive(owner: dict[str, object]) -> bool:
    """Whether the marker's process may still be running (unknown counts as alive)."""
    pid = owner.get("pid")
    if not isinstance(pid, int) or owner.get("host") != socket.gethostname():
        return True
    if owner.get("boot") != _boot_id():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


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
            marker = entry / MARKER
            if marker.is_symlink():
                continue
            owner = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # no readable marker: not provably capgen's
        if isinstance(owner, dict) and not _alive(owner):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed

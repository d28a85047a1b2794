"""Hidden staging folders for model folders, and the leftovers of killed conversions.

A model folder is assembled in `.NAME.partial-XXXX` beside its target and
renamed into place, so a reader never sees half a folder. A conversion killed
hard (SIGKILL, out of memory, power) cannot clean up after itself, and each
leftover holds a copy of the 83 MB encoder. Every staging folder therefore
carries a marker naming the process that made it; the next conversion into the
same parent removes only folders whose marker says they are capgen's and whose
process is gone, so nothing capgen did not write, and nothing another running
conversion is using, is ever deleted.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path

from capgen.runtime.atomic_write import default_mode

MARKER = ".capgen-staging.json"
_KINDS = ("partial", "replaced")


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
    """Remove staging leftovers of `out_dir` from conversions that died; return what went."""
    removed: list[Path] = []
    try:
        entries = list(out_dir.parent.iterdir())
    except OSError:
        return removed
    prefixes = tuple(f".{out_dir.name}.{kind}-" for kind in _KINDS)
    for entry in entries:
        if not entry.name.startswith(prefixes):
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

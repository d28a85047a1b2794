"""The folder benchmark results go to: capgen rewrites only the files it wrote there.

`capgen bench --output DIR` (and the other benchmark scripts) may be pointed
at any folder, for example one that already holds a user's own `RESULTS.md`.
A register, `.capgen-results.json`, lists the files capgen's benchmarks wrote
into the folder; a file of the same name that is not in it is never replaced,
and the check runs before a ten-minute run starts, not after it. Every write
is atomic and replaces a name rather than writing through a link.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

from capgen.runtime.atomic_write import atomic_path, atomic_write_text
from capgen.runtime.errors import InputError

REGISTER = ".capgen-results.json"


class ResultsFolder:
    """Write named result files into one folder, refusing to replace anyone else's."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def _registered(self) -> set[str]:
        register = self.folder / REGISTER
        try:
            if register.is_symlink():
                return set()
            names = json.loads(register.read_text(encoding="utf-8")).get("files", [])
        except (OSError, ValueError, AttributeError):
            return set()
        return {name for name in names if isinstance(name, str)}

    def check(self, names: Iterable[str]) -> None:
        """Raise InputError now if any of `names` could not be written (call before the run)."""
        if self.folder.exists() and not self.folder.is_dir():
            raise InputError(f"output {self.folder} exists and is not a folder")
        registered = self._registered()
        for name in names:
            path = self.folder / name
            try:
                info = path.lstat()
            except FileNotFoundError:
                continue
            except OSError as error:
                raise InputError(f"cannot use {path} ({error.strerror or error})") from None
            if stat.S_ISLNK(info.st_mode) or not stat.S_ISREG(info.st_mode):
                raise InputError(f"refusing to write {path}: it is a link or not a regular file")
            if name not in registered:
                raise InputError(
                    f"refusing to replace {path}: capgen did not write it "
                    f"(choose another --output folder, or move the file away)"
                )

    def _register(self, name: str) -> None:
        names = self._registered() | {name}
        atomic_write_text(
            self.folder / REGISTER, json.dumps({"files": sorted(names)}, indent=1) + "\n"
        )

    def write_text(self, name: str, text: str) -> Path:
        """Replace `name` with `text` atomically (checked against the register first)."""
        self.check([name])
        self.folder.mkdir(parents=True, exist_ok=True)
        self._register(name)
        atomic_write_text(self.folder / name, text)
        return self.folder / name

    def write_with(self, name: str, write: Callable[[Path], object]) -> Path:
        """For libraries that write to a file name (matplotlib's savefig): give them a fresh temporary one."""
        self.check([name])
        self.folder.mkdir(parents=True, exist_ok=True)
        self._register(name)
        with atomic_path(self.folder / name, keep_suffix=True) as partial:
            write(partial)
        return self.folder / name

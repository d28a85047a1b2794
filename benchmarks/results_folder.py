"""The folder benchmark results go to: capgen rewrites only the files it wrote there.

`capgen bench --output DIR` (and the other benchmark scripts) may be pointed
at any folder, for example one that already holds a user's own `RESULTS.md`.
A register, `.capgen-results.json`, records the sha256 of each file capgen's
benchmarks wrote into the folder. A file of the same name is replaced only
when its current bytes still match that sha256, so a register copied beside
someone else's file, or one listing names whose content is not capgen's, never
makes capgen replace them; a register that is not exactly what capgen writes
(another shape, a link, an older register without checksums) counts as
nothing. The check runs before a ten-minute run starts, not after it. Every
write is atomic and replaces a name rather than writing through a link.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

from capgen.runtime.atomic_write import atomic_path, atomic_write_text
from capgen.runtime.errors import InputError

REGISTER = ".capgen-results.json"
_FORMAT = "capgen-results"
_VERSION = 2
# A register lists a handful of files; a larger one is not capgen's.
_MAX_REGISTER_BYTES = 1 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _sha256(path: Path) -> str:
    """The sha256 of the regular file at `path`, opened without following a link."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(descriptor, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _register_text(files: dict[str, str]) -> str:
    """The register's exact bytes for `files` (name -> sha256): what _registered() accepts."""
    record = {"format": _FORMAT, "version": _VERSION, "files": dict(sorted(files.items()))}
    return json.dumps(record, indent=1) + "\n"


class ResultsFolder:
    """Write named result files into one folder, refusing to replace anyone else's."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def _registered(self) -> dict[str, str] | None:
        """name -> sha256 from the register; None unless it is exactly what capgen writes."""
        register = self.folder / REGISTER
        try:
            info = register.lstat()
            if not stat.S_ISREG(info.st_mode) or info.st_size > _MAX_REGISTER_BYTES:
                return None
            descriptor = os.open(register, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            with os.fdopen(descriptor, "rb") as handle:
                text = handle.read(_MAX_REGISTER_BYTES + 1).decode("utf-8")
            record = json.loads(text)
        except (OSError, ValueError, RecursionError):
            return None
        if not isinstance(record, dict) or set(record) != {"format", "version", "files"}:
            return None
        files = record["files"]
        if (
            record["format"] != _FORMAT
            or record["version"] != _VERSION
            or not isinstance(files, dict)
            or not all(
                isinstance(name, str) and isinstance(digest, str) and _SHA256.match(digest)
                for name, digest in files.items()
            )
            or _register_text(files) != text  # byte for byte what capgen writes
        ):
            return None
        return files

    def _check_register(self, registered: dict[str, str] | None) -> None:
        """The register itself is replaced only if capgen wrote it (this format or the one before)."""
        register = self.folder / REGISTER
        try:
            info = register.lstat()
        except FileNotFoundError:
            return
        except OSError as error:
            raise InputError(f"cannot use {register} ({error.strerror or error})") from None
        if registered is not None or (
            stat.S_ISREG(info.st_mode) and self._is_old_register(register)
        ):
            return
        raise InputError(
            f"refusing to replace {register}: it is not a register capgen wrote "
            "(choose another --output folder, or move the file away)"
        )

    @staticmethod
    def _is_old_register(register: Path) -> bool:
        """Capgen's register before checksums: {"files": [names]}; replaced, but vouches for nothing."""
        try:
            descriptor = os.open(register, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            with os.fdopen(descriptor, "rb") as handle:
                text = handle.read(_MAX_REGISTER_BYTES + 1).decode("utf-8")
            names = json.loads(text)["files"]
            return isinstance(names, list) and text == (
                json.dumps({"files": sorted(str(name) for name in names)}, indent=1) + "\n"
            )
        except (OSError, ValueError, RecursionError, KeyError, TypeError):
            return False

    def check(self, names: Iterable[str]) -> None:
        """Raise InputError now if any of `names` could not be written (call before the run)."""
        if self.folder.exists() and not self.folder.is_dir():
            raise InputError(f"output {self.folder} exists and is not a folder")
        found = self._registered()
        self._check_register(found)
        registered = found or {}
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
            try:
                current = _sha256(path) if name in registered else None
            except OSError as error:
                raise InputError(f"cannot use {path} ({error.strerror or error})") from None
            if current is None or current != registered[name]:
                raise InputError(
                    f"refusing to replace {path}: capgen did not write it, or it changed since "
                    f"(choose another --output folder, or move the file away)"
                )

    def _register(self, name: str) -> None:
        """Record the sha256 of `name` as it is now (just written by capgen)."""
        files = {**(self._registered() or {}), name: _sha256(self.folder / name)}
        atomic_write_text(self.folder / REGISTER, _register_text(files))

    def write_text(self, name: str, text: str) -> Path:
        """Replace `name` with `text` atomically (checked against the register first)."""
        self.check([name])
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.folder / name, text)
        self._register(name)
        return self.folder / name

    def write_with(self, name: str, write: Callable[[Path], object]) -> Path:
        """For libraries that write to a file name (matplotlib's savefig): give them a fresh temporary one."""
        self.check([name])
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.folder / name, keep_suffix=True) as partial:
            write(partial)
        self._register(name)
        return self.folder / name

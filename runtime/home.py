"""Where capgen keeps what it builds: one cache folder, and how the runtime may use it.

Like fastembed's cache folder, one environment variable moves everything
(weights, exported encoders, the default model) so CI, containers and users
with small home directories can put it where they have room. Without it the
XDG base-directory rule applies: `$XDG_CACHE_HOME/capgen`, else
`~/.cache/capgen`.

The runtime only ever *speeds up* through the cache (verification stamps,
optimised graphs): a cache filled by another user (root in a Docker build),
a read-only one or a full disk must cost speed, never a caption. So every
runtime cache access goes through here: `cache_enabled()` (CAPGEN_NO_CACHE=1
turns the cache off), `trusted_entry()` (only entries written by this user or
root count, so a shared folder others can write to cannot vouch for a file),
`open_cache_folder()` (a cache folder is used through a descriptor opened
without following links, and only when no one but this user or root can
change what is in it: a group- or world-writable folder, or another user's,
would let them swap entries or plant links between capgen's check and
onnxruntime's open) and `warn_cache_unwritable()` / `warn_cache_untrusted()`
(one warning line per process, however many entries fail).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import sys
import threading
from pathlib import Path

ENV_VAR = "CAPGEN_HOME"
NO_CACHE_VAR = "CAPGEN_NO_CACHE"
WEIGHTS_FILENAME = "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"
MODELS_FOLDER = "models"
DEFAULT_MODEL_NAME = "default"
# Fixed, not from the umask: a umask of 002 made group-writable cache folders
# (which capgen then refuses to trust). Readable by others so that a cache
# root filled in a Docker build still serves the container's user.
FOLDER_MODE = 0o755
ENTRY_MODE = 0o644
_DIRECTORY_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)

_warned = threading.Event()


def capgen_home() -> Path:
    """The cache folder: $CAPGEN_HOME, else $XDG_CACHE_HOME/capgen, else ~/.cache/capgen.

    A relative XDG_CACHE_HOME is ignored, as the XDG specification says.
    """
    configured = os.environ.get(ENV_VAR)
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "capgen"
    try:
        home = Path.home()
    except RuntimeError:  # no HOME and no passwd entry (a bare container uid)
        home = Path("/nonexistent")
    return home / ".cache" / "capgen"


def cache_enabled() -> bool:
    """False when CAPGEN_NO_CACHE is set to anything but '', '0', 'false' or 'no'."""
    value = os.environ.get(NO_CACHE_VAR, "").strip().lower()
    return value in ("", "0", "false", "no")


def trusted_entry(entry: os.stat_result) -> bool:
    """A cache entry counts only if it is a regular file written by this user or by root.

    A cache shared through a folder someone else can write to must not let
    them vouch for a model file (a stamp) or substitute a graph.
    """
    return stat.S_ISREG(entry.st_mode) and entry.st_uid in (os.geteuid(), 0)


class UntrustedCacheFolder(Exception):
    """A cache folder others could change: never used, never written (internal, not a CapgenError)."""


def untrusted_folder_reason(status: os.stat_result) -> str | None:
    """Why a cache folder must not be used, or None when only this user or root can change it."""
    if not stat.S_ISDIR(status.st_mode):
        return "not a folder"
    if status.st_uid not in (os.geteuid(), 0):
        return f"owned by uid {status.st_uid}, not by this user or root"
    if status.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"writable by other users (mode {stat.S_IMODE(status.st_mode):o})"
    return None


def open_cache_folder(name: str, create: bool) -> int:
    """A descriptor of `$CAPGEN_HOME/name`, for dir_fd-relative use only; the caller closes it.

    `name` is opened without following a link, so a link planted in a shared
    home cannot send capgen's writes or deletions elsewhere; every later
    operation is relative to the descriptor, so renaming folders around it
    changes nothing. The home itself is the user's own choice of path (links
    in it are followed). `create` makes missing folders with FOLDER_MODE.
    Raises OSError (absent, unreadable, not a folder) or UntrustedCacheFolder.
    """
    home = capgen_home()
    created = False
    try:
        home_fd = os.open(home, _DIRECTORY_FLAGS)
    except FileNotFoundError:
        if not create:
            raise
        home.mkdir(parents=True, mode=FOLDER_MODE, exist_ok=True)
        home_fd = os.open(home, _DIRECTORY_FLAGS)
    try:
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, FOLDER_MODE, dir_fd=home_fd)
                created = True
        try:
            folder_fd = os.open(name, _DIRECTORY_FLAGS | _NOFOLLOW, dir_fd=home_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP or (exc.errno == errno.ENOTDIR and _is_link(name, home_fd)):
                raise UntrustedCacheFolder("a symbolic link, which capgen never follows") from None
            raise
    finally:
        os.close(home_fd)
    try:
        status = os.fstat(folder_fd)
        if created and status.st_uid == os.geteuid():
            os.fchmod(folder_fd, FOLDER_MODE)  # what mkdir made is what the umask allowed
            status = os.fstat(folder_fd)
        reason = untrusted_folder_reason(status)
        if reason is not None:
            raise UntrustedCacheFolder(reason)
    except BaseException:
        os.close(folder_fd)
        raise
    return folder_fd


def _is_link(name: str, folder: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _one_line(reason: object) -> str:
    """The reason as one short line: onnxruntime's messages span lines (a full disk: two)."""
    text = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
    text = " ".join(text.split())
    # "[ONNXRuntimeError] : 1 : FAIL : graph.cc:5468 Function what", nested: keep the last `what`.
    text = re.split(r"\[ONNXRuntimeError\] : \d+ : \w+ : ", text)[-1]
    text = re.sub(r"^\S+\.(?:cc|cpp|h):\d+ \S+ ", "", text)
    text = re.sub(r"/proc/self/fd/\d+/", "", text)  # capgen's private work folder, not a place
    return text if len(text) <= 200 else text[:199] + "…"


def warn_cache_unwritable(where: Path, reason: object) -> None:
    """Say once per process, in one line on stderr, that the cache cannot be written."""
    _warn_once(
        f"capgen: warning: cannot write the cache {where} ({_one_line(reason)}); running without "
        f"it, which only costs speed (set {ENV_VAR} to a writable folder, or {NO_CACHE_VAR}=1)"
    )


def warn_cache_untrusted(where: Path, reason: object) -> None:
    """Say once per process, in one line, that a cache folder others could change is not used."""
    _warn_once(
        f"capgen: warning: not using the cache {where} ({_one_line(reason)}); running without "
        f"it, which only costs speed (make it yours and `chmod go-w` it, set {ENV_VAR} to a "
        f"folder only you can write, or {NO_CACHE_VAR}=1)"
    )


def _warn_once(line: str) -> None:
    if _warned.is_set():
        return
    _warned.set()
    sys.stderr.write(line.replace("\n", " ").replace("\r", " ") + "\n")
    sys.stderr.flush()


def weights_dir() -> Path:
    return capgen_home() / "weights"


def encoders_dir() -> Path:
    return capgen_home() / "encoders"


def models_dir() -> Path:
    """Where installed models live: `capgen setup`'s default and `-m NAME` models."""
    return capgen_home() / MODELS_FOLDER


def default_model_dir() -> Path:
    """The assembled default model folder (built by `capgen setup`)."""
    return models_dir() / DEFAULT_MODEL_NAME


def stamp_present(folder: str, name: str) -> bool:
    """Whether `$CAPGEN_HOME/folder/name` is a stamp this user or root wrote, in a folder only they
    can change (a stamp skips a sha256: one renamed into place by someone else would vouch for
    their file). Anything else, errors included, is a miss.
    """
    try:
        descriptor = open_cache_folder(folder, create=False)
    except UntrustedCacheFolder as exc:
        warn_cache_untrusted(capgen_home() / folder, exc)
        return False
    except OSError:
        return False
    try:
        return trusted_entry(os.stat(name, dir_fd=descriptor, follow_symlinks=False))
    except OSError:
        return False
    finally:
        os.close(descriptor)


def record_stamp(folder: str, name: str) -> None:
    """Create the empty stamp `$CAPGEN_HOME/folder/name`, never through a link; failures only warn."""
    where = capgen_home() / folder
    try:
        descriptor = open_cache_folder(folder, create=True)
    except UntrustedCacheFolder as exc:
        warn_cache_untrusted(where, exc)
        return
    except OSError as exc:  # a read-only or full cache only costs a re-hash next time
        warn_cache_unwritable(where, exc)
        return
    try:
        flags = os.O_WRONLY | os.O_CREAT | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        os.close(os.open(name, flags, ENTRY_MODE, dir_fd=descriptor))
    except OSError as exc:
        warn_cache_unwritable(where, exc)
    finally:
        os.close(descriptor)

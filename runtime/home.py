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
root count, so a shared folder others can write to cannot vouch for a file)
and `warn_cache_unwritable()` (one warning line per process, however many
entries fail).
"""

from __future__ import annotations

import os
import stat
import sys
import threading
from pathlib import Path

ENV_VAR = "CAPGEN_HOME"
NO_CACHE_VAR = "CAPGEN_NO_CACHE"
WEIGHTS_FILENAME = "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"
MODELS_FOLDER = "models"
DEFAULT_MODEL_NAME = "default"

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
    return stat.S_ISREG(entry.st_mode) and entry.st_uid in (os.getuid(), 0)


def warn_cache_unwritable(where: Path, reason: object) -> None:
    """Say once per process, in one line on stderr, that the cache cannot be written."""
    if _warned.is_set():
        return
    _warned.set()
    text = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
    sys.stderr.write(
        f"capgen: warning: cannot write the cache {where} ({text}); running without it, "
        f"which only costs speed (set {ENV_VAR} to a writable folder, or {NO_CACHE_VAR}=1)\n"
    )
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

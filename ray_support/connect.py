"""Reaching Ray: the extra's presence and the cluster's address, each a one-line error (exit 2).

`ray.init(address=...)` on an address nobody listens at retries for about a
minute and then raises with a multi-line story; capgen first tries one TCP
connection to HOST:PORT (5 s) and says in one line what is wrong.

No address means a new local Ray (`ray.init(address="local")`), never the
cluster named in Ray's `ray_current_cluster` file: a bare `ray.init()` joins
whatever cluster that file names, and a stale file (left by any earlier
`ray start` on the machine) made it wait silently for minutes. Joining a
running cluster is asked for explicitly: `--address auto` or HOST:PORT.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import socket
import sys
from collections.abc import Iterator

from capgen.runtime.errors import InputError

RAY_EXTRA = ("ray", "pyarrow")
CONNECT_TIMEOUT_S = 5.0


class RayExtraMissing(InputError):
    """The `ray` extra is not installed."""


class RayUnreachable(InputError):
    """No Ray cluster answers at the address given."""


def require_ray_extra() -> None:
    missing = [name for name in RAY_EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        raise RayExtraMissing(
            f"capgen on Ray needs the ray extra ({', '.join(missing)} missing): "
            "pip install 'capgen[ray]'"
        )


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of HOST:PORT or ray://HOST:PORT; None for `auto` and other Ray spellings."""
    bare = address.removeprefix("ray://")
    host, sep, port = bare.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    return host.strip("[]"), int(port)


def check_reachable(address: str) -> None:
    target = _host_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise RayUnreachable(
            f"cannot reach a Ray cluster at {address} ({exc.strerror or exc}); start one with "
            "`ray start --head` or give its address (HOST:PORT of the head node)"
        ) from None


def connect(address: str | None) -> None:
    """Join the cluster at `address` (None: a new local Ray on this machine), quietly.

    None is passed to Ray as "local", which starts a new Ray whatever Ray's
    address file or RAY_ADDRESS say (see the module docstring for why).
    """
    require_ray_extra()
    if address is not None:
        check_reachable(address)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    try:
        ray.init(
            address="local" if address is None else address,
            logging_level=logging.ERROR,
            log_to_driver=False,
            configure_logging=True,
            include_dashboard=False if address is None else None,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        message = " ".join(str(exc).split())[:300]
        raise RayUnreachable(
            f"cannot join the Ray cluster at {address or 'local'}: {message}"
        ) from None


def quiet_ray_console() -> None:
    """Ray's console log handlers write nothing; its log files keep everything.

    Ray's PlainRayHandler writes to whatever `sys.stderr` is when a record is
    emitted, so while `ray_logs_silenced` holds fd 2 it still reaches the
    terminal: Ray Data logged an actor's failed `__init__` there as an 84-line
    "Full stack trace" before capgen's own one line. Called once `ray.data`
    is imported (its import installs the handlers).
    """
    for name in ("ray", "ray.data", "ray.serve", "ray.train", "ray.tune"):
        for handler in logging.getLogger(name).handlers:
            if not isinstance(handler, logging.FileHandler) and (
                isinstance(handler, logging.StreamHandler) or handler.name == "console"
            ):
                handler.setLevel(logging.CRITICAL + 1)


@contextlib.contextmanager
def ray_logs_silenced() -> Iterator[None]:
    """File descriptor 2 to /dev/null while Ray runs; `sys.stderr` still reaches the terminal.

    Ray's C++ core writes notes straight to fd 2 (e.g. about actors restartable from
    object-store arguments) and its Python loggers hold the old stream: the command's
    stderr stays one `capgen: …` line per failure. Ray's own logs are in its session folder.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    previous = sys.stderr
    try:
        os.dup2(null, 2)
        sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1, errors="backslashreplace")
        yield
    finally:
        sys.stderr.flush()
        sys.stderr.close()
        sys.stderr = previous
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)

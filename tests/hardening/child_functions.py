"""Functions the child-process tests hand to `capgen.convert.isolated`: importable by name, stdlib only.

The child imports a function's module to run it, so these live in a module of
their own rather than in the test file (which would import pytest and psutil
into every child).
"""

from __future__ import annotations

import os
import signal
import time

from capgen.runtime.errors import ModelError


def own_pid() -> int:
    return os.getpid()


def pids_of_nested_reads() -> tuple[int, int]:
    """This child's pid and the pid a bounded read made from inside it ran in."""
    from capgen.convert.isolated import read_untrusted

    return os.getpid(), read_untrusted(own_pid, what="nested", error=ModelError)


def sleep_for(seconds: float) -> None:
    time.sleep(seconds)


def raise_model_error(message: str) -> None:
    raise ModelError(message)


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def unpicklable_result() -> object:
    return lambda: None


def print_then_return(value: int) -> int:
    print("chatter on stdout that must not corrupt the result")
    os.write(1, b"and more, below Python\n")
    return value


def environment_value(name: str) -> str | None:
    return os.environ.get(name)

"""Run a TensorFlow step in a child process, so the converter's own memory stays small.

TensorFlow never gives memory back: building the ImageNet weights file and
exporting the encoder in one process peaked at 7.2 GB RSS (the export alone
5.3 GB). Each runs in a fresh `spawn`ed process instead, so the peak is the
largest single step and the converting process itself never imports
TensorFlow. Exceptions (ConversionError and friends) come back pickled and
are raised here, so the user still sees one line.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from typing import Any, TypeVar

from capgen.runtime.errors import ConversionError

T = TypeVar("T")


def _quietly(function: Callable[..., T], *args: Any) -> T:
    """In the child: TensorFlow's C++ start-up lines (oneDNN, absl) ignore TF_CPP_MIN_LOG_LEVEL,
    so the child's stderr goes to /dev/null; its exceptions still reach the parent, pickled."""
    import os

    from capgen.convert.stack import quiet_tensorflow

    quiet_tensorflow()  # the child's own logging set-up (the environment is inherited)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    return function(*args)


def run_isolated(function: Callable[..., T], *args: Any, what: str) -> T:
    """`function(*args)` in a fresh process; `what` names the step if the process dies."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        try:
            return pool.submit(_quietly, function, *args).result()
        except BrokenProcessPool:
            raise ConversionError(
                f"{what} was killed before it finished (out of memory? it needs about 6 GB)"
            ) from None

"""Run a conversion step in a child process: for memory (TensorFlow) or for a time bound (HDF5).

TensorFlow never gives memory back: building the ImageNet weights file and
exporting the encoder in one process peaked at 7.2 GB RSS (the export alone
5.3 GB). Each runs in a fresh Python process instead (`run_isolated`), so
the peak is the largest single step and the converting process itself never
imports TensorFlow.

HDF5 files capgen has not verified (a user's `model_9.h5`, `.keras`, weights
or encoder files, Keras's own download cache) are parsed in a child too, with
a time bound (`read_untrusted`): one flipped byte in a global-heap length made
HDF5's C code loop forever inside h5py's attribute read (found by the
damaged-file fuzz test, 2026-12-05). No Python timeout can interrupt C code,
but a process can be killed. The bounded child reads directly when it calls
another bounded read, so nesting costs nothing.

Exceptions (ConversionError and friends) come back pickled and are raised
here, so the user still sees one line. The child is killed, never left
running, when the parent stops waiting for it (timeout, Ctrl-C, any error).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from typing import IO, Any, TypeVar

from capgen.runtime.errors import CapgenError, ConversionError

T = TypeVar("T")

# Reading the largest file capgen accepts (Xception's 88 MB of weights) takes
# about a second here; two minutes leaves room for a slow disk and a busy
# machine, and stops a file built to hang its reader.
UNTRUSTED_READ_TIMEOUT_S = 120.0

# The child is a plain `python -c`, not a multiprocessing process: `spawn` re-runs
# the parent's main module in the child, so a user's script that calls the converter
# at top level (no `if __name__ == "__main__":`) failed in the child. This child
# imports nothing of the parent's but capgen and the function's own module. It runs
# with -P: `python -c` would put the working folder first on sys.path, so a `pickle.py`
# lying there would run in place of the standard library's.
_CHILD_SOURCE = (
    "import pickle, sys\n"
    "parent, sys.path[:] = pickle.load(sys.stdin.buffer)\n"
    "from capgen.convert.isolated import child_main\n"
    "child_main(sys.stdin.buffer, parent)\n"
)

_inside_bounded_child = False


class _ChildDied(Exception):
    """The child ended without a result: killed (out of memory), crashed in C, or never started.

    `args[0]` is the last line the child wrote to stderr before it silenced it (a
    Python that cannot import capgen says why there), or "" when it said nothing.
    """


class _ChildTimedOut(Exception):
    """The child gave no result within its time bound and was killed."""


def _quiet_output() -> IO[bytes]:
    """The channel the result goes back on; every other write in the child goes to /dev/null.

    TensorFlow's C++ start-up lines (oneDNN, absl) ignore TF_CPP_MIN_LOG_LEVEL, and
    HDF5 prints its error stack for damaged files; a stray print on stdout would
    corrupt the result. Exceptions still reach the parent, pickled.
    """
    from capgen.convert.stack import quiet_tensorflow

    quiet_tensorflow()  # the child's own logging set-up (the environment is inherited)
    result = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)
    return result


def _die_with(parent: int) -> None:
    """Linux: end this child when its parent ends, however it ends.

    A parent killed with SIGKILL (the OOM killer, `kill -9`) cannot kill its child, and
    a child looping in HDF5 would spin a core forever. The parent's thread waits for
    the child until it ends, so the thread's exit (which PDEATHSIG also follows) is the
    parent's.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # it ended before the line above
        os._exit(1)


def child_main(stream: IO[bytes], parent: int) -> None:
    """In the child: read (bounded, function, args), run it, write (succeeded, value) back."""
    global _inside_bounded_child
    _die_with(parent)
    result = _quiet_output()
    try:
        bounded, function, args = pickle.load(stream)
        _inside_bounded_child = bounded
        outcome: tuple[bool, Any] = (True, function(*args))
    except BaseException as error:  # every failure goes back to the parent
        outcome = (False, error)
    try:
        payload = pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as error:  # an unpicklable result or exception
        failure = ConversionError(f"{type(error).__name__}: {error}")
        payload = pickle.dumps((False, failure), protocol=pickle.HIGHEST_PROTOCOL)
    with result:
        result.write(payload)


# Parsing a file needs no BLAS, but numpy's import starts a BLAS thread per core, which
# doubled a bounded child's start-up CPU (0.20 -> 0.11 CPU-s here). A user's own setting wins.
_ONE_BLAS_THREAD = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _run_in_child(
    function: Callable[..., T], args: tuple[Any, ...], timeout_s: float | None, bounded: bool
) -> T:
    request = pickle.dumps(
        (os.getpid(), sys.path), protocol=pickle.HIGHEST_PROTOCOL
    ) + pickle.dumps((bounded, function, args), protocol=pickle.HIGHEST_PROTOCOL)
    environment = None  # TensorFlow's exports keep the parent's environment as it is
    if bounded:
        environment = {**dict.fromkeys(_ONE_BLAS_THREAD, "1"), **os.environ}
    with subprocess.Popen(
        [sys.executable, "-P", "-c", _CHILD_SOURCE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,  # what it says before _quiet_output: why it could not start
        env=environment,
    ) as process:
        try:
            output, start_up = process.communicate(request, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise _ChildTimedOut from None
        except BaseException:  # Ctrl-C, or anything else: the child never outlives the wait
            process.kill()
            process.wait()  # Popen's exit does not reap after a KeyboardInterrupt
            raise
    if process.returncode != 0 or not output:
        said = start_up.decode("utf-8", "replace").strip().splitlines()
        raise _ChildDied(said[-1] if said else "")
    succeeded, value = pickle.loads(output)  # our own child wrote it
    if succeeded:
        return value
    raise value


def run_isolated(function: Callable[..., T], *args: Any, what: str) -> T:
    """`function(*args)` in a fresh process; `what` names the step if the process dies."""
    try:
        return _run_in_child(function, args, None, bounded=False)
    except _ChildDied as died:
        raise ConversionError(
            _could_not_start(what, died)
            or f"{what} was killed before it finished (out of memory? it needs about 6 GB)"
        ) from None


def _could_not_start(what: str, died: _ChildDied) -> str | None:
    """The message for a child that failed before it ran anything of the caller's, else None."""
    said = died.args[0] if died.args else ""
    if not said:
        return None
    return f"{what} failed: the Python process capgen starts for it ({sys.executable}) said: {said}"


def read_untrusted(
    function: Callable[..., T], *args: Any, what: str, error: type[CapgenError]
) -> T:
    """`function(*args)`, which parses a file capgen has not verified, bounded in time.

    `what` names the file ("model file model_9.h5"); `error` is the CapgenError
    class the caller raises for a damaged file of this kind, so a file that
    hangs its reader fails the way a file that breaks it does.
    """
    if _inside_bounded_child:
        return function(*args)
    try:
        return _run_in_child(function, args, UNTRUSTED_READ_TIMEOUT_S, bounded=True)
    except _ChildTimedOut:
        raise error(
            f"{what} was still being read after {UNTRUSTED_READ_TIMEOUT_S:g} s and was "
            "abandoned: its HDF5 structure is damaged or built to hang the reader"
        ) from None
    except _ChildDied as died:
        raise error(
            _could_not_start(f"reading {what}", died)
            or f"{what} crashed the process that read it: the file is damaged"
        ) from None

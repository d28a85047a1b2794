"""Run `capgen ARGS…` the way a user does, in-process where that shows the same thing.

Starting the console script costs 0.75-1 s of imports per call; hundreds of
CLI tests paid it. `capgen()` instead calls `capgen.cli.main` in the test's
own process with `sys.argv`, the environment, the working directory and the
three standard streams swapped for the call, and returns what a child process
would have: exit code, stdout and stderr as bytes. What only a real process
shows still goes through one: a test marked `@pytest.mark.subprocess`
(signals, kill-and-resume, closed pipes, shutdown, cold imports), arguments
given as bytes (non-UTF-8 file names are decoded by the interpreter at start),
an environment that changes how the interpreter starts (locale, encoding,
PYTHON* variables), and the commands that import heavy stacks or run a
server (`setup`, `bench`, `serve`, `ray`; TensorFlow must not stay loaded in
a test worker). An exception that escapes `main` is written to stderr as a
traceback, exactly as the interpreter would, so tests asserting "no
traceback" still fail on one. CAPGEN_TEST_SUBPROCESS=1 in the environment makes
every call a child process again, to compare both ways.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import traceback
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

CONSOLE_SCRIPT = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "capgen"

Arg = str | Path | bytes

# Commands that import TensorFlow/Ray/uvicorn or serve until stopped: always a child process.
_CHILD_COMMANDS = frozenset({"setup", "bench", "serve", "ray"})
# Variables the interpreter reads at start-up: only a fresh process honours them.
_STARTUP_VARIABLES = ("LANG", "LC_ALL", "LC_CTYPE", "PYTHONIOENCODING", "PYTHONUTF8")
_IN_PROCESS_KWARGS = frozenset({"cwd", "input", "timeout", "check"})

# Set by tests/conftest.py per test: False while a test marked `subprocess` runs.
in_process_allowed = True


def _needs_child(args: Sequence[Arg], env: Mapping[str, str], kwargs: Mapping[str, object]) -> bool:
    if not in_process_allowed or os.environ.get("CAPGEN_TEST_SUBPROCESS") == "1":
        return True
    if any(isinstance(arg, bytes) for arg in args):
        return True
    if args and str(args[0]) in _CHILD_COMMANDS:
        return True
    if set(kwargs) - _IN_PROCESS_KWARGS:
        return True  # preexec_fn, stdin=, …: process-level behaviour
    return any(env.get(name) != os.environ.get(name) for name in _STARTUP_VARIABLES) or any(
        name.startswith("PYTHON") and env.get(name) != os.environ.get(name)
        for name in {*env, *os.environ}
    )


def capgen(
    *args: Arg,
    env: Mapping[str, str] | None = None,
    script: Path = CONSOLE_SCRIPT,
    prefix: Sequence[str] = (),
    **kwargs: object,
) -> subprocess.CompletedProcess[bytes]:
    """`capgen ARGS` with `env` (default: this process's) as its whole environment.

    Keyword arguments are subprocess.run's (`cwd`, `input`, `timeout`, …); a
    `prefix` (e.g. `setpriv …`) or an unknown keyword means a child process.
    """
    environment = dict(os.environ if env is None else env)
    if prefix or _needs_child(args, environment, kwargs):
        return capgen_process(*args, env=environment, script=script, prefix=prefix, **kwargs)
    return _in_process(
        [os.fsdecode(arg) if isinstance(arg, bytes) else str(arg) for arg in args],
        environment,
        cwd=kwargs.get("cwd"),  # type: ignore[arg-type]
        stdin=kwargs.get("input"),  # type: ignore[arg-type]
        check=bool(kwargs.get("check", False)),
    )


def capgen_process(
    *args: Arg,
    env: Mapping[str, str] | None = None,
    script: Path = CONSOLE_SCRIPT,
    prefix: Sequence[str] = (),
    **kwargs: object,
) -> subprocess.CompletedProcess[bytes]:
    """The real console script in a child process (what `capgen` falls back to)."""
    argv = [*map(os.fsencode, prefix), os.fsencode(script)]
    argv += [arg if isinstance(arg, bytes) else os.fsencode(str(arg)) for arg in args]
    kwargs.setdefault("timeout", 120)
    if "stdin" not in kwargs and "input" not in kwargs:
        kwargs["stdin"] = subprocess.DEVNULL
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        argv, capture_output=True, env=dict(os.environ if env is None else env), **kwargs
    )


class _Capture(io.TextIOWrapper):
    """A text stream over bytes, like a child's piped stdout/stderr (UTF-8, not a terminal)."""

    def __init__(self) -> None:
        self.raw_bytes = io.BytesIO()
        super().__init__(self.raw_bytes, encoding="utf-8", errors="strict", write_through=True)

    def value(self) -> bytes:
        self.flush()
        return self.raw_bytes.getvalue()


@contextlib.contextmanager
def _swapped_process_state(env: Mapping[str, str], cwd: object) -> Iterator[None]:
    """argv, environ, cwd, streams, SIGINT handler and capgen's verbosity, restored afterwards."""
    saved_argv, saved_env, saved_cwd = sys.argv, dict(os.environ), os.getcwd()
    saved_streams = sys.stdin, sys.stdout, sys.stderr
    saved_sigint = signal.getsignal(signal.SIGINT)
    from capgen.cli_support import console

    saved_verbosity = console._verbosity
    try:
        os.environ.clear()
        os.environ.update(env)
        if cwd is not None:
            os.chdir(os.fspath(cwd))  # type: ignore[arg-type]
        with warnings.catch_warnings():
            warnings.simplefilter("default")  # what a fresh interpreter shows on stderr
            yield
    finally:
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
        sys.stdin, sys.stdout, sys.stderr = saved_streams
        signal.signal(signal.SIGINT, saved_sigint)
        console._verbosity = saved_verbosity


def _in_process(
    args: list[str], env: Mapping[str, str], cwd: object, stdin: bytes | None, check: bool
) -> subprocess.CompletedProcess[bytes]:
    from capgen.cli import main

    out, err = _Capture(), _Capture()
    code: int
    with _swapped_process_state(env, cwd):
        sys.argv = [str(CONSOLE_SCRIPT), *args]
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin or b""), encoding="utf-8")
        sys.stdout, sys.stderr = out, err
        try:
            main()
            code = 0
        except SystemExit as done:
            code = _exit_status(done.code, err)
        except BaseException:  # the interpreter would print it and exit 1
            err.write(traceback.format_exc())
            code = 1
    done = subprocess.CompletedProcess(
        ["capgen", *args], code, stdout=out.value(), stderr=err.value()
    )
    if check:
        done.check_returncode()
    return done


def _exit_status(code: object, err: _Capture) -> int:
    """What `sys.exit(code)` makes the process's status, as the interpreter decides it."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    err.write(f"{code}\n")
    return 1


def assert_one_line_error(
    done: subprocess.CompletedProcess[bytes] | subprocess.CompletedProcess[str],
    exit_code: int,
    *fragments: str,
) -> str:
    """The whole of stderr is one `capgen: error: …` line holding each fragment (no traceback),
    and the exit code is `exit_code`; returns the line. The one check every CLI test shares."""
    raw = done.stderr
    stderr = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    assert "Traceback" not in stderr, stderr
    assert done.returncode == exit_code, (done.returncode, stderr)
    assert stderr.startswith("capgen: error: ") and stderr.count("\n") == 1, stderr
    for fragment in fragments:
        assert fragment in stderr, (fragment, stderr)
    return stderr.rstrip("\n")

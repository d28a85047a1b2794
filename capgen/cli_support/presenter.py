"""The one presenter: every outcome of a `capgen` command becomes one stderr line and an exit code.

Commands raise (`CapgenError`, KeyboardInterrupt, a closed pipe) and return;
only this module decides what the user sees and which `ExitCode` the process
ends with. click's own main loop is not used because it answers a closed
pipe with exit 1 and Ctrl-C with a bare 130, inside each command.
"""

from __future__ import annotations

import errno
import os
import sys

import typer
from typer.main import get_command

from capgen.cli_support.console import say, tolerate_any_terminal
from capgen.cli_support.exit_codes import ExitCode, exit_code_for
from capgen.cli_support.interrupts import interrupt_with_keyboard_interrupt
from capgen.cli_support.usage_errors import ClickException
from capgen.runtime.errors import CapgenError

# A full disk or a failing device behind stdout/--output: one line, not a traceback.
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EFBIG})


def _silence_stdout() -> None:
    """Point stdout at /dev/null: Python's flush of the same stdout at exit must add nothing."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _interrupted(interrupt: BaseException) -> int:
    notes = getattr(interrupt, "__notes__", [])
    say("; ".join(["capgen: interrupted", *notes]))
    return ExitCode.INTERRUPTED


def _invoke(app: typer.Typer, args: list[str]) -> int:
    """Run one command line; the exit code of what happened, having said it on stderr."""
    try:
        command = get_command(app)
        interrupt_with_keyboard_interrupt()
        with command.make_context("capgen", args) as context:
            command.invoke(context)
        return ExitCode.OK
    except typer.Exit as done:
        return done.exit_code
    except CapgenError as error:
        say(f"capgen: error: {str(error) or type(error).__name__}")
        return exit_code_for(error)
    except (KeyboardInterrupt, typer.Abort) as interrupt:
        return _interrupted(interrupt)
    except BrokenPipeError:
        # `capgen caption folder | head -1`: the reader left; stop quietly like other Unix tools.
        _silence_stdout()
        return ExitCode.BROKEN_PIPE
    except ClickException as error:  # e.g. `capgen convert` alone, which shows its help
        error.show()  # type: ignore[attr-defined]
        return error.exit_code  # type: ignore[attr-defined]
    except OSError as error:
        if error.errno not in _WRITE_ERRNOS:
            raise
        say(f"capgen: error: cannot write output: {error.strerror or error}")
        return ExitCode.USAGE


def _flush_stdout(code: int) -> int:
    """Flush stdout while an error can still be reported; a closed pipe is 141, a full disk one line."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        return ExitCode.BROKEN_PIPE if code == ExitCode.OK else code
    except OSError as exc:
        _silence_stdout()
        if code == ExitCode.OK:
            say(f"capgen: error: cannot write to standard output ({exc.strerror or exc})")
            return ExitCode.USAGE
    return code


def run(app: typer.Typer, args: list[str]) -> int:
    """The exit code of `capgen ARGS`, everything said on stderr and stdout flushed."""
    tolerate_any_terminal()
    return int(_flush_stdout(_invoke(app, args)))

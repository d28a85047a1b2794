"""The `capgen` console script: one typer app assembled from the stage CLIs.

The runtime owns `caption` and `info`; the converter owns `convert …`; the
demonstration model (models/) owns `setup`; the benchmarks own `bench`. Those modules import heavy stacks
(TensorFlow) only inside their commands, so `capgen caption` starts fast and
works on a runtime-only install.
"""

from __future__ import annotations

import errno
import sys
from typing import Annotated

import typer

from capgen.runtime.cli import register_runtime_commands

_SUBCOMMANDS = {"caption", "info", "convert", "setup", "bench", "--help", "-h", "--version"}


def build_app() -> typer.Typer:
    from capgen.runtime.usage_errors import OneLineUsageGroup

    app = typer.Typer(
        cls=OneLineUsageGroup,
        name="capgen",
        help="Caption images on a CPU with the classic Keras CNN+LSTM model, converted to ONNX.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    app.callback()(_root_options)
    register_runtime_commands(app)
    from capgen.convert.cli import register_convert_commands

    register_convert_commands(app)
    from capgen.models.setup_default import setup_command

    app.command("setup")(setup_command)
    from capgen.benchmarks.cli import register_bench_command

    register_bench_command(app)
    return app


def _print_version(value: bool) -> None:
    if value:
        from capgen import __version__

        typer.echo(f"capgen {__version__}")
        raise typer.Exit()


def _root_options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Caption images on a CPU with the classic Keras CNN+LSTM model, converted to ONNX."""


def _tutorial_argv(argv: list[str]) -> list[str]:
    """Let `capgen -i photo.jpg` (the tutorial's habit) mean `capgen caption -i photo.jpg`."""
    if argv and argv[0] not in _SUBCOMMANDS:
        return ["caption", *argv]
    return argv


def main() -> None:
    """Run the CLI; any CapgenError becomes one line on stderr and its documented exit code."""
    from capgen.runtime.errors import CapgenError

    try:
        app = build_app()
        app(args=_tutorial_argv(sys.argv[1:]), prog_name="capgen", standalone_mode=True)
    except CapgenError as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"capgen: error: {message}", file=sys.stderr)
        sys.exit(error.exit_code)
    except BrokenPipeError:
        sys.exit(141)  # the reader of stdout went away (e.g. `| head`): nothing to report
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EIO, errno.EDQUOT):
            raise
        print(f"capgen: error: cannot write output: {error.strerror}", file=sys.stderr)
        sys.exit(2)

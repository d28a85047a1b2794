"""The `capgen` console script: one typer app assembled from the stage CLIs.

The runtime owns `caption` and `info`; the converter owns `convert …`; the
demonstration model (models/) owns `setup`; the benchmarks own `bench` (a checkout's: the
wheel leaves them out, and its `bench` says so). Those modules import heavy stacks
(TensorFlow) only inside their commands, so `capgen caption` starts fast and
works on a runtime-only install. `capgen caption|info|models` register only
the runtime's commands.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import typer

# Only the standard library above: a Ctrl-C must be handled before the heavy imports start.

_SUBCOMMANDS = {
    "caption",
    "info",
    "convert",
    "setup",
    "bench",
    "serve",
    "ray",
    "export",
    "models",
    "tune",
    "version",
    "--help",
    "-h",
    "--version",
}


# Commands the runtime owns: `capgen caption|info|models …` build an app
# with only these, so they do not import the converter's, the demonstration
# model's, the benchmarks' and the server's modules just to register commands
# they will not run (capgen.models.setup_default alone pulled in the converter's
# hashing and the colour encoder: ~0.06 s of a cold caption's CPU).
_RUNTIME_COMMANDS = frozenset({"caption", "info", "models", "tune", "version"})


def build_app(argv: list[str] | None = None) -> typer.Typer:
    """The typer app; for a runtime command line (`argv` starts with one) only the runtime's commands."""
    import typer

    from capgen.cli_support.commands import register_runtime_commands
    from capgen.cli_support.usage_errors import OneLineUsageCommand, OneLineUsageGroup

    app = typer.Typer(
        cls=OneLineUsageGroup,
        name="capgen",
        help="Caption images on a CPU with the classic Keras CNN+LSTM model, converted to ONNX.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    app.callback()(_root_options())
    register_runtime_commands(app)
    # `capgen version` is `capgen --version`: without the command it would be taken
    # for the tutorial's `capgen IMAGE` and answered "version: no such file".
    app.command("version", cls=OneLineUsageCommand, help="Show the version and exit.")(
        _version_command
    )
    if argv and argv[0] in _RUNTIME_COMMANDS:
        return app
    from capgen.convert.cli import register_convert_commands

    register_convert_commands(app)
    from capgen.models.setup_default import setup_command

    app.command("setup")(setup_command)
    _register_bench_command(app)
    from capgen.serve.cli import register_serve_command

    register_serve_command(app)
    from capgen.ray.cli import register_ray_command

    register_ray_command(app)
    from capgen.convert.web_cli import register_export_commands

    register_export_commands(app)
    return app


def _register_bench_command(app: typer.Typer) -> None:
    """`capgen bench` from a checkout; from the wheel, which leaves the benchmarks out, one line."""
    try:
        from capgen.benchmarks.cli import register_bench_command
    except ModuleNotFoundError as error:
        if error.name != "capgen.benchmarks":  # a broken checkout, not a wheel: say so loudly
            raise
        from capgen.cli_support.usage_errors import OneLineUsageCommand

        app.command(
            "bench",
            cls=OneLineUsageCommand,
            context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
            help="Benchmarks: run from a capgen repository checkout (`make bench`).",
        )(_bench_needs_a_checkout)
    else:
        register_bench_command(app)


def _bench_needs_a_checkout() -> None:
    """Benchmarks: run from a capgen repository checkout (`make bench`)."""
    from capgen.runtime.errors import InputError

    raise InputError(
        "capgen bench runs in a capgen repository checkout with the test data in ../shared/data "
        "next to it (`make bench` there): an installed capgen leaves the benchmarks out"
    )


def _print_version(value: bool) -> None:
    if value:
        import typer

        _version_command()
        raise typer.Exit()


def _version_command() -> None:
    """Show the version and exit."""
    import typer

    from capgen import __version__

    typer.echo(f"capgen {__version__}")


def _root_options() -> Callable[..., None]:
    """The root's own options, built here so that importing this module imports no typer."""
    import typer

    def root(
        version: bool = typer.Option(  # a default, not Annotated: typer is not a module global
            False,
            "--version",
            is_eager=True,
            callback=_print_version,
            help="Show the version and exit.",
        ),
    ) -> None:
        """Caption images on a CPU with the classic Keras CNN+LSTM model, converted to ONNX."""

    return root


def _tutorial_argv(argv: list[str]) -> list[str]:
    """Let `capgen -i photo.jpg` (the tutorial's habit) mean `capgen caption -i photo.jpg`."""
    if argv and argv[0] not in _SUBCOMMANDS:
        return ["caption", *argv]
    return argv


def _mistyped_command(argv: list[str]) -> str | None:
    """The command `capgen captoin x.jpg` meant ("caption"), when the first word is no path."""
    import difflib
    import os

    if not argv or argv[0] in _SUBCOMMANDS or argv[0].startswith("-") or os.path.exists(argv[0]):
        return None
    commands = sorted(name for name in _SUBCOMMANDS if not name.startswith("-"))
    close = difflib.get_close_matches(argv[0], commands, n=1, cutoff=0.75)
    return close[0] if close else None


def main() -> None:
    """Run the CLI: every outcome is presented by capgen.cli_support.presenter, never a traceback."""
    from capgen.cli_support.interrupts import leave_on_interrupt, leave_quietly_at_exit

    leave_on_interrupt(message="capgen: interrupted")  # while importing: nothing to keep yet
    from capgen.cli_support.presenter import run

    meant = _mistyped_command(sys.argv[1:])
    if meant is not None:  # not taken as an image path: "no such file" would mislead
        from capgen.cli_support.console import say
        from capgen.cli_support.exit_codes import ExitCode

        say(f"capgen: error: no command {sys.argv[1]!r}; did you mean {meant!r}? (see --help)")
        sys.exit(ExitCode.USAGE)
    argv = _tutorial_argv(sys.argv[1:])
    code = run(build_app(argv), argv)
    leave_quietly_at_exit(code)  # all is written: a Ctrl-C during shutdown only hurries it
    sys.exit(code)

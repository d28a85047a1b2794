"""Command-line usage mistakes as one line, like every other capgen error.

typer shows a bad option (`--beam-size abc`, `--bogus`, a missing `-o`) as a
multi-line usage block in a box. capgen's rule is one line on stderr
(`capgen: error: …`) and a documented exit code, so scripts and people read
every failure the same way. Commands opt in with `cls=OneLineUsageCommand`;
the root app with `typer.Typer(cls=OneLineUsageGroup)` makes every usage
mistake below it one line, in any subcommand or group.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from capgen.cli_support.console import say
from capgen.cli_support.exit_codes import ExitCode

# typer vendors click; its UsageError (bad option, missing argument, bad value)
# is the base of the one click exception typer re-exports.
UsageError: type[Exception] = typer.BadParameter.__mro__[1]
USAGE_EXIT = ExitCode.USAGE
# Base of every click error typer can raise (UsageError, BadParameter, NoArgsIsHelpError …).
ClickException: type[Exception] = UsageError.__mro__[1]


def _one_line(error: Exception) -> str:
    message = error.format_message() if hasattr(error, "format_message") else str(error)
    return " ".join(message.split())


def _usage_failed(error: Exception) -> typer.Exit:
    say(f"capgen: error: {_one_line(error)} (see --help)")
    return typer.Exit(USAGE_EXIT)


class OneLineUsageCommand(TyperCommand):
    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except UsageError as error:
            raise _usage_failed(error) from None


class OneLineUsageGroup(TyperGroup):
    """For the root app: every usage mistake below it, in any subcommand, becomes one line.

    Subcommands parse their options inside the root group's `invoke`, so
    catching there covers commands that do not use `OneLineUsageCommand`.
    `capgen convert` alone still shows its help (click signals that with a
    UsageError subclass whose message is the help page).
    """

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except UsageError as error:
            if _is_help_request(error):
                raise
            raise _usage_failed(error) from None

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except UsageError as error:
            if _is_help_request(error):
                raise
            raise _usage_failed(error) from None


def _is_help_request(error: Exception) -> bool:
    return type(error).__name__ == "NoArgsIsHelpError"

"""`OneLineUsageGroup` on a root app turns every usage mistake below it into one line (exit 2)."""

from __future__ import annotations

from typing import Annotated

import pytest
import typer

from capgen.cli_support.usage_errors import OneLineUsageGroup


def _app() -> typer.Typer:
    """A root app shaped like capgen's: plain commands and a sub-group, none with a special class."""
    app = typer.Typer(cls=OneLineUsageGroup, add_completion=False, pretty_exceptions_enable=False)
    convert = typer.Typer(no_args_is_help=True)

    @app.command("caption")
    def caption(beam_size: Annotated[int, typer.Option("--beam-size")] = 3) -> None:
        print(f"beam {beam_size}")

    @convert.command("model")
    def model(output: Annotated[str, typer.Option("--output", "-o")]) -> None:
        print(f"model {output}")

    @convert.command("weights")
    def weights() -> None:
        print("weights")

    app.add_typer(convert, name="convert")
    return app


@pytest.mark.parametrize(
    "args,message",
    [
        (["caption", "--beam-size", "abc"], "Invalid value for '--beam-size'"),
        (["caption", "--bogus"], "No such option: --bogus"),
        (["convert", "bogus"], "No such command 'bogus'."),
        (["convert", "model"], "Missing option '--output'"),
        (["--version"], "No such option: --version"),
        (["nothing"], "No such command 'nothing'."),
    ],
)
def test_usage_mistakes_anywhere_are_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        _app()(args, prog_name="capgen", standalone_mode=True)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("capgen: error: ") and err.count("\n") == 1 and message in err, err
    assert "╭" not in err


def test_help_and_good_calls_are_untouched(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        _app()(["caption", "--beam-size", "5"], prog_name="capgen", standalone_mode=True)
    assert exited.value.code == 0 and capsys.readouterr().out == "beam 5\n"
    with pytest.raises(SystemExit):  # a group called bare still shows its help, not an error line
        _app()(["convert"], prog_name="capgen", standalone_mode=True)
    captured = capsys.readouterr()
    assert "model" in captured.out + captured.err and "capgen: error" not in captured.err

"""The typer-free parse of common `capgen caption` lines (issue 14, cold start) agrees with typer's."""

from __future__ import annotations

import functools
import inspect
from typing import Any

import pytest
from typer.main import get_command

from capgen.cli import build_app
from capgen.cli_support.fast_caption import fast_caption_arguments
from capgen.runtime import cli as runtime_cli
from capgen.runtime.cli import caption_command

COMMON = [
    ["photo.jpg"],
    ["a.jpg", "b.png", "folder/"],
    ["-"],
    ["--model", "mymodel", "photo.jpg", "--beam-size", "1"],
    ["photo.jpg", "-m", "m/", "-b", "5", "--int8", "--fast-decoder"],
    ["-i", "a.jpg", "-i", "b.jpg", "--json", "--raw"],
    ["-q", "photo.jpg"],
    ["--verbose", "photo.jpg", "--model", "-"],
    ["-b", "007", "x.jpg"],
]

LEFT_TO_TYPER = [
    ["--help"],
    ["photo.jpg", "--model=m"],
    ["photo.jpg", "--beam-size", "three"],
    ["photo.jpg", "-b", "-1"],
    ["photo.jpg", "-b", "٣"],  # a digit, but not one typer's int parser is known to take
    ["photo.jpg", "--output", "out.jsonl"],
    ["photo.jpg", "-qv"],
    ["--", "-odd-name.jpg"],
    ["photo.jpg", "--model"],
    ["photo.jpg", "--model", "a", "--model", "b"],
    ["photo.jpg", "--int8", "--int8"],
    ["photo.jpg", "--model", ""],
]


def _typer_arguments(args: list[str], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What typer hands `caption_command` for `capgen caption ARGS` (the command itself not run)."""
    received: dict[str, Any] = {}

    @functools.wraps(caption_command)
    def capture(**arguments: Any) -> None:
        received.update(arguments)

    monkeypatch.setattr(runtime_cli, "caption_command", capture)
    group = get_command(build_app(["caption"]))
    with group.make_context("capgen", ["caption", *args]) as context:
        group.invoke(context)
    return received


def _with_defaults(arguments: dict[str, Any]) -> dict[str, Any]:
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(caption_command).parameters.items()
    }
    return {**defaults, **arguments}


@pytest.mark.parametrize("args", COMMON)
def test_common_lines_get_what_typer_would_give(
    args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = fast_caption_arguments(args)
    assert fast is not None, args
    assert _with_defaults(fast) == _typer_arguments(args, monkeypatch)


@pytest.mark.parametrize("args", LEFT_TO_TYPER)
def test_everything_else_goes_through_typer(args: list[str]) -> None:
    assert fast_caption_arguments(args) is None

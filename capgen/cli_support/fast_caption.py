"""The common `capgen caption …` command line, parsed without building typer's parameters.

typer (0.2x) builds a pydantic TypeAdapter for every parameter before it
parses a command line: importing pydantic and building the adapters was
~0.1 s of CPU and 12 MB of a cold `capgen caption photo.jpg` (a third of
what capgen itself does before the model loads). The few command lines
people type most are recognised here and handed straight to
`caption_command` with the same values typer would give it; anything else
(`--help`, `--opt=value`, another option, a value that is not a plain
number, `--`) returns None and goes through typer as before, so errors and
help keep their one wording. tests/runtime/test_cli_fast_path.py checks that
both paths give the command the same arguments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# option spelling -> (parameter, kind): "flag" takes no value, "path"/"int"/"image" take one.
_OPTIONS: dict[str, tuple[str, str]] = {
    "--model": ("model", "path"),
    "-m": ("model", "path"),
    "--beam-size": ("beam_size", "int"),
    "-b": ("beam_size", "int"),
    "--image": ("image", "image"),
    "-i": ("image", "image"),
    "--int8": ("int8", "flag"),
    "--fast-decoder": ("fast_decoder", "flag"),
    "--json": ("json_lines", "flag"),
    "--raw": ("raw", "flag"),
    "--quiet": ("quiet", "flag"),
    "-q": ("quiet", "flag"),
    "--verbose": ("verbose", "flag"),
    "-v": ("verbose", "flag"),
}


def _value(kind: str, text: str) -> Any:
    """The value typer would give; None when typer must judge it (and word any error)."""
    if text.startswith("-") and text != "-":
        return None  # click's own rules for a value that looks like an option
    if kind == "int":
        return int(text) if text.isascii() and text.isdigit() and len(text) < 10 else None
    if kind == "path":
        return Path(text) if text else None
    return text


def fast_caption_arguments(args: list[str]) -> dict[str, Any] | None:
    """`caption_command`'s keyword arguments for `args` (after `caption`), or None: use typer."""
    found: dict[str, Any] = {}
    images: list[str] = []
    position = 0
    while position < len(args):
        word = args[position]
        position += 1
        if word == "-" or not word.startswith("-"):
            images.append(word)
            continue
        known = _OPTIONS.get(word)
        if known is None:
            return None
        name, kind = known
        if kind == "flag":
            if name in found:
                return None
            found[name] = True
            continue
        if position >= len(args):
            return None
        value = _value(kind, args[position])
        position += 1
        if value is None:
            return None
        if kind == "image":
            found.setdefault("image", []).append(value)
        elif name in found:
            return None  # typer keeps the last; rare enough to let it say so
        else:
            found[name] = value
    if images:
        found["images"] = images
    return found

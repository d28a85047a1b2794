"""docs/development.md's "Layout" table holds: each folder imports from capgen only what the table allows.

Imports are read with `ast` (nothing is imported), including those inside
functions, since the lazy imports are the ones that drift.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# folder -> the capgen packages its modules may import (docs/development.md "Layout").
ALLOWED = {
    "capgen/cli_support": {"capgen.cli_support", "capgen.runtime.errors"},
    "runtime": {"capgen.runtime", "capgen.cli_support"},
    # Not capgen.models: the demo registers its encoder kind through an entry point.
    "convert": {"capgen.convert", "capgen.runtime", "capgen.cli_support"},
    "models": {"capgen.models", "capgen.runtime", "capgen.convert"},
    "serve": {"capgen.serve", "capgen.runtime", "capgen.cli_support"},
    # Ray Serve answers with capgen serve's request reading and refusals.
    "ray_support": {"capgen.ray", "capgen.runtime", "capgen.cli_support", "capgen.serve"},
    "benchmarks": {
        "capgen.benchmarks",
        "capgen.runtime",
        "capgen.convert",
        "capgen.models",
        "capgen.ray",
    },
}
# capgen/__init__.py's lazy public API, for the packages built on the runtime.
PUBLIC_API = {
    f"capgen.{name}" for name in ("Captioner", "DecodingOptions", "DecodingResult", "CapgenError")
}
BELOW_THE_API = {"runtime", "capgen/cli_support"}
# Within runtime/, only the command line reaches the CLI plumbing.
RUNTIME_CLI_MODULES = {"cli.py", "sinks.py"}


def _capgen_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name == "capgen" or name.startswith("capgen.")}


def _allowed(name: str, folder: str) -> bool:
    # `from capgen import __version__` or `from capgen.runtime import results`
    # add "capgen.__version__" / "capgen.runtime.results": a prefix match decides.
    if name in ("capgen", "capgen.__version__"):
        return True
    if name in PUBLIC_API:
        return folder not in BELOW_THE_API  # the API is the runtime's: it cannot lean on itself
    return any(name == p or name.startswith(p + ".") for p in ALLOWED[folder])


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_each_folder_imports_only_what_the_layout_allows(folder: str) -> None:
    wrong = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in sorted((ROOT / folder).rglob("*.py"))
        for name in _capgen_imports(path)
        if not _allowed(name, folder)
    }
    assert not wrong, sorted(wrong)


def test_only_the_runtime_command_line_uses_the_cli_plumbing() -> None:
    users = {
        path.name
        for path in (ROOT / "runtime").glob("*.py")
        if any(name.startswith("capgen.cli_support") for name in _capgen_imports(path))
    }
    assert users <= RUNTIME_CLI_MODULES, users


def test_the_documented_layout_table_names_these_rules() -> None:
    page = (ROOT / "docs" / "development.md").read_text(encoding="utf-8")
    section = page.split("## Layout: folders and import names", 1)[1].split("\n## ", 1)[0]
    for folder in ALLOWED:
        assert f"| `{folder}/` |" in section, folder

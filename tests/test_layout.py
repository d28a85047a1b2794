"""docs/development.md's "Layout" table holds, checked on the real import graph.

The graph is built by tools/import_graph.py from the sources (`ast`: nothing
is imported), every import statement counted, including those inside
functions, since the lazy imports are the ones that drift. The folder ↔
import-name mapping and the package list come from pyproject.toml.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_import_graph() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "import_graph", ROOT / "tools" / "import_graph.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("import_graph", module)  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


import_graph = _load_import_graph()
LAYOUT = import_graph.layout(ROOT)
FOLDERS: dict[str, str] = LAYOUT.folders
SOURCES: list[tuple[str, str]] = list(import_graph.sources_from_folder(ROOT, FOLDERS))
EDGES: dict[str, dict[str, bool]] = import_graph.graph(SOURCES, FOLDERS)
PACKAGE_EDGES = import_graph.package_graph(EDGES, LAYOUT.packages)

# The command line's wing: the console script and everything a terminal needs.
CLI_WING = ("capgen.cli", "capgen.__main__", "capgen.cli_support")
# The wings built on the library; the library imports none of them.
OTHER_WINGS = ("capgen.convert", "capgen.models", "capgen.benchmarks", "capgen.serve", "capgen.ray")
# What a terminal needs and a library must not: the command-line framework, the progress bar.
CLI_LIBRARIES = {"typer", "click", "rich", "tqdm"}

# folder -> the capgen packages its modules may import (docs/development.md "Layout").
ALLOWED = {
    # The command line's wing: the library and itself.
    "capgen/cli_support": {"capgen.cli_support", "capgen.runtime"},
    # The library: itself only.
    "runtime": {"capgen.runtime"},
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
# capgen/__init__.py's lazy public API is for the packages built on the runtime; the
# library and the command line's wing are below it (it exposes them) and cannot lean on it.
BELOW_THE_API = {"runtime", "capgen/cli_support"}


def _in(name: str, packages: tuple[str, ...] | set[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def _modules_in(folder: str) -> dict[str, str]:
    """module name -> source text, for the modules under `folder` (a subfolder of a mapped one too)."""
    found = {}
    for path, text in SOURCES:
        if path.startswith(folder + "/"):
            name = import_graph.module_name(path, FOLDERS)
            if name is not None:
                found[name] = text
    return found


def _allowed(name: str, folder: str) -> bool:
    # `from capgen import __version__` / `Captioner`: the root package's `capgen` node.
    if name == "capgen":
        return folder not in BELOW_THE_API
    return _in(name, ALLOWED[folder])


def test_the_graph_sees_every_package_of_pyproject() -> None:
    """The mapping is read, not copied: every installed package has modules in the graph."""
    assert set(LAYOUT.package_dir) <= set(LAYOUT.packages)
    found = {import_graph.package_of(module, LAYOUT.packages) for module in EDGES}
    assert set(LAYOUT.packages) <= found, set(LAYOUT.packages) - found
    assert "capgen.runtime.captioner" in EDGES and "capgen.ray.cli" in EDGES


def test_no_package_imports_in_a_circle() -> None:
    assert import_graph.cycles(PACKAGE_EDGES) == []


def test_the_circle_finder_finds_circles() -> None:
    """The check above can fail: a made-up graph with one circle is reported."""
    edges = {"a": {"b": ["a.x"]}, "b": {"c": ["b.y"]}, "c": {"a": ["c.z"]}, "d": {"a": ["d.w"]}}
    assert import_graph.cycles(edges) == [["a", "b", "c"]]


def test_the_library_imports_no_command_line_and_no_other_wing() -> None:
    runtime = "capgen.runtime"
    wrong = {
        f"{module} → {target}"
        for module, targets in EDGES.items()
        if _in(module, (runtime,))
        for target in targets
        if not _in(target, (runtime,))
    }
    assert not wrong, sorted(wrong)
    assert set(PACKAGE_EDGES.get(runtime, {})) == set()
    assert not any(_in(p, CLI_WING + OTHER_WINGS) for p in PACKAGE_EDGES.get(runtime, {}))


def test_the_library_imports_no_terminal_libraries() -> None:
    wrong = {
        f"{name}: {library}"
        for name, text in _modules_in("runtime").items()
        for library in import_graph.external_imports(text) & CLI_LIBRARIES
    }
    assert not wrong, sorted(wrong)


def test_no_wing_imports_the_console_script() -> None:
    """Only `python -m capgen` runs the console script; the wings register their commands with it."""
    users = {
        module
        for module, targets in EDGES.items()
        if any(_in(t, ("capgen.cli",)) for t in targets) and module != "capgen.__main__"
    }
    assert users == set(), users


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_each_folder_imports_only_what_the_layout_allows(folder: str) -> None:
    wrong = {
        f"{module}: {target}"
        for module in _modules_in(folder)
        for target in EDGES[module]
        if not _allowed(target, folder)
    }
    assert not wrong, sorted(wrong)


def _layout_table(page: str) -> dict[str, tuple[str, str]]:
    """docs/development.md's layout table: folder -> (import-name cell, may-import cell)."""
    section = page.split("## Layout: folders and import names", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            for folder in re.findall(r"`([^`]+)/`", cells[0]):
                rows[folder] = (cells[1], cells[-1])
    return rows


def _table_disagreements(rows: dict[str, tuple[str, str]]) -> list[str]:
    """Where the table and the rules this file enforces (ALLOWED, pyproject's mapping) differ."""
    wrong = []
    not_installed = {folder for folder, (name, _) in rows.items() if name == "(not installed)"}
    expected_rows = {*ALLOWED, "capgen", *FOLDERS}
    if set(rows) - not_installed != expected_rows:
        wrong.append(f"rows {sorted(set(rows) - not_installed)} != folders {sorted(expected_rows)}")
    for folder, (name_cell, rule) in rows.items():
        if folder in not_installed:
            continue
        name = import_graph.module_name(f"{folder}/__init__.py", FOLDERS)
        if name_cell != f"`{name}`":
            wrong.append(f"{folder}: import name {name_cell}, pyproject.toml says {name}")
        if folder not in ALLOWED:  # the root: it assembles every command
            continue
        # "`a`, `b` (never `c`)": the names before the parenthesis are exactly what the
        # folder may import besides itself; those inside are what it may not.
        allowed_part, _, refused_part = rule.partition("(")
        own = FOLDERS.get(folder, folder.replace("/", "."))
        named = set(re.findall(r"`([^`]+)`", allowed_part))
        if named != ALLOWED[folder] - {own}:
            wrong.append(
                f"{folder}: table allows {sorted(named)}, rules {sorted(ALLOWED[folder] - {own})}"
            )
        if not named and "itself only" not in allowed_part:
            wrong.append(f"{folder}: names nothing and does not say 'itself only': {rule}")
        refused = set(re.findall(r"`([^`]+)`", refused_part))
        wrong += [
            f"{folder}: table refuses {n}, rules allow it" for n in refused if _allowed(n, folder)
        ]
    return wrong


def test_the_documented_layout_table_names_these_rules() -> None:
    """The table says what the rules above enforce: the same folders, names and allowed imports."""
    rows = _layout_table((ROOT / "docs" / "development.md").read_text(encoding="utf-8"))
    assert _table_disagreements(rows) == []


def test_the_table_check_sees_a_stale_table() -> None:
    """The check above can fail: a row allowing more, one allowing less, a missing row."""
    page = (ROOT / "docs" / "development.md").read_text(encoding="utf-8")
    rows = _layout_table(page)
    name, rule = rows["models"]
    more = {
        **rows,
        "models": (name, rule.replace("`capgen.convert`", "`capgen.convert`, `capgen.serve`")),
    }
    less = {**rows, "models": (name, rule.replace("`capgen.convert`", ""))}
    missing = {folder: row for folder, row in rows.items() if folder != "serve"}
    renamed = {**rows, "serve": ("`capgen.server`", rows["serve"][1])}
    for stale in (more, less, missing, renamed):
        assert _table_disagreements(stale)

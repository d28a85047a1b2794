"""Print which capgen module imports which capgen modules, per package, as Markdown.

    python tools/import_graph.py                 # the working tree
    python tools/import_graph.py path/to/checkout
    python tools/import_graph.py --rev 6cc2d59   # a git revision of this repository

The top-level folders map to import names (runtime/ -> capgen.runtime, ...)
through [tool.setuptools] package-dir in pyproject.toml, which this reads
(`layout`): the mapping has that one source. Every import statement counts,
including those inside functions (marked "lazy"): a lazy import is still a
dependency, it only defers the cost. tests/test_layout.py builds the same
graph to check that no package imports in a circle. Only the standard
library is used.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import tomllib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT_PACKAGE = "capgen"


@dataclass(frozen=True)
class Layout:
    """pyproject.toml's [tool.setuptools]: import name -> folder, and the packages it installs."""

    package_dir: dict[str, str]  # {"capgen": "capgen", "capgen.runtime": "runtime", ...}
    packages: tuple[str, ...]  # ("capgen", "capgen.cli_support", "capgen.runtime", ...)

    @property
    def folders(self) -> dict[str, str]:
        """folder -> import name: {"runtime": "capgen.runtime", ...}."""
        return {folder: name for name, folder in self.package_dir.items()}


def layout_from_toml(text: str) -> Layout:
    setuptools = tomllib.loads(text)["tool"]["setuptools"]
    package_dir = dict(setuptools["package-dir"])
    return Layout(package_dir, tuple(setuptools.get("packages", package_dir)))


def layout(root: Path) -> Layout:
    """The layout pyproject.toml in `root` declares."""
    return layout_from_toml((root / "pyproject.toml").read_text(encoding="utf-8"))


def module_name(path: str, folders: dict[str, str]) -> str | None:
    """`convert/encoder.py` -> `capgen.convert.encoder`; None outside the mapped folders."""
    parts = path.split("/")
    if not path.endswith(".py"):
        return None
    for depth in range(len(parts) - 1, 0, -1):  # the deepest mapped folder holding the file
        folder = "/".join(parts[:depth])
        if folder in folders:
            stem = [*parts[depth:-1], parts[-1][: -len(".py")]]
            if stem[-1] == "__init__":
                stem = stem[:-1]
            return ".".join([folders[folder], *stem])
    return None


def sources_from_folder(root: Path, folders: dict[str, str]) -> Iterator[tuple[str, str]]:
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            yield path.relative_to(root).as_posix(), path.read_text(encoding="utf-8")


def _git(repo: Path, *args: str) -> str:
    """The standard output of `git -C repo args…` (a failure raises)."""
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    ).stdout


def layout_at_revision(revision: str, repo: Path) -> Layout:
    return layout_from_toml(_git(repo, "show", f"{revision}:pyproject.toml"))


def sources_from_revision(
    revision: str, repo: Path, folders: dict[str, str]
) -> Iterator[tuple[str, str]]:
    listing = _git(repo, "ls-tree", "-r", "--name-only", revision, "--", *folders).split()
    for path in sorted(listing):
        if path.endswith(".py"):
            yield path, _git(repo, "show", f"{revision}:{path}")


def _is_lazy(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    current = parents.get(node)
    while current is not None:
        if isinstance(current, ast.FunctionDef | ast.AsyncFunctionDef):
            return True
        current = parents.get(current)
    return False


def imports_of(module: str, text: str, is_package: bool, known: set[str]) -> dict[str, bool]:
    """capgen modules imported by `module` -> True when every such import is lazy."""
    tree = ast.parse(text)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found: dict[str, bool] = {}

    def add(target: str, lazy: bool) -> None:
        if target == module or not (target == "capgen" or target.startswith("capgen.")):
            return
        found[target] = found.get(target, True) and lazy

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(_resolve(alias.name, known), _is_lazy(node, parents))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                add(
                    candidate if candidate in known else _resolve(base, known),
                    _is_lazy(node, parents),
                )
    return found


def _resolve(name: str, known: set[str]) -> str:
    """The longest known module prefix of a dotted name (`a.b.c` -> `a.b` if only that exists)."""
    parts = name.split(".")
    while parts and ".".join(parts) not in known:
        parts.pop()
    return ".".join(parts) or name


def package_of(module: str, packages: tuple[str, ...]) -> str:
    """The package `module` belongs to: the longest installed package holding it.

    The root package's own modules are packages of their own: `capgen` (its
    `__init__`, the lazy API) is not `capgen.cli` (the console script, which
    assembles every command), so importing `capgen.__version__` from a wing is
    no circle through the console script.
    """
    holders = [p for p in packages if module == p or module.startswith(p + ".")]
    best = max(holders, key=len, default=ROOT_PACKAGE)
    if best == ROOT_PACKAGE and module != ROOT_PACKAGE:
        return ".".join(module.split(".")[:2])
    return best


def external_imports(text: str) -> set[str]:
    """Top-level names of the non-capgen modules a source imports (`typer`, `numpy`, …), lazy ones included."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names - {ROOT_PACKAGE, "__future__"}


def graph(sources: list[tuple[str, str]], folders: dict[str, str]) -> dict[str, dict[str, bool]]:
    names = {path: module_name(path, folders) for path, _ in sources}
    known = {name for name in names.values() if name}
    result: dict[str, dict[str, bool]] = {}
    for path, text in sources:
        module = names[path]
        if module is None:
            continue
        result[module] = imports_of(module, text, path.endswith("__init__.py"), known)
    return result


def package_graph(
    edges: dict[str, dict[str, bool]], packages: tuple[str, ...]
) -> dict[str, dict[str, list[str]]]:
    """package -> package it imports -> the modules that do (lazy imports included)."""
    result: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for module, targets in edges.items():
        for target in targets:
            source_package = package_of(module, packages)
            target_package = package_of(target, packages)
            if source_package != target_package:
                result[source_package][target_package].append(module)
    return result


def cycles(package_edges: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """Every circle among packages: the strongly connected components of two or more (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in package_edges.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    nodes = set(package_edges) | {t for targets in package_edges.values() for t in targets}
    for node in sorted(nodes):
        if node not in index:
            visit(node)
    return found


def _count(modules: int) -> str:
    return f"{modules} module" + ("" if modules == 1 else "s")


def render(edges: dict[str, dict[str, bool]], title: str, packages: tuple[str, ...]) -> str:
    lines = [f"## {title}", "", "### Packages", ""]
    package_edges = package_graph(edges, packages)
    nodes = sorted({package_of(module, packages) for module in edges})
    for package in nodes:
        targets = package_edges.get(package, {})
        described = ", ".join(
            f"`{target}` ({_count(len(set(modules)))})"
            for target, modules in sorted(targets.items())
        )
        lines.append(f"- `{package}` → {described or 'nothing outside itself'}")
    circles = cycles(package_edges)
    lines += ["", "Package circles: " + ("; ".join(" ↔ ".join(c) for c in circles) or "none"), ""]
    for package in nodes:
        modules = sorted(m for m in edges if package_of(m, packages) == package)
        lines += [f"### `{package}`", ""]
        for module in modules:
            targets = edges[module]
            described = ", ".join(
                f"`{target}`" + (" (lazy)" if lazy else "")
                for target, lazy in sorted(targets.items())
            )
            lines.append(f"- `{module}` → {described or '—'}")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=Path("."), help="a checkout")
    parser.add_argument("--rev", help="read this git revision of the folder's repository instead")
    parser.add_argument("--title", help="the Markdown heading (default: the revision or folder)")
    args = parser.parse_args(argv)
    if args.rev:
        found = layout_at_revision(args.rev, args.folder)
        sources = list(sources_from_revision(args.rev, args.folder, found.folders))
    else:
        found = layout(args.folder)
        sources = list(sources_from_folder(args.folder, found.folders))
    edges = graph(sources, found.folders)
    sys.stdout.write(render(edges, args.title or args.rev or str(args.folder), found.packages))
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()

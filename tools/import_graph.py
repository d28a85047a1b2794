"""Print which capgen module imports which capgen modules, per package, as Markdown.

    python tools/import_graph.py                 # the working tree
    python tools/import_graph.py path/to/checkout
    python tools/import_graph.py --rev 6cc2d59   # a git revision of this repository

The top-level folders map to import names (runtime/ -> capgen.runtime, ...;
see [tool.setuptools] package-dir in pyproject.toml). Every import statement
counts, including those inside functions (marked "lazy"): a lazy import is
still a dependency, it only defers the cost. Only the standard library is used.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

PACKAGES = {
    "capgen": "capgen",
    "runtime": "capgen.runtime",
    "convert": "capgen.convert",
    "models": "capgen.models",
    "benchmarks": "capgen.benchmarks",
}


def _module_name(path: str) -> str | None:
    """`convert/encoder.py` -> `capgen.convert.encoder`; None outside the mapped folders."""
    parts = path.split("/")
    if parts[0] not in PACKAGES or not path.endswith(".py"):
        return None
    stem = [*parts[1:-1], parts[-1][: -len(".py")]]
    if stem[-1] == "__init__":
        stem = stem[:-1]
    return ".".join([PACKAGES[parts[0]], *stem])


def sources_from_folder(root: Path) -> Iterator[tuple[str, str]]:
    for folder in PACKAGES:
        for path in sorted((root / folder).rglob("*.py")):
            yield path.relative_to(root).as_posix(), path.read_text(encoding="utf-8")


def sources_from_revision(revision: str, repo: Path) -> Iterator[tuple[str, str]]:
    listing = subprocess.run(
        ["git", "-C", str(repo), "ls-tree", "-r", "--name-only", revision, "--", *PACKAGES],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for path in sorted(listing):
        if path.endswith(".py"):
            text = subprocess.run(
                ["git", "-C", str(repo), "show", f"{revision}:{path}"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            yield path, text


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


def package_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and parts[1] in PACKAGES else "capgen"


def graph(sources: list[tuple[str, str]]) -> dict[str, dict[str, bool]]:
    names = {path: _module_name(path) for path, _ in sources}
    known = {name for name in names.values() if name}
    result: dict[str, dict[str, bool]] = {}
    for path, text in sources:
        module = names[path]
        if module is None:
            continue
        result[module] = imports_of(module, text, path.endswith("__init__.py"), known)
    return result


def _count(modules: int) -> str:
    return f"{modules} module" + ("" if modules == 1 else "s")


def render(edges: dict[str, dict[str, bool]], title: str) -> str:
    lines = [f"## {title}", "", "### Packages", ""]
    package_edges: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for module, targets in edges.items():
        for target in targets:
            source_package, target_package = package_of(module), package_of(target)
            if source_package != target_package:
                package_edges[source_package][target_package].append(module)
    for package in PACKAGES.values():
        targets = package_edges.get(package, {})
        described = ", ".join(
            f"`{target}` ({_count(len(set(modules)))})"
            for target, modules in sorted(targets.items())
        )
        lines.append(f"- `{package}` → {described or 'nothing outside itself'}")
    lines.append("")
    for package in PACKAGES.values():
        modules = sorted(m for m in edges if package_of(m) == package)
        if not modules:
            continue
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=Path("."), help="a checkout")
    parser.add_argument("--rev", help="read this git revision of the folder's repository instead")
    parser.add_argument("--title", help="the Markdown heading (default: the revision or folder)")
    args = parser.parse_args(argv)
    if args.rev:
        sources = list(sources_from_revision(args.rev, args.folder))
    else:
        sources = list(sources_from_folder(args.folder))
    print(render(graph(sources), args.title or args.rev or str(args.folder)))


if __name__ == "__main__":
    main()

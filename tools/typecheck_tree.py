"""Mirror pyproject's package-dir mapping as a tree of links, so static tools see `capgen/runtime/…`.

The import names (`capgen.runtime`) map to top-level folders (`runtime/`)
through setuptools' `package-dir`, which Python's import system learns from
the editable install's finder but mypy, pyright and IDEs cannot run. This
script builds `build/typecheck/capgen/` with one link per mapped package
(`capgen/runtime -> ../../../runtime`, and each file of `capgen/` itself),
read from pyproject.toml, so the mapping has one source. mypy's
`mypy_path` and pyright's `extraPaths` point at `build/typecheck`.

It prints mypy's targets on stdout: `-p NAME` for each top-level package of
pyproject's `packages` (today `-p capgen`; mypy recurses into every package
under it through the tree), after checking that every listed package is in
the tree, so what mypy checks is what pyproject ships.

Usage: python tools/typecheck_tree.py   (idempotent; `make typecheck` runs
       `mypy $(python tools/typecheck_tree.py)`)
"""

from __future__ import annotations

import os
import shutil
import sys
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TREE = ROOT / "build" / "typecheck"


def _setuptools_config() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as handle:
        config: dict[str, Any] = tomllib.load(handle)["tool"]["setuptools"]
    return config


def package_dirs() -> dict[str, str]:
    """{"capgen": "capgen", "capgen.runtime": "runtime", …} from pyproject.toml."""
    return dict(_setuptools_config()["package-dir"])


def packages() -> list[str]:
    """pyproject's `packages`: every package the distribution ships."""
    return list(_setuptools_config()["packages"])


def link(target: Path, link_path: Path) -> None:
    link_path.parent.mkdir(parents=True, exist_ok=True)
    link_path.symlink_to(os.path.relpath(target, link_path.parent))


def build_tree() -> Path:
    if TREE.exists():
        shutil.rmtree(TREE)
    mapping = package_dirs()
    mapped = {name: ROOT / folder for name, folder in mapping.items()}
    for name, folder in sorted(mapped.items()):
        where = TREE.joinpath(*name.split("."))
        if name == "capgen":  # the root package: link its entries one by one
            where.mkdir(parents=True)
            for entry in folder.iterdir():
                if entry.name != "__pycache__":
                    link(entry, where / entry.name)
        else:
            link(folder, where)
    return TREE


def mypy_targets(tree: Path = TREE) -> list[str]:
    """`-p NAME` for each listed package no other listed package contains (mypy recurses).

    Raises SystemExit naming any listed package the tree lacks (it would go unchecked).
    """
    names = packages()
    missing = [
        name for name in names if not (tree.joinpath(*name.split(".")) / "__init__.py").is_file()
    ]
    if missing:
        raise SystemExit(
            f"{tree}: no package folder for {', '.join(missing)} (pyproject's packages)"
        )
    roots = [name for name in names if not any(name.startswith(f"{other}.") for other in names)]
    return [argument for name in sorted(roots) for argument in ("-p", name)]


if __name__ == "__main__":
    tree = build_tree()
    print(tree, file=sys.stderr)
    print(" ".join(mypy_targets(tree)))

"""Mirror pyproject's package-dir mapping as a tree of links, so static tools see `capgen/runtime/…`.

The import names (`capgen.runtime`) map to top-level folders (`runtime/`)
through setuptools' `package-dir`, which Python's import system learns from
the editable install's finder but mypy, pyright and IDEs cannot run. This
script builds `build/typecheck/capgen/` with one link per mapped package
(`capgen/runtime -> ../../../runtime`, and each file of `capgen/` itself),
read from pyproject.toml, so the mapping has one source. mypy's
`mypy_path` and pyright's `extraPaths` point at `build/typecheck`.

Usage: python tools/typecheck_tree.py   (idempotent; `make typecheck` runs it)
"""

from __future__ import annotations

import os
import shutil
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TREE = ROOT / "build" / "typecheck"


def package_dirs() -> dict[str, str]:
    """{"capgen": "capgen", "capgen.runtime": "runtime", …} from pyproject.toml."""
    with (ROOT / "pyproject.toml").open("rb") as handle:
        config = tomllib.load(handle)
    return dict(config["tool"]["setuptools"]["package-dir"])


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


if __name__ == "__main__":
    print(build_tree(), file=sys.stderr)

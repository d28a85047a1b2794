"""tools/import_graph.py: the import graph the issue's closing note shows, from a folder or a revision."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOL = REPO_ROOT / "tools" / "import_graph.py"


def _run(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(TOOL), *args], capture_output=True, text=True, check=True
    )
    return result.stdout


_PYPROJECT = """
[tool.setuptools]
package-dir = { "capgen.runtime" = "runtime", "capgen.convert" = "convert" }
packages = ["capgen.runtime", "capgen.convert"]
"""


def test_lists_eager_lazy_and_relative_imports_per_package(tmp_path: Path) -> None:
    # The folder <-> import-name mapping is the checkout's pyproject.toml, not a copy in the tool.
    (tmp_path / "pyproject.toml").write_text(_PYPROJECT)
    (tmp_path / "runtime").mkdir()
    (tmp_path / "convert").mkdir()
    (tmp_path / "runtime" / "__init__.py").write_text("")
    (tmp_path / "runtime" / "errors.py").write_text("import json\n")
    (tmp_path / "convert" / "__init__.py").write_text("")
    (tmp_path / "convert" / "a.py").write_text(
        "from capgen.runtime import errors\n"
        "from .b import thing\n"
        "def later():\n"
        "    import capgen.runtime.errors\n"
    )
    (tmp_path / "convert" / "b.py").write_text("def f():\n    from capgen.convert.a import later\n")
    output = _run(str(tmp_path), "--title", "Example")
    assert output.startswith("## Example\n")
    assert "- `capgen.convert` → `capgen.runtime` (1 module)" in output
    assert "- `capgen.convert.a` → `capgen.convert.b`, `capgen.runtime.errors`\n" in output
    assert "- `capgen.convert.b` → `capgen.convert.a` (lazy)\n" in output
    assert "- `capgen.runtime.errors` → —\n" in output
    assert "Package circles: none\n" in output


def test_reports_a_package_circle(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(_PYPROJECT)
    for folder, other in (("runtime", "convert"), ("convert", "runtime")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text("")
        (tmp_path / folder / "m.py").write_text(f"def f():\n    from capgen.{other} import m\n")
    output = _run(str(tmp_path))
    assert "Package circles: capgen.convert ↔ capgen.runtime\n" in output


def test_reads_a_git_revision() -> None:
    if not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    output = _run(str(REPO_ROOT), "--rev", "HEAD")
    assert "`capgen.convert.encoder_registry`" in output
    convert_line = next(
        line for line in output.splitlines() if line.startswith("- `capgen.convert` →")
    )
    assert "capgen.models" not in convert_line

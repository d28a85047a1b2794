"""The documented recipe for provider builds of onnxruntime is capgen's real runtime requirements.

`onnxruntime-openvino` / `onnxruntime-gpu` replace `onnxruntime` (same module),
so docs/cli.md ("Execution providers") installs them with capgen's other
runtime dependencies, then capgen with `--no-deps`. A requirement added to
pyproject.toml and not to the recipe would leave such installs without it; capgen bench and the CI test of
the OpenVINO provider build their venvs from the same list
(capgen.benchmarks.provider_venv), so they prove the recipe works.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from capgen.benchmarks.provider_venv import (
    OPENVINO_BUILD,
    install_commands,
    runtime_dependencies_besides_onnxruntime,
)

CLI_DOCS = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def _recipe_lines() -> list[list[str]]:
    text = CLI_DOCS.read_text(encoding="utf-8")
    section = text[text.index("## Execution providers") :]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None, "no bash block in docs/cli.md's Execution providers section"
    return [shlex.split(line) for line in block.group(1).splitlines() if line.strip()]


def test_documented_recipe_installs_the_provider_build_and_the_other_runtime_needs() -> None:
    first, second, *_ = _recipe_lines()
    assert first[:3] == ["pip", "install", OPENVINO_BUILD]
    expected = runtime_dependencies_besides_onnxruntime()
    assert sorted(first[3:]) == sorted(expected)
    assert not any(item.lower().startswith("onnxruntime") for item in expected)
    # capgen is not on PyPI: the recipe installs the checkout it is run in.
    assert second == ["pip", "install", "--no-deps", "."]


def test_the_venv_builder_runs_the_same_recipe() -> None:
    build, capgen = install_commands(OPENVINO_BUILD, ".", constraints=None)
    first, second, *_ = _recipe_lines()
    assert [a for a in build if a != "--quiet"] == first[1:]
    assert [a for a in capgen if a != "--quiet"] == second[1:]

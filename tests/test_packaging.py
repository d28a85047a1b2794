"""The runtime wheel: no Keras files, typed, licensed; repository-only commands say what they need.

The wheel is what `pip install capgen` puts on an edge box: the 5 MB
model.keras (useless without TensorFlow) stays in the repository and the
sdist for `capgen setup`, and the code that runs only from a checkout
(pyproject.toml's [tool.capgen.wheel] `checkout-only`: the benchmarks,
training and evaluation, the network-namespace Ray cluster) stays out of it.
"""

from __future__ import annotations

import functools
import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> ModuleType:
    """A module of tools/ (not a package), loaded from its file."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "tools" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


import_graph = _tool("import_graph")
wheel_build = _tool("wheel_build")
CHECKOUT_ONLY: tuple[str, ...] = wheel_build.checkout_only()
CAPGEN_SCRIPT = REPO_ROOT / ".venv" / "bin" / "capgen"
KERAS_SUFFIXES = (".keras", ".h5", ".p", ".pkl")


@pytest.fixture(scope="module")
def wheel_names(capgen_wheel: Path) -> list[str]:
    """What the wheel the run builds once (tests/conftest.py) holds."""
    with zipfile.ZipFile(capgen_wheel) as archive:
        return archive.namelist()


@pytest.mark.slow
def test_wheel_has_no_keras_files_and_is_typed_and_licensed(wheel_names: list[str]) -> None:
    assert [name for name in wheel_names if name.endswith(KERAS_SUFFIXES)] == []
    assert not any(
        name.startswith(("capgen/models/photo/", "capgen/models/shapes/")) for name in wheel_names
    )
    assert {"capgen/py.typed", "capgen/runtime/py.typed"} <= set(wheel_names)
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in wheel_names)
    assert "capgen/runtime/captioner.py" in wheel_names


@pytest.mark.slow
def test_wheel_metadata_states_the_spdx_license_and_python_range(
    capgen_wheel: Path, wheel_names: list[str]
) -> None:
    (metadata_name,) = [name for name in wheel_names if name.endswith(".dist-info/METADATA")]
    with zipfile.ZipFile(capgen_wheel) as archive:
        metadata = archive.read(metadata_name).decode()
    assert "License-Expression: MIT" in metadata.splitlines()
    assert "Requires-Python: >=3.11" in metadata.splitlines()
    # Ranges, not pins: capgen installs beside packages that pin differently.
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    runtime = [line for line in requires if "extra ==" not in line]
    assert runtime and not any("==" in line for line in runtime), runtime


@functools.cache
def _checkout_modules() -> dict[str, dict[str, bool]]:
    """The checkout's import graph: module -> the capgen modules it imports (lazy ones too)."""
    folders = import_graph.layout(REPO_ROOT).folders
    return import_graph.graph(list(import_graph.sources_from_folder(REPO_ROOT, folders)), folders)


def _wheel_modules(wheel_names: list[str]) -> set[str]:
    return {
        import_graph.module_name(name, {"capgen": "capgen"})
        for name in wheel_names
        if name.startswith("capgen/") and name.endswith(".py")
    }


# What `capgen setup` imports at run time from models/ (the built-in registry, the
# colour encoder's entry point and the scenes it calibrates on) and what a test
# cluster and training need: a literal list, so an emptied `checkout-only` fails too.
MUST_SHIP = {
    "capgen.cli",
    "capgen.runtime.captioner",
    "capgen.convert.quantize",
    "capgen.models.setup_default",
    "capgen.models.colour_encoder",
    "capgen.models.colour_features",
    "capgen.models.scenes",
    "capgen.serve.app",
    "capgen.ray.data",
}
MUST_NOT_SHIP = {
    "capgen.benchmarks",
    "capgen.benchmarks.cli",
    "capgen.models.train",
    "capgen.models.train_photo",
    "capgen.models.evaluate_photo",
    "capgen.ray.netns_cluster",
}


@pytest.mark.slow
def test_the_wheel_holds_every_module_but_the_checkout_only_ones(wheel_names: list[str]) -> None:
    shipped = _wheel_modules(wheel_names)
    checkout = set(_checkout_modules())
    expected = {m for m in checkout if not wheel_build.is_checkout_only(m, CHECKOUT_ONLY)}
    assert shipped == expected, (sorted(shipped - expected), sorted(expected - shipped))
    assert shipped >= MUST_SHIP, sorted(MUST_SHIP - shipped)
    assert not MUST_NOT_SHIP & shipped, sorted(MUST_NOT_SHIP & shipped)
    assert not [name for name in wheel_names if name.startswith("capgen/benchmarks/")]
    # Every checkout-only name is a real module or package of the checkout (no stale entry).
    assert all(any(wheel_build.is_checkout_only(m, (n,)) for m in checkout) for n in CHECKOUT_ONLY)


# The one import of checkout-only code from the wheel, guarded: without the benchmarks the
# console script registers a `bench` that says it runs from a checkout.
GUARDED_IMPORTS = {("capgen.cli", "capgen.benchmarks.cli")}


@pytest.mark.slow
def test_no_module_in_the_wheel_imports_one_the_wheel_leaves_out(wheel_names: list[str]) -> None:
    shipped = _wheel_modules(wheel_names)
    edges = _checkout_modules()
    missing = {
        f"{module} → {target}"
        for module in shipped
        for target in edges[module]
        if target not in shipped and (module, target) not in GUARDED_IMPORTS
    }
    assert not missing, sorted(missing)


def test_the_import_check_sees_a_wheel_module_importing_a_left_out_one() -> None:
    """The check above can fail: setup's module importing training code is in the graph."""
    text = "from capgen.models.train import train\n"
    found = import_graph.imports_of(
        "capgen.models.setup_default", text, False, set(_checkout_modules())
    )
    assert wheel_build.is_checkout_only(next(iter(found)), CHECKOUT_ONLY)


def test_bench_without_the_benchmarks_says_in_one_line_that_it_runs_from_a_checkout(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the wheel's console script does: capgen.benchmarks is not importable there."""
    from capgen.cli import build_app
    from capgen.cli_support.presenter import run

    class NoBenchmarks:  # the import system as the wheel's: no capgen.benchmarks anywhere
        @staticmethod
        def find_spec(name: str, *args: object) -> None:
            if name == "capgen.benchmarks":
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    for name in [m for m in sys.modules if m.startswith("capgen.benchmarks")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [NoBenchmarks(), *sys.meta_path])
    code = run(build_app(["bench", "--quick"]), ["bench", "--quick"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1, err
    assert "capgen bench runs in a capgen repository checkout" in err[0]
    assert "make bench" in err[0]


@pytest.mark.skipif(not CAPGEN_SCRIPT.exists(), reason=f"{CAPGEN_SCRIPT} not installed")
def test_setup_without_the_default_sources_says_what_it_needs(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(CAPGEN_SCRIPT), "setup", "--sources", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "capgen setup needs the default model's sources (model_*.h5, tokenizer.p)" in lines[0]
    assert "--sources" in lines[0]

"""Fixtures for the web tests: the tiny model (tests/runtime/tiny_model.py), for what needs no built model."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS / "runtime") not in sys.path:
    sys.path.append(str(TESTS / "runtime"))

from tiny_model import write_tiny_model, write_word_gates  # noqa: E402
from web_helpers import (  # noqa: E402
    NodeCaptioner,
    PythonRuntime,
    SiteCache,
    fake_ort_dir,
    ort_dist,
)

from capgen.runtime.manifest import WORD_GATES_FILE  # noqa: E402
from capgen.runtime.optional_files import OptionalFile, add_optional_file  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model folder with an INT8 encoder file (a copy of the FP32 one)."""
    return write_tiny_model(tmp_path_factory.mktemp("web") / "tiny", with_int8=True).folder


@pytest.fixture(scope="session")
def tiny_word_gates_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with word_gates.onnx, as the converter writes every folder since recipe 3."""
    tiny = write_tiny_model(tmp_path_factory.mktemp("web") / "tiny-gates", with_int8=True)
    write_word_gates(tiny.folder, tiny.weights)
    add_optional_file(tiny.folder, OptionalFile.WORD_GATES, WORD_GATES_FILE)
    return tiny.folder


@pytest.fixture()
def fake_ort(tmp_path: Path) -> Path:
    """onnxruntime-web's three files as stand-ins: the export copies them, it does not run them."""
    return fake_ort_dir(tmp_path / "ort")


@pytest.fixture(scope="session")
def web_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeCaptioner]:
    """One Node process for every caption job of the session (web_helpers.NodeCaptioner)."""
    ort_dist()
    captioner = NodeCaptioner(tmp_path_factory.mktemp("web-node"))
    try:
        yield captioner
    finally:
        captioner.close()


@pytest.fixture(scope="session")
def web_sites(tmp_path_factory: pytest.TempPathFactory) -> SiteCache:
    """`capgen export web`'s site for (model, int8, word_gates), written once a session (SiteCache)."""
    return SiteCache(tmp_path_factory.mktemp("web-sites"))


@pytest.fixture(scope="session")
def python_runtime() -> PythonRuntime:
    """The Python side's Captioners and batch features, kept a session (web_helpers.PythonRuntime)."""
    return PythonRuntime()

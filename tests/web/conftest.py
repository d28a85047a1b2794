"""Fixtures for the web tests: the tiny model (tests/runtime/tiny_model.py), for what needs no built model."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS / "runtime") not in sys.path:
    sys.path.append(str(TESTS / "runtime"))

from tiny_model import write_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model folder with an INT8 encoder file (a copy of the FP32 one)."""
    return write_tiny_model(tmp_path_factory.mktemp("web") / "tiny", with_int8=True).folder

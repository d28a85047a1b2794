"""Fixtures shared by the benchmark sections' tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def default_model() -> Path:
    """The default model's folder; the test is skipped where it is not built."""
    from capgen.runtime.captioner import resolve_model_dir
    from capgen.runtime.errors import CapgenError

    try:
        folder, _ = resolve_model_dir(None)
    except CapgenError as exc:
        pytest.skip(f"the default model is not built here ({exc}); `capgen setup` builds it")
    return folder

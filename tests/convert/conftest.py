"""Fixtures shared by the converter's tests: a private CAPGEN_HOME, a fake encoder export."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from capgen.convert import encoder


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("CAPGEN_HOME", str(tmp_path / "home"))
    yield tmp_path / "home"


@pytest.fixture
def exports(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace the TensorFlow export by one that writes recognisable bytes and logs the call."""
    calls: list[str] = []

    def fake_export(kind: str, weights_path: Path, output_path: Path) -> Path:
        calls.append(kind)
        output_path.parent.mkdir(parents=True, exist_ok=True)
        output_path.write_bytes(f"export {len(calls)} of {kind}".encode())
        return output_path

    monkeypatch.setattr(encoder, "export_encoder", fake_export)
    return calls

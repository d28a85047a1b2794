"""Fixtures for the `capgen serve` tests: the tiny model, images, a private cache."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
for helpers in (TESTS / "runtime", TESTS / "serve"):
    if str(helpers) not in sys.path:
        sys.path.append(str(helpers))

from tiny_model import write_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def serve_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("serve") / "model").folder


@pytest.fixture(scope="session")
def serve_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve_home")


def png(colour: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def images() -> dict[str, bytes]:
    return {
        "red": png((220, 20, 20)),
        "green": png((20, 200, 40)),
        "blue": png((20, 30, 210), (64, 48)),
        "html": b"<html><body>not a picture</body></html>",
    }


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "server_args(*args): extra `capgen serve` options for a test"
    )


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test module's tests that share a module-scoped server (or browser) run on one xdist
    worker (`--dist loadgroup`), so it starts once, not once on each worker."""
    for item in items:
        if not item.nodeid.startswith("tests/serve/"):
            continue
        info = getattr(item, "_fixtureinfo", None)
        defs = info.name2fixturedefs if info is not None else {}
        if any(d[-1].scope == "module" for d in defs.values() if d):
            item.add_marker(pytest.mark.xdist_group(f"serve-{item.path.stem}"))

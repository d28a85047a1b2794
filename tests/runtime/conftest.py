"""Fixtures for runtime tests: a tiny model folder and a private cache folder."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from runtime_venvs import RuntimeFlavour, build_runtime_venv
from tiny_model import TinyModel, write_tiny_model

REPO_ROOT = Path(__file__).resolve().parents[2]
CAPGEN_SCRIPT = REPO_ROOT / ".venv" / "bin" / "capgen"


@pytest.fixture(scope="module", autouse=True)
def private_capgen_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Keep verification stamps and the 'default model' out of the developer's real cache.

    Per module: a session-wide CAPGEN_HOME would outlive tests/runtime and hide the
    real cache from the folders collected after it.
    """
    home = tmp_path_factory.mktemp("capgen_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CAPGEN_HOME", str(home))
        yield home


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "model", with_int8=True)


@pytest.fixture(scope="session")
def tiny_captioner(tiny_model: TinyModel):  # type: ignore[no-untyped-def]
    from capgen.runtime.captioner import Captioner

    return Captioner(tiny_model.folder)


@pytest.fixture(scope="session")
def runtime_venvs(
    tmp_path_factory: pytest.TempPathFactory, capgen_wheel: Path
) -> Callable[[RuntimeFlavour], Path]:
    """Build (once per session) the runtime-only venv of a flavour; see runtime_venvs.py."""
    root = tmp_path_factory.mktemp("runtime_venvs")
    return lambda flavour: build_runtime_venv(flavour, root, capgen_wheel)

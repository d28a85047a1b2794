"""Fixtures for hostile-user tests: the real console script, a tiny model, a private cache.

These tests drive `.venv/bin/capgen` in a subprocess the way a user would, so
what they check is what a user sees: one `capgen: …` line per problem, the
documented exit code, never a traceback or a hang (every run has a timeout).
The tiny model and Keras builders are shared with tests/runtime and tests/convert.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
for helpers in (TESTS / "runtime", TESTS / "convert"):
    if str(helpers) not in sys.path:
        sys.path.append(str(helpers))

from capgen_cli import capgen  # noqa: E402
from cli_helpers import Run  # noqa: E402
from tiny_model import TinyModel, write_tiny_model  # noqa: E402

CONSOLE_SCRIPT = TESTS.parent / ".venv" / "bin" / "capgen"


@pytest.fixture(scope="module", autouse=True)
def private_capgen_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """In-process Captioners keep their stamps and graph cache out of the developer's real cache.

    Per module, not per session: a session-wide CAPGEN_HOME outlived tests/hardening
    and hid the real default model from every folder after it (tests/models, tests/ray).
    """
    home = tmp_path_factory.mktemp("hardening_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CAPGEN_HOME", str(home))
        yield home


@pytest.fixture(scope="session")
def capgen_script() -> Path:
    if not CONSOLE_SCRIPT.exists():
        pytest.skip(f"console script {CONSOLE_SCRIPT} not installed (make install creates it)")
    return CONSOLE_SCRIPT


@pytest.fixture(scope="session")
def hardening_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return write_tiny_model(tmp_path_factory.mktemp("hardening") / "model")


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    return tmp_path / "capgen-home"


@pytest.fixture()
def run(capgen_script: Path, home: Path) -> Run:
    """Run `capgen ARGS…` with a private CAPGEN_HOME: in-process unless the test needs a real
    process (tests/capgen_cli.py says when); in a child a hang fails the test via the timeout."""

    def runner(
        *args: str | Path | bytes,
        timeout: float = 120,
        extra_env: dict[str, str] | None = None,
        **kwargs: object,
    ) -> subprocess.CompletedProcess[bytes]:
        env = {**os.environ, "CAPGEN_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "3"}
        env.update(extra_env or {})
        return capgen(*args, env=env, script=capgen_script, timeout=timeout, **kwargs)

    return runner

"""Shared fixtures: where the shared test data lives, and skips that say why.

Tests that need `../shared/data` or the conversion stack skip with a reason
when it is missing; CI has both, so there they run.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import capgen_cli
import pytest
from capgen_wheel import build_capgen_wheel

# onnxruntime's idle threads busy-wait for work, taking cycles the other xdist worker needs on
# CI's 2 cores (tests/runtime under -n 2: 35 instead of 39 CPU-s, docs/cli.md "Sharing
# cores"). Set here, before the workers start, so their subprocesses and Ray nodes inherit
# it; the name is capgen.runtime.session.NO_SPINNING_VAR (not imported: no onnxruntime yet).
os.environ.setdefault("CAPGEN_NO_SPINNING", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
FLICKR_PHOTOS = SHARED_DATA / "flickr8k" / "Flicker8k_Dataset"


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test data not found at {SHARED_DATA} (it is present in CI)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def flickr_photos(shared_data: Path) -> list[Path]:
    photos = sorted(FLICKR_PHOTOS.glob("*.jpg"))
    if not photos:
        pytest.skip(f"no Flickr8k photos in {FLICKR_PHOTOS}")
    return photos


@pytest.fixture(scope="session")
def tensorflow_stack() -> None:
    """Skip unless the conversion extra (TensorFlow, tf2onnx) is installed."""
    missing = [m for m in ("tensorflow", "tf2onnx", "onnx", "h5py") if not _has_module(m)]
    if missing:
        pytest.skip(
            f"conversion stack not installed ({', '.join(missing)}); pip install 'capgen[convert]'"
        )


@pytest.fixture(scope="session")
def tf_keras_stack(tensorflow_stack: None) -> None:
    """Skip unless tf-keras (Keras 2 behaviour) is installed."""
    if not _has_module("tf_keras"):
        pytest.skip("tf-keras not installed (make install adds it with --no-deps)")


@pytest.fixture(scope="session")
def capgen_wheel(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """capgen's wheel, built once per run for every venv the tests build, on every xdist worker.

    The workers' temporary folders share a parent (`pytest-N/popen-gwK`); the wheel goes
    there, built by whichever worker asks first (tests/runtime/runtime_venvs.py).
    """
    base = tmp_path_factory.getbasetemp()
    return build_capgen_wheel(base.parent if worker_id != "master" else base)


# The suite runs on every core (`pytest -n 2 --dist loadgroup`, as `make test` does). Tests
# that share an expensive session fixture (a venv built from the registry, a Ray cluster,
# TensorFlow exports) go to one worker, so it is built once and never twice side by side;
# the Ray cluster's network namespace is also one per machine at a time. A test file nobody
# listed here (new ones appear all the time) is grouped by the fixtures it uses, so it joins
# the group of whatever expensive thing it shares, and is otherwise spread freely.
_GROUP_BY_FIXTURE = {
    "runtime_venvs": "venvs",
    "decoder_only_venv": "venvs",
    "openvino_python": "openvino",
    "cluster": "ray",
    "real_decoders": "keras-decoders",
    "family_exports": "encoder-families",
    "keras_reference": "keras-weights",
}

# Markers that follow from what a test uses (pyproject.toml registers them; `make test-fast`
# deselects all but `subprocess`): a fixture in the test's closure, or the folder it is in.
_MARK_BY_FIXTURE = {
    "tensorflow_stack": "convert",
    "tf_keras_stack": "convert",
    "runtime_venvs": "venv",
    "decoder_only_venv": "venv",
    "openvino_python": "venv",
    "cluster": "ray",
}
_MARK_BY_FOLDER = {"tests/ray/": "ray", "tests/serve/": "serve", "tests/web/": "web"}


def _group(item: pytest.Item, fixtures: tuple[str, ...]) -> str | None:
    if "tests/ray/" in item.nodeid:
        return "ray"
    group = next((g for f, g in _GROUP_BY_FIXTURE.items() if f in fixtures), None)
    if group == "encoder-families":
        # One group per encoder kind (each exported once on its worker), so the four exports,
        # about four minutes together, spread over both workers instead of trailing on one.
        # The tests with no kind parameter read ResNet50's weights.
        callspec = getattr(item, "callspec", None)
        kind = callspec.params.get("kind", "resnet50") if callspec else "resnet50"
        group = f"{group}-{kind}"
    return group


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = tuple(getattr(item, "fixturenames", ()))
        group = _group(item, fixtures)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
        marks = {m for f, m in _MARK_BY_FIXTURE.items() if f in fixtures}
        marks |= {m for folder, m in _MARK_BY_FOLDER.items() if item.nodeid.startswith(folder)}
        for mark in sorted(marks - {m.name for m in item.iter_markers()}):
            item.add_marker(getattr(pytest.mark, mark))


def pytest_runtest_setup(item: pytest.Item) -> None:
    """`capgen(...)` (tests/capgen_cli.py) runs a real process for a test marked `subprocess`."""
    capgen_cli.in_process_allowed = item.get_closest_marker("subprocess") is None


def pytest_runtest_teardown(item: pytest.Item) -> None:
    capgen_cli.in_process_allowed = True

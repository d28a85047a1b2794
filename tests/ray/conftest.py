"""A real Ray cluster for tests/ray: two nodes in a network namespace the session creates.

Skips (with the reason) only when this machine cannot host it: not root,
no `ip netns`, or no ray extra; in CI all three hold, so these tests run.
The cluster's traffic stays on the namespace's loopback device; teardown
(its own processes ended by PID, `ip netns del`) runs whatever happened.
Actors get their own CAPGEN_HOME, so a shipped model is written there and
not into the shared cache.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from ray_images import write_bad_images, write_scenes

from capgen.ray.netns_cluster import NetnsCluster, netns_cluster, why_unavailable
from capgen.runtime.home import default_model_dir

IMAGE_COUNT = 200


@pytest.fixture(scope="session")
def model_folder() -> Path:
    folder = default_model_dir()
    if not (folder / "manifest.json").is_file():
        pytest.skip(f"no default model at {folder}: run `make setup` (CI does)")
    return folder


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsCluster]:
    reason = why_unavailable()
    if reason is not None:
        pytest.skip(reason)
    home = tmp_path_factory.mktemp("actor-home")
    with netns_cluster(
        head_cpus=4, worker_cpus=(4,), label="cgt", env={"CAPGEN_HOME": str(home)}
    ) as running:
        yield running


@pytest.fixture(scope="session")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[Path]]:
    """(200 good images, 2 bad ones), all in one folder."""
    folder = tmp_path_factory.mktemp("scenes")
    return write_scenes(folder, IMAGE_COUNT, seed=13), write_bad_images(folder)

"""A real Ray cluster for tests/ray: two nodes in a network namespace the session creates.

Skips (with the reason) only when this machine cannot host it: not root,
no `ip netns`, or no ray extra; in CI all three hold, so these tests run.
The cluster's traffic stays on the namespace's loopback device; teardown
(its own processes ended by PID, `ip netns del`) runs whatever happened.
Actors get their own CAPGEN_HOME, so a shipped model is written there and
not into the shared cache.
"""

from __future__ import annotations

import contextlib
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


class ClusterWhileNeeded:
    """The two-node cluster, started when a test first asks for it and stopped as soon as the
    next test does not need it (`pytest_runtest_teardown` below), not at the end of the session.

    Idle, the cluster (Ray Data's detached stats and autoscaling actors, two dashboard agents,
    raylets, log monitors, GCS) kept about a fifth of a core busy (measured: 4.2 s of CPU in
    20 idle seconds), for the rest of a suite that is CPU-bound on 2 cores. The cluster tests
    run one after another (`pytest_collection_modifyitems` below); a later test that asks
    again gets a new cluster with the same actor home.
    """

    def __init__(self, home: Path) -> None:
        self.home = home
        self._stack: contextlib.ExitStack | None = None
        self._running: NetnsCluster | None = None

    def get(self) -> NetnsCluster:
        if self._running is None:
            stack = contextlib.ExitStack()
            self._running = stack.enter_context(
                netns_cluster(
                    head_cpus=4, worker_cpus=(4,), label="cgt", env={"CAPGEN_HOME": str(self.home)}
                )
            )
            self._stack = stack
        return self._running

    def stop(self) -> None:
        stack, self._stack, self._running = self._stack, None, None
        if stack is not None:
            stack.close()


_WHILE_NEEDED = pytest.StashKey[ClusterWhileNeeded]()


@pytest.fixture(scope="session")
def cluster_while_needed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ClusterWhileNeeded]:
    reason = why_unavailable()
    if reason is not None:
        pytest.skip(reason)
    holder = ClusterWhileNeeded(tmp_path_factory.mktemp("actor-home"))
    request.config.stash[_WHILE_NEEDED] = holder
    try:
        yield holder
    finally:
        holder.stop()


@pytest.fixture()
def cluster(cluster_while_needed: ClusterWhileNeeded) -> NetnsCluster:
    return cluster_while_needed.get()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The cluster's tests first among tests/ray, in their order: one cluster serves them all."""
    slots = [index for index, item in enumerate(items) if "tests/ray/" in item.nodeid]
    ours = sorted(
        (items[i] for i in slots),
        key=lambda item: "cluster" not in getattr(item, "fixturenames", ()),
    )
    for index, item in zip(slots, ours, strict=True):
        items[index] = item


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Stop the cluster once the next test (None: the last) does not use it."""
    if "cluster" not in getattr(item, "fixturenames", ()):
        return
    if nextitem is not None and "cluster" in getattr(nextitem, "fixturenames", ()):
        return
    holder = item.config.stash.get(_WHILE_NEEDED, None)
    if holder is not None:
        holder.stop()


@pytest.fixture(scope="session")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[Path]]:
    """(200 good images, 2 bad ones), all in one folder."""
    folder = tmp_path_factory.mktemp("scenes")
    return write_scenes(folder, IMAGE_COUNT, seed=13), write_bad_images(folder)

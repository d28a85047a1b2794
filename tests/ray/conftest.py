"""A real Ray cluster for tests/ray: two nodes in a network namespace the session creates.

Skips (with the reason) only when this machine cannot host it: not root,
no `ip netns`, or no ray extra; in CI all three hold, so these tests run.
The cluster's traffic stays on the namespace's loopback device; teardown
(its own processes ended by PID, `ip netns del`) runs whatever happened.
Actors get their own CAPGEN_HOME, so a shipped model is written there and
not into the shared cache.

What these tests cost is CPU on a 2-core CI machine, and most of it is Ray worker
processes (each takes 1.2-1.6 s of CPU to start: Ray Data and pandas imports). So the
nodes announce 2 logical CPUs each, not 4 (Ray Data ran as many read and projection
tasks side by side as there were CPUs, each task in a worker process of its own: the
cluster tests took 132 s of CPU with 4, 115 s with 2), start no workers ahead for the
first driver, and run no log monitor (every driver here calls
`ray.init(log_to_driver=False)`). `serial_captions` is the serial reference the tests
compare with, each image captioned once per session.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from ray_images import write_bad_images, write_scenes

from capgen.ray.netns_cluster import NetnsCluster, netns_cluster, why_unavailable
from capgen.runtime.captioner import Captioner
from capgen.runtime.decoding import DecodingResult
from capgen.runtime.errors import CapgenError
from capgen.runtime.home import default_model_dir

IMAGE_COUNT = 200
# Logical CPUs of each node: room for the caption actors (0.5 CPU each) and a read task
# beside them (actors that take every CPU starve the reads and the job hangs), no more.
NODE_CPUS = 2
# Settings of every node of the test cluster (documented in Ray's ray_config_def.h):
# no idle workers started ahead for the first driver; each job starts what it uses.
CLUSTER_RAY_ENV = {"RAY_prestart_worker_first_driver": "0"}


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
                    head_cpus=NODE_CPUS,
                    worker_cpus=(NODE_CPUS,),
                    label="cgt",
                    env={"CAPGEN_HOME": str(self.home), **CLUSTER_RAY_ENV},
                    log_monitor=False,
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


class SerialCaptions:
    """The serial `Captioner`'s outcome for images, each computed once for the whole session.

    INT8 encoder on one thread, as every caption actor here runs it (0.5 CPU each, so one
    encoder thread): the captions do not depend on the thread count, and one thread does
    not spin a second core (1.5x less CPU than the default two). Images are known by
    their bytes, so a copy of an image already captioned costs nothing.
    """

    def __init__(self, model: Path) -> None:
        self.model = model
        self._captioner: Captioner | None = None
        self._done: dict[tuple[str, int], DecodingResult | CapgenError] = {}

    def __call__(
        self, paths: Sequence[Path | str], beam_size: int
    ) -> dict[str, DecodingResult | CapgenError]:
        """{str(path): outcome} for `paths`, failures as their CapgenError."""
        keys = {
            str(p): (hashlib.sha256(Path(p).read_bytes()).hexdigest(), beam_size) for p in paths
        }
        todo = {key: path for path, key in keys.items() if key not in self._done}
        if todo:
            if self._captioner is None:
                self._captioner = Captioner(self.model, int8=True, threads=1)
            outcomes = self._captioner.caption_batch(
                [Path(p).read_bytes() for p in todo.values()], beam_size=beam_size, errors="return"
            )
            self._done.update(zip(todo, outcomes, strict=True))
        return {path: self._done[key] for path, key in keys.items()}


@pytest.fixture(scope="session")
def serial_captions(model_folder: Path) -> SerialCaptions:
    return SerialCaptions(model_folder)

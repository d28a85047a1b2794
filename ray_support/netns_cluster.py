"""A throwaway Ray cluster inside a network namespace of its own, for tests and benchmarks.

Ray 2.60 advertises the machine's own non-loopback address for a multi-node
cluster (even with --node-ip-address=127.0.0.1), so a test cluster on the
host would listen on the real network. Here every node and every driver runs
in a new namespace (`ip netns add`, root only) whose loopback device carries
the node address 10.x.y.1: nothing of the cluster is reachable from, or
reaches, outside it. `stop()` always ends the nodes' processes, found by the
cluster's own temp dir in their command lines (`ray stop` would end every
Ray process on the machine, other clusters' too), and deletes the namespace.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HEAD_PORT = 6390
WORKER_MANAGER_PORT = 6410  # the first worker's raylet port; the nth adds n
# How long stop() waits after SIGTERM before SIGKILL (the cluster is thrown away either way).
TERM_GRACE_S = 2.0


def why_unavailable() -> str | None:
    """None if this process can make namespaces and run Ray; else the reason."""
    if os.geteuid() != 0:
        return "needs root to create a network namespace (ip netns add)"
    if shutil.which("ip") is None:
        return "needs the ip command (iproute2) for ip netns"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"ip netns is unavailable: {probe.stderr.strip()}"
    try:
        import ray  # noqa: F401
    except ImportError:
        return "needs the ray extra: pip install 'capgen[ray]'"
    return None


def _bin(name: str) -> str:
    """A console script of this interpreter's environment (ray, capgen)."""
    return str(Path(sys.executable).with_name(name))


@dataclass
class NetnsCluster:
    """`ray start` head and workers in namespace `name`, all at `address` on its loopback."""

    name: str
    subnet: int  # 10.<subnet // 256>.<subnet % 256>.1
    temp_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    workers: int = 0
    # Ray's log monitor on each node copies worker output to drivers that ask for it
    # (ray.init(log_to_driver=True)); off, a node has one process less (it polls the
    # node's log files even when nobody reads them).
    log_monitor: bool = True

    @property
    def ip(self) -> str:
        return f"10.{77 + self.subnet // 256 % 100}.{self.subnet % 256}.1"

    @property
    def address(self) -> str:
        return f"{self.ip}:{HEAD_PORT}"

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def run(self, args: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        """`args` inside the namespace, with the cluster's environment."""
        return subprocess.run(  # type: ignore[call-overload]
            [*self.prefix(), *args],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            check=False,
            **kwargs,
        )

    def _checked(self, args: Sequence[str], what: str, timeout: float = 120) -> None:
        done = self.run(args, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{what} failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")

    def open_namespace(self) -> None:
        """The namespace alone, its loopback up and carrying `ip`; no Ray in it yet."""
        for args in (
            ["ip", "netns", "add", self.name],
            [*self.prefix(), "ip", "link", "set", "lo", "up"],
            [*self.prefix(), "ip", "addr", "add", f"{self.ip}/32", "dev", "lo"],
            [*self.prefix(), "ip", "route", "add", "default", "dev", "lo"],
        ):
            subprocess.run(args, check=True, capture_output=True)

    def start(self, head_cpus: int, worker_cpus: Sequence[int]) -> None:
        self.open_namespace()
        self.env.update(
            RAY_AUTH_MODE="disabled",
            RAY_USAGE_STATS_ENABLED="0",
            RAY_ADDRESS=self.address,
            # The nodes' log and session files: one folder per cluster, removed at stop.
            RAY_TMPDIR=str(self.temp_dir),
            # A killed node is declared dead within about 3 s (it was 10 s, all of it idle
            # time of the job that lost the node): a killed raylet refuses each check at
            # once, while a live but busy one still has Ray's health_check_timeout_ms to
            # answer each check before it counts as failed.
            RAY_health_check_period_ms="1000",
            RAY_health_check_failure_threshold="3",
        )
        self._checked(
            [_bin("ray"), "start", "--head", f"--node-ip-address={self.ip}", f"--port={HEAD_PORT}",
             f"--num-cpus={head_cpus}", "--include-dashboard=false", "--disable-usage-stats",
             f"--temp-dir={self.temp_dir}", *self._log_monitor_args()],
            "ray start --head",
        )  # fmt: skip
        for cpus in worker_cpus:
            self.add_worker(cpus)

    def add_worker(self, cpus: int) -> int:
        """Start one more worker node; returns its raylet port (what `kill_worker` takes)."""
        self.workers += 1
        port = WORKER_MANAGER_PORT + self.workers
        self._checked(
            [_bin("ray"), "start", f"--address={self.address}", f"--node-ip-address={self.ip}",
             f"--num-cpus={cpus}", f"--node-manager-port={port}", "--disable-usage-stats",
             *self._log_monitor_args()],
            "ray start (worker)",
        )  # fmt: skip
        return port

    def _log_monitor_args(self) -> list[str]:
        return [] if self.log_monitor else ["--include-log-monitor=false"]

    def raylet_pids(self, port: int) -> list[int]:
        """The raylet of the node started with `port` (its --node_manager_port)."""
        found = subprocess.run(
            ["pgrep", "-f", f"raylet.*--node_manager_port={port}"],
            capture_output=True,
            text=True,
            check=False,
        )
        return [int(pid) for pid in found.stdout.split()]

    def own_processes(self) -> list[int]:
        """Every process of this cluster: each runs inside its namespace or names its temp dir.

        The namespace is the sure sign (`ip netns pids`): Ray's workers and agents
        rewrite their command lines (`ray::DashboardAgent`), so the temp dir in the
        command line alone misses some of them, and they outlived the cluster.
        """
        found = subprocess.run(
            ["ip", "netns", "pids", self.name], capture_output=True, text=True, check=False
        )
        pids = {int(pid) for pid in found.stdout.split() if pid.isdigit()}
        marker = str(self.temp_dir).encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in pids:
                continue
            with contextlib.suppress(OSError):
                if marker in (entry / "cmdline").read_bytes():
                    pids.add(int(entry.name))
        pids.discard(os.getpid())
        return sorted(pids)

    def stop(self) -> None:
        """End this cluster's processes, and only those, then delete the namespace.

        Not `ray stop`: it ends every Ray process on the machine, other clusters' too.
        SIGTERM gets `TERM_GRACE_S`: workers and agents go at once, but Ray 2.60's
        GCS and raylets, all told at the same time, still ran after 6 s (each waits
        for the other), and the old 10 s grace was idle time in every test's teardown.
        """
        for sig, wait in ((signal.SIGTERM, TERM_GRACE_S), (signal.SIGKILL, 5.0)):
            for pid in self.own_processes():
                with contextlib.suppress(OSError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while self.own_processes() and time.monotonic() < deadline:
                time.sleep(0.2)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def python(
        self, script: str, *args: str, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run a driver script (text) inside the namespace with this environment's python."""
        return self.run([sys.executable, "-c", script, *args], timeout=timeout)


@contextlib.contextmanager
def netns_only(label: str = "capgen", env: dict[str, str] | None = None) -> Iterator[NetnsCluster]:
    """An empty namespace for the `with` block (a driver that starts its own local Ray in it).

    Its `temp_dir` is created, for RAY_TMPDIR; at exit every process in the
    namespace or naming the temp dir is ended and both are removed, as for a cluster.
    """
    unique = f"{os.getpid()}-{time.monotonic_ns() % 100000}"
    temp_dir = Path(f"/tmp/{label}-ray-{unique}")
    space = NetnsCluster(f"{label}-ray-{unique}", os.getpid() % 25600, temp_dir, dict(env or {}))
    try:
        temp_dir.mkdir(mode=0o700)
        space.open_namespace()
        yield space
    finally:
        space.stop()


@contextlib.contextmanager
def netns_cluster(
    head_cpus: int = 4,
    worker_cpus: Sequence[int] = (4,),
    label: str = "capgen",
    env: dict[str, str] | None = None,
    log_monitor: bool = True,
) -> Iterator[NetnsCluster]:
    """A running cluster for the `with` block; stopped and its namespace deleted afterwards, always.

    `log_monitor=False` starts the nodes without Ray's log monitor, for clusters whose
    drivers all call `ray.init(log_to_driver=False)` (nothing would read what it sends).
    """
    unique = f"{os.getpid()}-{time.monotonic_ns() % 100000}"
    # A short temp dir: Ray's socket paths must stay under 107 bytes.
    temp_dir = Path(f"/tmp/{label}-ray-{unique}")
    cluster = NetnsCluster(
        f"{label}-ray-{unique}", os.getpid() % 25600, temp_dir, dict(env or {}),
        log_monitor=log_monitor,
    )  # fmt: skip
    try:
        cluster.start(head_cpus, worker_cpus)
        yield cluster
    finally:
        cluster.stop()

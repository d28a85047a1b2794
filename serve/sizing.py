"""`--workers auto` and `--threads auto`: how many worker processes x encoder threads fit here.

Why this rule (measured on a 16-core Xeon, the default model's INT8 encoder,
64 clients): one process's onnxruntime threads scale poorly (caption_batch 16
images/s at 1 thread, 70 at 16), so one worker cannot use a big machine; but
sixteen 1-thread workers fell to 46 requests/s with p99 5.5 s (8 x 2: 100, p99
2.4 s), while 4 workers x 4 threads gave the most, 117. So `auto` gives each
worker about CORES_PER_WORKER cores: workers = cores / 4 rounded (at least 1),
threads = the cores shared out among them. On 1-5 cores that is one worker
with every core, the single-process server of before. Each worker holds its
own model, so `auto` never starts more workers than the memory available
holds, counting each at WORKER_MEMORY_FACTOR x what the command's own process
holds once it has loaded the model (the model, onnxruntime, Python), the rest
for request bodies, images and allocator arenas in flight.

"The cores" are the ones this process may use: its affinity mask, and a
cgroup CPU quota (cpu.max, or cfs_quota_us in cgroup v1) rounded down;
"memory available" is /proc/meminfo's MemAvailable, or less when a cgroup
memory limit leaves less. Standard library only: settings.py checks explicit
values against the same cores before anything heavy is imported.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

CORES_PER_WORKER = 4  # 4 x 4 was the best split of 16 cores measured (docs/serve.md)
WORKER_MEMORY_FACTOR = 2  # a worker is counted at twice a loaded model's process
_UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as a huge number (2^63 rounded to pages)


@dataclass(frozen=True)
class Machine:
    """The cores this process may use and the memory it may still take (None: unknown)."""

    cores: int
    cores_from: str  # "affinity" or "cgroup quota": which bound applied
    memory_available: int | None = None  # bytes
    memory_from: str = ""  # "MemAvailable" or "cgroup limit"


@dataclass(frozen=True)
class WorkerPlan:
    """What `capgen serve` runs: workers x threads, and why (shown at start and in /v1/model)."""

    workers: int
    threads: int
    auto_workers: bool
    auto_threads: bool
    reason: str  # "auto: 16 cores (affinity), memory for 60 workers (…)"

    def line(self) -> str:
        """`4 workers x 4 threads (auto: 16 cores …)`: the start-up line's words."""
        workers = f"{self.workers} worker{'s' if self.workers != 1 else ''}"
        threads = f"{self.threads} thread{'s' if self.threads != 1 else ''}"
        return f"{workers} x {threads} ({self.reason})"

    def summary(self) -> dict[str, object]:
        return {
            "workers": self.workers,
            "threads_per_worker": self.threads,
            "workers_auto": self.auto_workers,
            "threads_auto": self.auto_threads,
            "reason": self.reason,
        }


def _size(count: int | None) -> str:
    if count is None:
        return "unknown"
    if count >= 1 << 30:
        return f"{count / (1 << 30):.1f} GiB"
    return f"{count / (1 << 20):.0f} MiB"


def plan_workers(
    machine: Machine, workers: int | None, threads: int | None, worker_bytes: int | None
) -> WorkerPlan:
    """The rule (module docstring). None means auto; explicit values are taken as given
    (settings.py has checked them against the cores). `worker_bytes`: what one worker is
    counted at; None (not measured yet) leaves memory out."""
    cores = machine.cores
    said = f"{cores} core{'s' if cores != 1 else ''} ({machine.cores_from})"
    if workers is not None:
        chosen = threads if threads is not None else max(1, cores // workers)
        reason = "as given" if threads is not None else f"threads auto: {said} / {workers}"
        return WorkerPlan(workers, chosen, False, threads is None, reason)
    wanted = max(1, cores // threads) if threads is not None else max(1, round_half_up(cores))
    reason = f"auto: {said}"
    fit = None
    if worker_bytes is not None and worker_bytes > 0 and machine.memory_available is not None:
        fit = machine.memory_available // worker_bytes
        memory = (
            f"{_size(machine.memory_available)} available ({machine.memory_from}), "
            f"{_size(worker_bytes)} a worker"
        )
        if fit < wanted:
            reason += f", memory for only {max(fit, 0)} worker{'s' if fit != 1 else ''}: {memory}"
        else:
            reason += f", memory for {fit}: {memory}"
    count = max(1, min(wanted, fit)) if fit is not None else wanted
    chosen = threads if threads is not None else max(1, cores // count)
    return WorkerPlan(count, chosen, True, threads is None, reason)


def round_half_up(cores: int) -> int:
    """cores / CORES_PER_WORKER rounded half up: 1-5 cores 1 worker, 6-9 two, 16 four."""
    return (cores + CORES_PER_WORKER // 2) // CORES_PER_WORKER


# --- reading the machine ---------------------------------------------------------------------


def affinity_cores() -> int:
    """Cores in this process's affinity mask (the machine's count where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _cgroup_dirs(root: Path, controller: str) -> list[Path]:
    """The folders of this process's cgroup and its ancestors that hold `controller`'s files.

    From /proc/self/cgroup: the v2 line (0::PATH, under /sys/fs/cgroup or its
    `unified` mount) and the v1 line naming the controller (under
    /sys/fs/cgroup/CONTROLLER). In a container the path may not exist inside
    its own view, whose root is then the container's cgroup: the mount's root
    is always included.
    """
    text = _read(root / "proc/self/cgroup") or ""
    mounts = root / "sys/fs/cgroup"
    found: list[Path] = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            bases = [mounts, mounts / "unified"]
        elif controller in controllers.split(","):
            bases = [mounts / controllers, mounts / controller]
        else:
            continue
        relative = Path(path.lstrip("/"))
        for base in bases:
            chain = [base / relative, *[base / parent for parent in relative.parents]]
            found += [folder for folder in chain if folder.is_dir() and folder not in found]
    return found


def quota_cores(root: Path = Path("/")) -> int | None:
    """The smallest cgroup CPU quota over this process's cgroups, in whole cores (at least 1)."""
    quotas: list[float] = []
    for folder in _cgroup_dirs(root, "cpu"):
        text = _read(folder / "cpu.max")  # v2: "QUOTA PERIOD" or "max PERIOD"
        if text is not None:
            fields = text.split()
            if len(fields) == 2 and fields[0] != "max":
                quotas.append(_ratio(fields[0], fields[1]))
        quota = _read(folder / "cpu.cfs_quota_us")  # v1: -1 is none
        period = _read(folder / "cpu.cfs_period_us")
        if quota is not None and period is not None and quota.isdigit() and int(quota) > 0:
            quotas.append(_ratio(quota, period))
    valid = [quota for quota in quotas if quota > 0]
    return max(1, math.floor(min(valid))) if valid else None


def _ratio(quota: str, period: str) -> float:
    try:
        return int(quota) / int(period) if int(period) > 0 else 0.0
    except ValueError:
        return 0.0


def usable_cores(root: Path = Path("/"), affinity: int | None = None) -> tuple[int, str]:
    """(cores this process may use, which bound applied): affinity, or a smaller cgroup quota."""
    mask = affinity_cores() if affinity is None else affinity
    quota = quota_cores(root)
    if quota is not None and quota < mask:
        return quota, "cgroup quota"
    return mask, "affinity"


def memory_available(root: Path = Path("/")) -> tuple[int | None, str]:
    """(bytes this process may still take, from where): MemAvailable, or a tighter cgroup limit."""
    best: int | None = None
    source = ""
    for line in (_read(root / "proc/meminfo") or "").splitlines():
        name, _, value = line.partition(":")
        if name == "MemAvailable" and value.split() and value.split()[0].isdigit():
            best, source = int(value.split()[0]) * 1024, "MemAvailable"
    for folder in _cgroup_dirs(root, "memory"):
        for limit_name, usage_name in (
            ("memory.max", "memory.current"),
            ("memory.limit_in_bytes", "memory.usage_in_bytes"),
        ):
            limit, usage = _read(folder / limit_name), _read(folder / usage_name)
            if limit is None or not limit.isdigit() or int(limit) >= _UNLIMITED:
                continue
            left = max(0, int(limit) - (int(usage) if usage and usage.isdigit() else 0))
            if best is None or left < best:
                best, source = left, "cgroup limit"
    return best, source


def read_machine(root: Path = Path("/"), affinity: int | None = None) -> Machine:
    """This process's cores and available memory, as `auto` counts them."""
    cores, cores_from = usable_cores(root, affinity)
    memory, memory_from = memory_available(root)
    return Machine(cores, cores_from, memory, memory_from)


def resident_bytes(root: Path = Path("/")) -> int | None:
    """This process's resident memory now (VmRSS), or None where /proc has no answer."""
    for line in (_read(root / "proc/self/status") or "").splitlines():
        if line.startswith("VmRSS:") and line.split()[1].isdigit():
            return int(line.split()[1]) * 1024
    return None

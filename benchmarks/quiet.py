"""How quiet the machine was around each benchmark section, and waiting until it is.

These machines are shared: the same `encoder.onnx` measured 40 ms per image
alone and 84-145 ms while another process held a core, so a ratio taken
under load says more about the neighbours than about capgen. Every section
therefore waits until the other processes use less than a threshold of the
cores, records how busy they were while it ran, and is re-run once if they
were busy; what stays noisy is reported as noisy in RESULTS.md instead of
being printed as a clean number.

"Other processes" is everything the kernel counted as busy (psutil's
system-wide CPU times) minus what this process and its children used, so
kernel threads and short-lived processes count too.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any, TypeVar

T = TypeVar("T")

# Cores' worth of CPU the rest of the machine may use while we measure.
QUIET_CORES = 0.15
PROBE_SECONDS = 1.0


def _busy_seconds() -> float:
    """CPU-seconds the whole machine has been busy since boot (all cores)."""
    import psutil

    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


# CPU-seconds of descendants that ended without their time coming back to this process
# (credit_own_seconds); part of `_own_seconds`, so a section's delta includes them.
_credited = 0.0


def credit_own_seconds(seconds: float) -> None:
    """Count `seconds` of CPU as this run's own.

    For descendants whose parent never waits for them: a browser's processes
    under chromedriver (chromium.py) end unreaped, their CPU time counted
    nowhere in this process's children times, so it would read as another
    process's load and mark the section noisy.
    """
    global _credited
    _credited += max(float(seconds), 0.0)


def tree_seconds(pid: int | None = None) -> float:
    """CPU-seconds of process `pid` (default: this one) and its descendants so far.

    Each one's reaped children are included (user, system, children_user,
    children_system); 0 when `pid` has ended.
    """
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for process in processes:
        try:
            total += sum(process.cpu_times()[:4])
        except psutil.Error:  # ended between listing and reading
            continue
    return total


def _own_seconds() -> float:
    """CPU-seconds used by this process and every child it has (including finished ones)."""
    return tree_seconds() + _credited


class _Adopted:
    """CPU time of processes the run started that are not its children.

    A Ray cluster's daemons, actors and workers are reparented when `ray
    start` exits, and actors end with their job, taking their CPU time with
    them. A thread reads their times every `POLL_SECONDS`, so a process that
    ends mid-section still counts as ours (up to its last poll).
    """

    POLL_SECONDS = 0.25

    def __init__(self, pids: Callable[[], Iterable[int]]) -> None:
        self._pids = pids
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._stop = threading.Event()
        self._poll()
        self._first = dict(self._last)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        import psutil

        me = psutil.Process()
        descendants = {me.pid, *(child.pid for child in me.children(recursive=True))}
        for pid in self._pids():
            if pid in descendants:
                continue  # counted by _own_seconds already
            try:
                self._last[pid] = sum(psutil.Process(pid).cpu_times()[:4])
            except psutil.Error:
                continue

    def _run(self) -> None:
        while not self._stop.wait(self.POLL_SECONDS):
            self._poll()

    def seconds(self) -> float:
        """CPU-seconds they used since this object was made (all of it for ones started since)."""
        self._stop.set()
        self._thread.join()
        self._poll()
        return sum(cpu - self._first.get(pid, 0.0) for pid, cpu in self._last.items())


class OtherLoad:
    """Cores used by other processes between `start()` and `cores()`.

    `also_ours` names processes of the run that are not its children (see
    `_Adopted`), so their work is not taken for another process's.
    """

    def __init__(self, also_ours: Callable[[], Iterable[int]] | None = None) -> None:
        self._also_ours = also_ours
        self.start()

    def start(self) -> None:
        self._wall = time.monotonic()
        self._busy = _busy_seconds()
        self._own = _own_seconds()
        self._adopted = _Adopted(self._also_ours) if self._also_ours is not None else None

    def cores(self) -> float:
        wall = max(time.monotonic() - self._wall, 1e-6)
        adopted = self._adopted.seconds() if self._adopted is not None else 0.0
        others = (_busy_seconds() - self._busy) - (_own_seconds() - self._own) - adopted
        return max(others, 0.0) / wall


@dataclass(frozen=True)
class Quietness:
    """How a section's run went: the others' load while it ran, and the waiting before it."""

    other_cores: float  # cores used by other processes while the section ran
    load_average_before: float
    load_average_after: float
    waited_seconds: float
    attempts: int
    quiet: bool

    def as_dict(self) -> dict[str, Any]:
        return {key: round(value, 3) if isinstance(value, float) else value
                for key, value in asdict(self).items()}  # fmt: skip


def wait_until_quiet(
    max_wait: float,
    threshold: float = QUIET_CORES,
    probe: float = PROBE_SECONDS,
    also_ours: Callable[[], Iterable[int]] | None = None,
) -> tuple[bool, float]:
    """Probe until the other processes use less than `threshold` cores; (quiet, seconds waited)."""
    started = time.monotonic()
    while True:
        load = OtherLoad(also_ours)
        time.sleep(probe)
        if load.cores() < threshold:
            return True, time.monotonic() - started
        if time.monotonic() - started >= max_wait:
            return False, time.monotonic() - started


def measured_quietly(
    section: Callable[[], T],
    echo: Callable[[str], None],
    name: str,
    max_wait: float,
    retries: int = 1,
    threshold: float = QUIET_CORES,
    also_ours: Callable[[], Iterable[int]] | None = None,
) -> tuple[T, Quietness]:
    """Run `section` on a quiet machine if possible; re-run it up to `retries` times if it was not.

    Returns the quietest attempt's result and how quiet it was.
    """
    best: tuple[T, Quietness] | None = None
    waited_total = 0.0
    for attempt in range(1, retries + 2):
        _, waited = wait_until_quiet(max_wait, threshold, also_ours=also_ours)
        waited_total += waited
        before = os.getloadavg()[0]
        load = OtherLoad(also_ours)
        result = section()
        others = load.cores()
        quietness = Quietness(
            other_cores=others,
            load_average_before=before,
            load_average_after=os.getloadavg()[0],
            waited_seconds=waited_total,
            attempts=attempt,
            quiet=others < threshold,
        )
        if best is None or quietness.other_cores < best[1].other_cores:
            best = (result, quietness)
        if quietness.quiet:
            break
        echo(
            f"  {name}: other processes used {quietness.other_cores:.2f} cores while it ran"
            + ("; running it again" if attempt <= retries else "; reported as noisy")
        )
    assert best is not None
    result, quietness = best
    return result, replace(quietness, attempts=attempt, waited_seconds=waited_total)

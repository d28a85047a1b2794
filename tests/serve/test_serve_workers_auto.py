"""Issue 25 (`--workers auto`, the default) and the supervisor's back-off for workers that crash
before they are ready.

The rule is a pure function (serve/sizing.py), tested on made-up machines,
and the machine reader on fake /proc and /sys trees; bad option values go
through the CLI in-process; the rest runs the real console script on a free
loopback port. A worker that crashes while it starts is made with a
`sitecustomize` on PYTHONPATH that SIGKILLs a spawned worker as it imports
serve/workers.py (what the OOM killer does to a worker loading its model).
Every wait is bounded (serve_helpers.WAIT_S, subprocess timeouts); nothing
asserts a speed.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest.importorskip(
    "fastapi",
    reason="the serve extra is not installed: pip install 'capgen[serve]' (make install adds it)",
)
pytest.importorskip("httpx", reason="httpx (dev extra) is not installed")
pytest.importorskip("psutil", reason="psutil (dev extra) is not installed")

import psutil
from serve_helpers import CONSOLE_SCRIPT, WAIT_S, Server, start_server, until

from capgen.runtime.errors import InputError
from capgen.serve.settings import ServeSettings, cores, parse_count
from capgen.serve.sizing import Machine, WorkerPlan, plan_workers, read_machine
from capgen.serve.workers import GIVE_UP_AFTER, RESTART_DELAY_CAP_S, restart_delay

GiB = 1 << 30
MiB = 1 << 20
PLAN = re.compile(r"^capgen: ([0-9]+) workers? x ([0-9]+) threads? \((.*)\)$")
PNG = {"Content-Type": "image/png"}
READY = re.compile(r"^capgen: worker ([0-9]+) ready$")
Start = Callable[..., Server]


def _plan(
    cores: int, workers: int | None = None, threads: int | None = None, **memory: int
) -> WorkerPlan:
    machine = Machine(cores, "affinity", memory.get("available"), "MemAvailable")
    return plan_workers(machine, workers, threads, memory.get("worker"))


# --- the rule, as a pure function ----------------------------------------------------------


@pytest.mark.parametrize(
    ("cores", "expected"),
    [(1, (1, 1)), (2, (1, 2)), (5, (1, 5)), (6, (2, 3)), (8, (2, 4)), (16, (4, 4)), (64, (16, 4))],
)
def test_auto_gives_each_worker_about_four_cores(cores: int, expected: tuple[int, int]) -> None:
    plan = _plan(cores, available=512 * GiB, worker=300 * MiB)
    assert (plan.workers, plan.threads) == expected
    assert plan.auto_workers and plan.auto_threads
    assert plan.workers * plan.threads <= cores
    assert plan.reason.startswith(f"auto: {cores} core")


def test_auto_never_starts_more_workers_than_memory_holds() -> None:
    plan = _plan(16, available=1 * GiB + 100 * MiB, worker=512 * MiB)
    assert (plan.workers, plan.threads) == (2, 8)  # the cores go to the workers that fit
    assert "memory for only 2 workers" in plan.reason
    starved = _plan(16, available=100 * MiB, worker=512 * MiB)
    assert (starved.workers, starved.threads) == (1, 16)  # one: the command's own model loaded
    unknown = _plan(16, worker=512 * MiB)  # no MemAvailable: cores alone
    assert (unknown.workers, unknown.threads) == (4, 4)


def test_explicit_values_are_taken_and_the_other_one_follows() -> None:
    given = _plan(16, workers=2, threads=3, available=100 * MiB, worker=512 * MiB)
    assert (given.workers, given.threads, given.reason) == (2, 3, "as given")
    assert not given.auto_workers and not given.auto_threads
    threads_auto = _plan(16, workers=2)
    assert (threads_auto.workers, threads_auto.threads, threads_auto.auto_threads) == (2, 8, True)
    workers_auto = _plan(16, threads=1, available=2 * GiB, worker=512 * MiB)
    assert (workers_auto.workers, workers_auto.threads) == (4, 1)  # 16 wanted, 4 fit
    assert (_plan(2, threads=1).workers, _plan(2, threads=1).threads) == (2, 1)


# --- reading the machine: affinity, cgroup quota and memory --------------------------------


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_a_cgroup_v2_quota_and_memory_limit_bound_auto(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "proc/self/cgroup": "0::/system.slice/capgen.service\n",
            "proc/meminfo": "MemTotal: 67108864 kB\nMemAvailable: 33554432 kB\n",
            "sys/fs/cgroup/cgroup.controllers": "cpu memory\n",
            "sys/fs/cgroup/system.slice/capgen.service/cpu.max": "250000 100000\n",
            "sys/fs/cgroup/system.slice/capgen.service/memory.max": f"{3 * GiB}\n",
            "sys/fs/cgroup/system.slice/capgen.service/memory.current": f"{1 * GiB}\n",
        },
    )
    machine = read_machine(root, affinity=16)
    assert (machine.cores, machine.cores_from) == (2, "cgroup quota")  # 2.5 cores, rounded down
    assert (machine.memory_available, machine.memory_from) == (2 * GiB, "cgroup limit")
    plan = plan_workers(machine, None, None, worker_bytes=300 * MiB)
    assert (plan.workers, plan.threads) == (1, 2)
    assert "2 cores (cgroup quota)" in plan.reason


def test_a_quota_on_a_parent_cgroup_counts_and_max_means_none(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "proc/self/cgroup": "0::/kubepods/pod1/ctr\n",
            "proc/meminfo": "MemAvailable: 1048576 kB\n",
            "sys/fs/cgroup/kubepods/pod1/ctr/cpu.max": "max 100000\n",
            "sys/fs/cgroup/kubepods/pod1/cpu.max": "800000 100000\n",
            "sys/fs/cgroup/kubepods/pod1/ctr/memory.max": "max\n",
        },
    )
    machine = read_machine(root, affinity=32)
    assert (machine.cores, machine.memory_available) == (8, 1 * GiB)
    assert machine.memory_from == "MemAvailable"
    assert read_machine(root, affinity=4).cores_from == "affinity"  # the mask is smaller
    plan = plan_workers(machine, None, None, worker_bytes=400 * MiB)
    assert (plan.workers, plan.threads) == (2, 4)


def test_cgroup_v1_quota_and_limit(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "proc/self/cgroup": "4:memory:/job\n2:cpu,cpuacct:/job\n1:name=systemd:/\n",
            "proc/meminfo": "MemAvailable: 8388608 kB\n",
            "sys/fs/cgroup/cpu,cpuacct/job/cpu.cfs_quota_us": "100000\n",
            "sys/fs/cgroup/cpu,cpuacct/job/cpu.cfs_period_us": "100000\n",
            "sys/fs/cgroup/memory/job/memory.limit_in_bytes": "9223372036854771712\n",
            "sys/fs/cgroup/memory/job/memory.usage_in_bytes": "1000\n",
        },
    )
    machine = read_machine(root, affinity=2)
    assert (machine.cores, machine.cores_from) == (1, "cgroup quota")
    assert (machine.memory_available, machine.memory_from) == (8 * GiB, "MemAvailable")
    plan = plan_workers(machine, None, None, worker_bytes=300 * MiB)
    assert (plan.workers, plan.threads) == (1, 1)
    unlimited = _tree(tmp_path, {"sys/fs/cgroup/cpu,cpuacct/job/cpu.cfs_quota_us": "-1\n"})
    assert read_machine(unlimited, affinity=2).cores == 2


# --- bad values: one line, exit 2 (in-process) ---------------------------------------------


def _serve_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    from capgen.cli import build_app
    from capgen.cli_support.presenter import run

    argv = ["serve", "--port", "0", *args]
    code = run(build_app(argv), argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--workers", "0"), "--workers must be an integer from 1 to {cores} or auto"),
        (("--workers", "abc"), "--workers must be auto or a whole number, got 'abc'"),
        (("--workers", "-1"), "--workers must be auto or a whole number, got '-1'"),
        (("--workers", "{over}"), "--workers must be an integer from 1 to {cores} or auto"),
        (("--threads", "{over}"), "--threads must be an integer from 1 to {cores} or auto"),
        (("--threads", "1.5"), "--threads must be auto or a whole number, got '1.5'"),
        (("--workers", ""), "--workers must be auto or a whole number, got ''"),
    ],
)
def test_bad_workers_and_threads_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...], fragment: str
) -> None:
    here = cores()
    values = [arg.format(over=here + 1) for arg in args]
    code, err = _serve_cli(capsys, *values)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("capgen: error: "), err
    assert fragment.format(cores=here) in err, err


def test_auto_and_numbers_parse_and_settings_keep_them() -> None:
    assert parse_count("--workers", "auto") is None
    assert parse_count("--workers", " AUTO ") is None
    assert parse_count("--workers", "1") == 1
    assert ServeSettings().workers is None and ServeSettings().threads is None  # auto: default
    with pytest.raises(InputError, match="from 1 to"):
        ServeSettings(workers=cores(), threads=2)
    resolved = ServeSettings(workers=1, threads=1, plan=_plan(1))  # what serve() hands on
    assert ServeSettings.from_json(resolved.to_json()) == resolved
    assert resolved.threads_per_worker == 1


# --- the back-off, as a pure function -------------------------------------------------------


def test_the_restart_delay_doubles_is_bounded_and_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    delays = [restart_delay(exits) for exits in range(0, GIVE_UP_AFTER + 1)]
    assert delays[0] == 0.0  # a worker that had been ready is replaced at once
    assert delays[1:GIVE_UP_AFTER] == [0.5, 1.0, 2.0, 4.0]
    assert delays[GIVE_UP_AFTER] is None
    # --restart-delay-s sets the first; its default is this one, and it is bounded by the cap.
    assert ServeSettings().restart_delay_s == 0.5
    short = [restart_delay(exits, 0.05) for exits in range(0, GIVE_UP_AFTER + 1)]
    assert short == [0.0, 0.05, 0.1, 0.2, 0.4, None]
    for bad in (0, -1, RESTART_DELAY_CAP_S + 1, float("nan")):
        with pytest.raises(InputError, match="--restart-delay-s must be a number more than 0"):
            ServeSettings(restart_delay_s=bad)
    import capgen.serve.workers as workers

    monkeypatch.setattr(workers, "GIVE_UP_AFTER", 100)
    long = [workers.restart_delay(exits) for exits in range(1, 30)]
    assert max(d for d in long if d is not None) == RESTART_DELAY_CAP_S
    assert all(a is not None and b is not None and a <= b for a, b in itertools.pairwise(long))


# --- the real server ------------------------------------------------------------------------


def _spawned(pid: int) -> list[int]:
    """The worker processes alive now (spawned children, not zombies)."""
    alive = []
    for child in psutil.Process(pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(child.cmdline()):
                alive.append(child.pid)
        except psutil.Error:
            pass
    return alive


def _plan_line(lines: list[str]) -> tuple[int, int, str]:
    found = [PLAN.match(line) for line in lines]
    matches = [m for m in found if m]
    assert len(matches) == 1, lines
    return int(matches[0].group(1)), int(matches[0].group(2)), matches[0].group(3)


@pytest.fixture()
def served(serve_model: Path, serve_home: Path) -> Iterator[Start]:
    """`served(*args, env=…)`: a running `capgen serve` of the tiny model, stopped afterwards."""
    running: list[Iterator[Server]] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Server:
        server = start_server(serve_model, serve_home, *args, env=env)
        running.append(server)
        return next(server)

    yield start
    for server in running:
        server.close()  # type: ignore[attr-defined]


def test_the_default_is_auto_and_starts_what_the_rule_says(
    served: Start, images: dict[str, bytes]
) -> None:
    machine = read_machine()
    if machine.memory_available is None or machine.memory_available < 4 * GiB:
        pytest.skip("under 4 GiB available: memory, not the cores, would decide the count here")
    expected = plan_workers(machine, None, None, worker_bytes=None)
    server = served()  # no --workers, no --threads
    until(lambda: any(PLAN.match(line) for line in server.lines), "the plan line")
    workers, threads, reason = _plan_line(server.lines)
    assert (workers, threads) == (expected.workers, expected.threads), server.lines
    assert reason.startswith(f"auto: {machine.cores} core"), reason
    with server.client() as client:
        summary = client.get("/v1/model").json()["workers"]
        answer = client.post("/v1/captions", content=images["red"], headers=PNG)
    assert summary["workers"] == workers and summary["threads_per_worker"] == threads
    assert summary["workers_auto"] is True and summary["threads_auto"] is True
    assert answer.status_code == 200
    # One worker is the single-process server; several are spawned children.
    assert len(_spawned(server.process.pid)) == (workers if workers > 1 else 0)
    assert server.terminate() == 0


def test_workers_auto_with_one_thread_starts_a_worker_per_core(
    served: Start, images: dict[str, bytes]
) -> None:
    here = cores()
    if here < 2:
        pytest.skip("one core: auto with --threads 1 is one worker, no supervisor to see")
    if (read_machine().memory_available or 0) < 4 * GiB:
        pytest.skip("under 4 GiB available: memory, not the cores, would decide the count here")
    server = served("--workers", "auto", "--threads", "1")
    assert _plan_line(server.lines)[:2] == (here, 1), server.lines
    until(
        lambda: sum(bool(READY.match(line)) for line in server.lines) == here, "every worker ready"
    )
    assert len(_spawned(server.process.pid)) == here
    with server.client() as client:
        summary = client.get("/v1/model").json()["workers"]
        statuses = {
            client.post(
                "/v1/captions", content=images["green"], headers={**PNG, "Connection": "close"}
            ).status_code
            for _ in range(6)
        }
    assert summary == {**summary, "workers": here, "threads_per_worker": 1, "threads_auto": False}
    assert statuses == {200}
    assert server.terminate() == 0


# --- workers that crash before they are ready -----------------------------------------------

# Runs in every Python process started with this PYTHONPATH; acts only in spawned workers
# (their command line ends with --multiprocessing-fork), when they import serve/workers.py,
# which they do while reading their start-up data: SIGKILL, as the OOM killer would.
# With a marker path, only the first worker to get there crashes.
_SITECUSTOMIZE = """
import os, sys
if "--multiprocessing-fork" in sys.orig_argv:
    class _CrashOnStart:
        def find_spec(self, name, path=None, target=None):
            if name == "capgen.serve.workers":
                marker = os.environ.get("CAPGEN_TEST_CRASH_ONCE")
                if marker:
                    try:
                        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                    except FileExistsError:
                        return None
                os.kill(os.getpid(), 9)
            return None
    sys.meta_path.insert(0, _CrashOnStart())
"""


def _crashing_env(tmp_path: Path, once: bool) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    if once:
        env["CAPGEN_TEST_CRASH_ONCE"] = str(tmp_path / "crashed-once")
    return env


def _two_workers(serve_model: Path, *args: str) -> list[str]:
    return [
        str(CONSOLE_SCRIPT),
        "serve",
        "--model",
        str(serve_model),
        "--port",
        "0",
        "--workers",
        "2",
        *args,
    ]


def _always_crashing_env(serve_home: Path, tmp_path: Path) -> dict[str, str]:
    """The whole environment of a `capgen serve` whose workers crash every time they start."""
    return {**os.environ, "CAPGEN_HOME": str(serve_home), **_crashing_env(tmp_path, once=False)}


def test_workers_that_keep_crashing_before_ready_back_off_then_give_up_with_exit_3(
    serve_model: Path, serve_home: Path, tmp_path: Path
) -> None:
    if cores() < 2:
        pytest.skip("--workers 2 needs 2 cores (workers x threads <= cores); one runs in-process")
    # The back-off's first delay set small (--restart-delay-s): the same doubling, 0.75 s in
    # all per worker instead of 7.5 s at the default (whose values the tests above and below
    # check: the pure function, and the 0.5 s and 1 s of the two tests around this one).
    done = subprocess.run(
        _two_workers(serve_model, "--restart-delay-s", "0.05"),
        capture_output=True,
        text=True,
        timeout=180,  # this only stops a hang
        env=_always_crashing_env(serve_home, tmp_path),
        stdin=subprocess.DEVNULL,
    )
    lines = done.stderr.splitlines()
    assert done.returncode == 3, lines
    assert "Traceback" not in done.stderr, lines
    backed_off = [
        float(m.group(1))
        for line in lines
        if (
            m := re.search(
                r"code -9; starting a new one in ([0-9.]+) s \(before it was ready: ", line
            )
        )
    ]
    assert sorted(backed_off) == sorted([0.05, 0.1, 0.2, 0.4] * 2), lines  # per worker, doubling
    gave_up = [
        line for line in lines if f"{GIVE_UP_AFTER} times in a row; it is not replaced" in line
    ]
    assert len(gave_up) == 2, lines
    errors = [line for line in lines if line.startswith("capgen: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines  # one line, the last one said
    assert errors[0].startswith(
        "capgen: error: no worker could start: workers exited before they were ready "
        f"{GIVE_UP_AFTER} times in a row (the last: worker "
    ), errors
    assert errors[0].endswith("exited with code -9 (SIGKILL)); see the lines above"), errors


def test_a_worker_that_crashes_once_while_starting_is_restarted_and_serves(
    served: Start, images: dict[str, bytes], tmp_path: Path
) -> None:
    if cores() < 2:
        pytest.skip("--workers 2 needs 2 cores (workers x threads <= cores); one runs in-process")
    server = served("--workers", "2", env=_crashing_env(tmp_path, once=True))
    until(lambda: any("starting a new one in 0.5 s" in line for line in server.lines), "back-off")
    until(lambda: sum(bool(READY.match(line)) for line in server.lines) == 2, "two workers ready")
    assert len(_spawned(server.process.pid)) == 2
    with server.client() as client:
        statuses = {
            client.post(
                "/v1/captions", content=images["blue"], headers={**PNG, "Connection": "close"}
            ).status_code
            for _ in range(6)
        }
    assert statuses == {200}
    assert not any("; it is not replaced" in line or "Traceback" in line for line in server.lines)
    assert server.terminate() == 0


def test_sigterm_during_the_back_off_ends_the_command_with_exit_0(
    serve_model: Path, serve_home: Path, tmp_path: Path
) -> None:
    """A restart still waiting is dropped: SIGTERM while workers back off stops the command."""
    if cores() < 2:
        pytest.skip("--workers 2 needs 2 cores (workers x threads <= cores); one runs in-process")
    process = subprocess.Popen(
        _two_workers(serve_model),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_always_crashing_env(serve_home, tmp_path),
    )
    guard = threading.Timer(WAIT_S * 2, process.kill)  # reading stderr must not hang the test
    guard.start()
    lines: list[str] = []
    try:
        assert process.stderr is not None
        for line in process.stderr:  # ends when the process exits (or the guard kills it)
            lines.append(line.rstrip("\n"))
            if "starting a new one in 1 s" in line and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=WAIT_S) == 0, lines
    finally:
        guard.cancel()
        if process.poll() is None:
            process.kill()
            process.wait(timeout=WAIT_S)
    assert any("starting a new one in 1 s" in line for line in lines), lines
    assert not any("; it is not replaced" in line for line in lines), lines  # stopped first
    assert not any("capgen: error" in line or "Traceback" in line for line in lines), lines

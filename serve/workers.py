"""`--workers`: capgen's own small supervisor of N worker processes on one listening socket.

The command binds the socket once (server.listen); each worker is a
`multiprocessing` spawn child that receives it, loads its own Captioner and
only then serves it with `DrainingServer.serve(sockets=[sock])`, uvicorn's
public API for a server on a socket it did not bind. A worker whose model
fails to load therefore never accepts a connection: it says why in one
line and exits MODEL_FAILED, and is not started again (it would fail the
same way, and answer 503 `model_failed` to its share of the clients in the
meantime). When no worker is left the command ends with a ModelError (exit 3).

A worker that dies otherwise (killed, crashed) is replaced, with one line:
at once if it had been serving; if it died before it was ready (killed
while loading, out of memory, a native crash), after a back-off that
doubles from RESTART_DELAY_S (`--restart-delay-s`), and after GIVE_UP_AFTER such exits in a row
not at all, so a deployment that cannot start fails in seconds instead of
spinning. When no worker is left the command ends with a ModelError (exit
3: no worker could start with this model here).

The first SIGTERM or SIGINT starts the drain: the supervisor closes its own
copy of the socket and passes SIGTERM on to every worker, each drains
(server.py) and exits, then the supervisor returns (exit 0). A second
Ctrl-C passes SIGINT on, which stops the workers at once. `/metrics` is
per worker.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from capgen.cli_support.console import say
from capgen.runtime.errors import ModelError
from capgen.serve.server import DrainingServer, configure_logging, uvicorn_config
from capgen.serve.settings import MAX_RESTART_DELAY_S, RESTART_DELAY_S, ServeSettings

MODEL_FAILED = 3  # a worker's exit code when its model failed to load: not replaced
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# A worker that exits before it is ready (killed while loading, out of memory, a crash in a
# native library) is started again after RESTART_DELAY_S, doubling each time in a row up to
# RESTART_DELAY_CAP_S; after GIVE_UP_AFTER such exits in a row it is not started again.
RESTART_DELAY_CAP_S = MAX_RESTART_DELAY_S
GIVE_UP_AFTER = 5


def restart_delay(exits_in_a_row: int, first: float = RESTART_DELAY_S) -> float | None:
    """Seconds before starting a worker again after its `exits_in_a_row`-th exit before ready
    (0 after one that had been ready; `first` after the first); None: give up, it is not
    started again."""
    if exits_in_a_row <= 0:
        return 0.0
    if exits_in_a_row >= GIVE_UP_AFTER:
        return None
    return float(min(first * 2 ** (exits_in_a_row - 1), RESTART_DELAY_CAP_S))


def killed_by(code: int | None) -> str:
    """` (SIGKILL)` after `code -9`: the signal an exit code stands for; "" for none."""
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f" ({signal.Signals(-code).name})"
    return ""


def worker_main(settings: ServeSettings, sock: socket.socket, ready: Any) -> None:
    """One worker process: load the model, then serve the shared socket until drained.

    `ready` is a shared byte (multiprocessing RawValue, no lock a killed worker could
    hold) set to 1 once this worker serves: how the supervisor tells a worker that
    crashed while starting (back off) from one that crashed later (replace at once)."""
    # Until the server installs its own handlers: a signal while the model loads just ends
    # the worker (the supervisor is stopping, or replaces it), without a traceback.
    for sig in STOP_SIGNALS:
        signal.signal(sig, _leave)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked by start_worker
    configure_logging()
    from capgen.runtime.captioner import Captioner
    from capgen.serve.app import create_app, warm_up
    from capgen.serve.errors import one_line

    try:
        captioner = Captioner(
            settings.model, threads=settings.threads_per_worker, int8=settings.int8
        )
        warm_up(captioner)
    except Exception as error:  # any failure: this worker must not enter the rotation
        say(f"capgen: worker {os.getpid()}: the model failed to load: {one_line(str(error))}")
        sys.exit(MODEL_FAILED)
    # load_first: the server listens once the app's own (second, quick) warm-up is done.
    app = create_app(lambda: captioner, settings, load_first=True)

    def serving() -> None:
        ready.value = 1

    server = DrainingServer(
        uvicorn_config(app, settings),
        lambda: app.state.service,
        exit_if_model_fails=True,
        on_ready=serving,
    )
    server.run(sockets=[sock])
    if app.state.service.load_error is not None:  # the warm-up batch failed
        sys.exit(MODEL_FAILED)


def _leave(sig: int, frame: FrameType | None) -> None:
    sys.exit(0)


@dataclass
class Worker:
    """A worker process, its ready flag, and how many times in a row its place saw an exit
    before ready (the back-off's count)."""

    process: BaseProcess
    ready: Any
    exits_before_ready: int = 0


@dataclass
class Supervisor:
    """Keeps `settings.workers` workers on `sock` until a signal, then waits for their drain."""

    settings: ServeSettings
    sock: socket.socket
    workers: list[Worker] = field(default_factory=list)
    restarts: list[tuple[float, int]] = field(default_factory=list)  # (when, exits in a row)
    stopping: bool = False
    interrupts: int = 0
    last_failure: str = ""  # why the last worker was not replaced: the command's error

    def __post_init__(self) -> None:
        self.context = multiprocessing.get_context("spawn")
        self.wake_read, self.wake_write = os.pipe()
        os.set_blocking(self.wake_write, False)

    def start_worker(self, exits_before_ready: int = 0) -> None:
        ready = self.context.RawValue("b", 0)
        process = self.context.Process(
            target=worker_main, args=(self.settings, self.sock, ready), name="capgen-serve-worker"
        )
        # The child inherits these signals blocked (a signal mask survives exec): one sent
        # while it starts stays pending until worker_main has its handlers, instead of ending
        # it with Python's KeyboardInterrupt traceback. Here too it only waits a moment.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            process.start()
        except OSError as error:  # killed before it read its start-up data (EPIPE), no memory
            self._back_off(
                f"a worker could not start ({error.strerror or error})", None, exits_before_ready
            )
            return
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        self.workers.append(Worker(process, ready, exits_before_ready))

    def on_signal(self, sig: int, frame: FrameType | None) -> None:
        """Only flags and a wake-up byte here (a signal handler); the loop does the work."""
        if sig == signal.SIGINT:
            self.interrupts += 1
        self.stopping = True
        with contextlib.suppress(BlockingIOError):  # wake-ups are pending already
            os.write(self.wake_write, b"\0")

    def run(self) -> None:
        previous = {
            sig: signal.signal(sig, self.on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            for _ in range(self.settings.workers or 1):
                self.start_worker()
            self._supervise()
            self._drain()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(self.wake_read)
            os.close(self.wake_write)
        if not self.workers and self.last_failure and not self.stopping:
            raise ModelError(self.last_failure)

    def _supervise(self) -> None:
        """Replace workers that die until a signal comes, or none is left to replace."""
        while not self.stopping and (self.workers or self.restarts):
            due = min((when for when, _ in self.restarts), default=None)
            timeout = None if due is None else max(0.0, due - time.monotonic())
            wait([self.wake_read, *(w.process.sentinel for w in self.workers)], timeout)
            for worker in [w for w in self.workers if not w.process.is_alive()]:
                worker.process.join()
                self.workers.remove(worker)
                if not self.stopping:
                    self._replace(worker)
            now = time.monotonic()
            for restart in [r for r in self.restarts if r[0] <= now and not self.stopping]:
                self.restarts.remove(restart)
                self.start_worker(restart[1])

    def _replace(self, worker: Worker) -> None:
        """Start another in its place: at once, after a back-off, or never (with its line)."""
        pid, code = worker.process.pid, worker.process.exitcode
        if code == MODEL_FAILED:
            say(f"capgen: worker {pid} exited: its model failed to load; it is not replaced")
            self.last_failure = (
                f"no worker could load the model: worker {pid} exited: its model failed to load"
            )
            return
        if worker.ready.value:  # it had served: a crash of its own, replaced at once
            say(f"capgen: worker {pid} exited with code {code}; starting a new one")
            self.start_worker()
            return
        self._back_off(f"worker {pid} exited with code {code}", code, worker.exits_before_ready)

    def _back_off(self, what: str, code: int | None, exits_before: int) -> None:
        """One more exit before ready in a row: start another after restart_delay, or give up."""
        exits = exits_before + 1
        delay = restart_delay(exits, self.settings.restart_delay_s)
        if delay is None:
            self.last_failure = (
                f"no worker could start: workers exited before they were ready {exits} times "
                f"in a row (the last: {what}{killed_by(code)}); see the lines above"
            )
            say(
                f"capgen: {what}{killed_by(code)} before it was ready, {exits} times in a "
                "row; it is not replaced"
            )
            return
        say(
            f"capgen: {what}; starting a new one in {delay:g} s (before it was ready: "
            f"{exits} in a row; after {GIVE_UP_AFTER} it is not replaced)"
        )
        self.restarts.append((time.monotonic() + delay, exits))

    def _drain(self) -> None:
        """Pass the signal on; the listening socket closes when the last worker has drained."""
        self.restarts.clear()
        self.sock.close()
        if not self.workers:
            return
        for worker in self.workers:
            _signal(worker.process, signal.SIGTERM)
        forwarded = 1
        while self.workers:
            wait([self.wake_read, *(w.process.sentinel for w in self.workers)])
            _drain_pipe(self.wake_read)
            if self.interrupts > forwarded:  # a second Ctrl-C: stop the workers now
                forwarded = self.interrupts
                for worker in self.workers:
                    _signal(worker.process, signal.SIGINT)
            for worker in [w for w in self.workers if not w.process.is_alive()]:
                worker.process.join()
                self.workers.remove(worker)


def _signal(worker: BaseProcess, sig: int) -> None:
    if worker.pid is not None and worker.exitcode is None:
        with contextlib.suppress(ProcessLookupError):  # it has just exited
            os.kill(worker.pid, sig)


def _drain_pipe(fd: int) -> None:
    os.set_blocking(fd, False)
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 64):
            pass


def run_workers(settings: ServeSettings, sock: socket.socket) -> None:
    """Serve with `settings.workers` processes until drained (ModelError: none could start)."""
    Supervisor(settings, sock).run()

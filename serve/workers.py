"""`--workers N`: capgen's own small supervisor of N worker processes on one listening socket.

The command binds the socket once (server.listen); each worker is a
`multiprocessing` spawn child that receives it, loads its own Captioner and
only then serves it with `DrainingServer.serve(sockets=[sock])`, uvicorn's
public API for a server on a socket it did not bind. A worker whose model
fails to load therefore never accepts a connection: it says why in one
line and exits MODEL_FAILED, and is not started again (it would fail the
same way, and answer 503 `model_failed` to its share of the clients in the
meantime). When no worker is left the command ends with a ModelError (exit 3).

A worker that dies otherwise (killed, crashed) is replaced, with one line.
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
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType

from capgen.runtime.errors import ModelError
from capgen.serve.server import DrainingServer, configure_logging, say, uvicorn_config
from capgen.serve.settings import ServeSettings

MODEL_FAILED = 3  # a worker's exit code when its model failed to load: not replaced
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def worker_main(settings: ServeSettings, sock: socket.socket) -> None:
    """One worker process: load the model, then serve the shared socket until drained."""
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
    server = DrainingServer(
        uvicorn_config(app, settings), lambda: app.state.service, exit_if_model_fails=True
    )
    server.run(sockets=[sock])
    if app.state.service.load_error is not None:  # the warm-up batch failed
        sys.exit(MODEL_FAILED)


def _leave(sig: int, frame: FrameType | None) -> None:
    sys.exit(0)


@dataclass
class Supervisor:
    """Keeps `settings.workers` workers on `sock` until a signal, then waits for their drain."""

    settings: ServeSettings
    sock: socket.socket
    workers: list[BaseProcess] = field(default_factory=list)
    stopping: bool = False
    interrupts: int = 0
    last_failure: str = ""

    def __post_init__(self) -> None:
        self.context = multiprocessing.get_context("spawn")
        self.wake_read, self.wake_write = os.pipe()
        os.set_blocking(self.wake_write, False)

    def start_worker(self) -> None:
        worker = self.context.Process(
            target=worker_main, args=(self.settings, self.sock), name="capgen-serve-worker"
        )
        # The child inherits these signals blocked (a signal mask survives exec): one sent
        # while it starts stays pending until worker_main has its handlers, instead of ending
        # it with Python's KeyboardInterrupt traceback. Here too it only waits a moment.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            worker.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        self.workers.append(worker)

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
            for _ in range(self.settings.workers):
                self.start_worker()
            self._supervise()
            self._drain()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(self.wake_read)
            os.close(self.wake_write)
        if not self.workers and self.last_failure and not self.stopping:
            raise ModelError(f"no worker could load the model: {self.last_failure}")

    def _supervise(self) -> None:
        """Replace workers that die until a signal comes, or no worker can load the model."""
        while not self.stopping and self.workers:
            wait([self.wake_read, *(w.sentinel for w in self.workers)])
            for worker in [w for w in self.workers if not w.is_alive()]:
                worker.join()
                self.workers.remove(worker)
                if self.stopping:
                    continue
                if worker.exitcode == MODEL_FAILED:
                    self.last_failure = f"worker {worker.pid} exited: its model failed to load"
                    say(f"capgen: {self.last_failure}; it is not replaced")
                    continue
                say(
                    f"capgen: worker {worker.pid} exited with code {worker.exitcode}; starting a new one"
                )
                self.start_worker()

    def _drain(self) -> None:
        """Pass the signal on; the listening socket closes when the last worker has drained."""
        self.sock.close()
        if not self.workers:
            return
        for worker in self.workers:
            _signal(worker, signal.SIGTERM)
        forwarded = 1
        while self.workers:
            wait([self.wake_read, *(w.sentinel for w in self.workers)])
            _drain_pipe(self.wake_read)
            if self.interrupts > forwarded:  # a second Ctrl-C: stop the workers now
                forwarded = self.interrupts
                for worker in self.workers:
                    _signal(worker, signal.SIGINT)
            for worker in [w for w in self.workers if not w.is_alive()]:
                worker.join()
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
    """Serve with `settings.workers` processes until drained (ModelError: none could load)."""
    Supervisor(settings, sock).run()

"""Running the app under uvicorn, with a drain on SIGTERM (and Ctrl-C).

uvicorn alone stops accepting connections on SIGTERM, so a load balancer
sees refused connections, and `/readyz` never turns false. Here the first
SIGTERM or SIGINT starts a drain instead: `/readyz` answers 503, new caption
requests get 503 `draining` (every answer with `Connection: close`, on new
and kept-alive connections alike), queued images run at once, and when no
caption request is in flight the server shuts down and the process exits 0.
Shutting down takes the connections queued on the listener before closing
it and answers them, so a request already sent is answered, never reset;
later connections are refused, which a balancer retries elsewhere. A
second Ctrl-C stops at once; a repeated SIGTERM (systemd signals every
process of the service, then the supervisor signals its workers) does not
cut the drain short.

`--workers N` runs N processes (capgen's own supervisor, workers.py), each
with its own Captioner and N-th of the cores, each draining on its own;
`--workers auto` (the default) chooses N and the threads (sizing.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

from capgen.cli_support.console import say
from capgen.runtime.errors import InputError
from capgen.serve.app import Service, create_app, warm_up
from capgen.serve.settings import ServeSettings
from capgen.serve.sizing import (
    WORKER_MEMORY_FACTOR,
    Machine,
    memory_available,
    plan_workers,
    resident_bytes,
    usable_cores,
)

if TYPE_CHECKING:
    from capgen.runtime.captioner import Captioner


class DrainingServer(uvicorn.Server):
    """uvicorn's server, but the first SIGTERM/SIGINT drains instead of closing the door."""

    def __init__(
        self,
        config: uvicorn.Config,
        service_of: Callable[[], Service | None],
        exit_if_model_fails: bool = False,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config)
        self.on_ready = on_ready  # a worker tells its supervisor (workers.py) it is serving
        self.service_of = service_of  # the app's Service, once the app is loaded
        # A worker (--workers N) whose model fails to load leaves instead of answering 503
        # model_failed to its share of the clients; one process alone stays up to report it.
        self.exit_if_model_fails = exit_if_model_fails
        self.drain_requested = False
        self.drain_started = False
        self.announced = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain_requested:
            if sig == signal.SIGINT:  # a second Ctrl-C: stop now
                self.should_exit = self.force_exit = True
            return
        # Only a flag here (a signal handler); the drain itself starts in on_tick, on the loop.
        self.drain_requested = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Take the connections waiting in the listen queue, then close the listener.

        Closing a listening socket resets the connections the kernel has
        queued on it, requests already sent included; taken first, they are
        answered (503 `draining`, protocol.py) instead. Connections that come
        after the close are refused, which a client or load balancer can retry.
        """
        waiting = [conn for sock in sockets or [] for conn in _accept_waiting(sock)]
        for server in self.servers:  # at once: no await between the last accept and the close
            server.close()
        for sock in sockets or []:
            sock.close()
        loop = asyncio.get_running_loop()
        config = self.config
        for conn in waiting:
            await loop.connect_accepted_socket(
                lambda: config.http_protocol_class(  # type: ignore[call-arg]
                    config=config, server_state=self.server_state, app_state=self.lifespan.state
                ),
                sock=conn,
            )
        await super().shutdown(sockets)

    async def on_tick(self, counter: int) -> bool:
        service = self.service_of()
        if (
            self.exit_if_model_fails
            and service is not None
            and service.load_error is not None
            and not self.should_exit
        ):
            say("capgen: this worker's model failed to load; the worker leaves the rotation")
            self.should_exit = True
        if (
            self.exit_if_model_fails
            and not self.announced
            and service is not None
            and service.load_error is None
            and service.ready
        ):
            self.announced = True  # a worker of several: the supervisor's log says which is up
            if self.on_ready is not None:
                self.on_ready()
            say(f"capgen: worker {os.getpid()} ready")
        if self.drain_requested:
            if service is None:
                self.should_exit = True
            elif not self.drain_started:
                self.drain_started = True
                service.begin_drain()
                say("capgen: draining: finishing requests in flight, refusing new ones")
            if service is not None and service.state.in_flight == 0:
                self.should_exit = True
        return await super().on_tick(counter)


def _accept_waiting(sock: socket.socket) -> list[socket.socket]:
    """Every connection queued on a (non-blocking) listening socket now."""
    taken: list[socket.socket] = []
    while True:
        try:
            conn, _ = sock.accept()
        except (BlockingIOError, InterruptedError, OSError):
            return taken
        conn.setblocking(False)
        taken.append(conn)


def listen(host: str, port: int) -> socket.socket:
    """A listening socket for host:port, or one line saying why not (address in use, …)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as error:
        raise InputError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    sock.set_inheritable(True)
    return sock


def configure_logging() -> None:
    """One JSON line per request on stderr (capgen.serve.access); uvicorn's own at warning."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access = logging.getLogger("capgen.serve.access")
    access.handlers[:] = [handler]
    access.setLevel(logging.INFO)
    access.propagate = False
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)


def serve(settings: ServeSettings) -> None:
    """Load the model (a bad one is a one-line error before binding), then serve until drained."""
    from capgen.runtime.captioner import Captioner
    from capgen.runtime.identity import DEMONSTRATION_NOTE

    cores, cores_from = usable_cores()
    plan = plan_workers(Machine(cores, cores_from), settings.workers, settings.threads, None)
    captioner = Captioner(settings.model, threads=plan.threads, int8=settings.int8)
    if settings.workers is None:  # auto: never more workers than memory holds
        measured = _worker_bytes(captioner)
        machine = Machine(cores, cores_from, *memory_available())  # read once the model is in
        by_cores = plan
        plan = plan_workers(machine, None, settings.threads, measured)
        if plan.workers == 1 and plan.threads != by_cores.threads:  # memory left room for one
            captioner = Captioner(settings.model, threads=plan.threads, int8=settings.int8)
    settings = dataclasses.replace(settings, workers=plan.workers, threads=plan.threads, plan=plan)
    if captioner.is_demonstration:  # the manifest says so, not the folder's name
        say(f"capgen: note: {DEMONSTRATION_NOTE}")
    sock = listen(settings.host, settings.port)
    configure_logging()
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    say(f"capgen: {plan.line()}")
    workers = f", {plan.workers} workers" if plan.workers > 1 else ""
    say(f"capgen: serving {captioner.manifest.name} on http://{shown}:{port}{workers}")
    if plan.workers > 1:
        del captioner  # each worker process loads its own
        from capgen.serve.workers import run_workers

        run_workers(settings, sock)
        return
    app = create_app(lambda: captioner, settings)
    DrainingServer(uvicorn_config(app, settings), lambda: app.state.service).run(sockets=[sock])


def _worker_bytes(captioner: Captioner) -> int | None:
    """What `auto` counts one worker at: this process once its model has captioned one blank
    image (weights mapped from disk count once touched), x WORKER_MEMORY_FACTOR. None where
    it cannot be told; a model that fails here fails in the workers too, which say why."""
    try:
        warm_up(captioner)
    except Exception:  # reported by the server itself: 503 model_failed, or exit 3
        return None
    resident = resident_bytes()
    return None if resident is None else resident * WORKER_MEMORY_FACTOR


def uvicorn_config(app: object, settings: ServeSettings, **extra: object) -> uvicorn.Config:
    """uvicorn's settings: h11 with bounded heads, head and keep-alive timeouts (protocol.py)."""
    from capgen.serve.protocol import KEEP_ALIVE_S, MAX_HEAD_BYTES, protocol_class

    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        http=protocol_class(settings.head_timeout_s),
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        timeout_keep_alive=KEEP_ALIVE_S,
        log_config=None,
        access_log=False,  # capgen.serve.access writes one structured line per request
        server_header=False,
        lifespan="on",
        timeout_graceful_shutdown=int(settings.timeout_s) + 5,
        **extra,  # type: ignore[arg-type]
    )

"""`--workers N`: N uvicorn worker processes on one listening socket, each with its own Captioner.

uvicorn's supervisor spawns the workers; each builds its app with
`app_from_environment` (the settings travel in an environment variable, the
model is loaded in the worker) and runs the draining server. On SIGTERM the
supervisor signals every worker; each drains (finishes its requests in
flight) and exits 0, then the supervisor exits. `/metrics` is per worker.
"""

from __future__ import annotations

import os
import socket

from fastapi import FastAPI
from uvicorn.supervisors import multiprocess

from capgen.runtime.captioner import Captioner
from capgen.serve.app import Service, create_app
from capgen.serve.server import DrainingServer, configure_logging, uvicorn_config
from capgen.serve.settings import ServeSettings

SETTINGS_ENV = "CAPGEN_SERVE_SETTINGS"
APP_FACTORY = "capgen.serve.workers:app_from_environment"
_service: Service | None = None  # this worker's, once its app is built


def current_service() -> Service | None:
    return _service


def app_from_environment() -> FastAPI:
    """uvicorn's app factory in each worker process."""
    global _service
    settings = ServeSettings.from_json(os.environ[SETTINGS_ENV])
    configure_logging()

    def captioner() -> Captioner:
        return Captioner(settings.model, threads=settings.threads_per_worker, int8=settings.int8)

    app = create_app(captioner, settings)
    _service = app.state.service
    return app


class DrainingProcess(multiprocess.Process):
    """A worker whose server drains on SIGTERM (uvicorn's would stop accepting at once)."""

    @property
    def server(self) -> DrainingServer:
        if self._server is None:
            self._server = DrainingServer(
                config=self.config, service_of=current_service, exit_if_model_fails=True
            )
        return self._server  # type: ignore[return-value]


def run_workers(settings: ServeSettings, sock: socket.socket) -> None:
    os.environ[SETTINGS_ENV] = settings.to_json()
    config = uvicorn_config(APP_FACTORY, settings, factory=True, workers=settings.workers)
    # The supervisor makes its workers from this module global; ours drain.
    multiprocess.Process = DrainingProcess  # type: ignore[misc]
    multiprocess.Multiprocess(config, sockets=[sock]).run()

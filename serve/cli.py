"""`capgen serve`: the command line of the HTTP service; imports no FastAPI until it runs.

Without the `serve` extra the command says in one line what to install
(exit 2, a usage problem); every bad option is one line with exit 2, a bad
model exit 3, as everywhere in capgen.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated

import typer

from capgen.cli_support.usage_errors import OneLineUsageCommand
from capgen.runtime.errors import InputError
from capgen.serve.settings import (
    API_KEY_ENV,
    HEAD_TIMEOUT_S,
    RESTART_DELAY_S,
    ServeSettings,
    parse_count,
)

# import name -> distribution, for the one-line message
SERVE_EXTRA = {
    "fastapi": "fastapi",
    "uvicorn": "uvicorn",
    "python_multipart": "python-multipart",
    "prometheus_client": "prometheus-client",
}


class ServeExtraMissing(InputError):
    """The `serve` extra is not installed."""


def require_serve_extra() -> None:
    missing = [
        dist for module, dist in SERVE_EXTRA.items() if importlib.util.find_spec(module) is None
    ]
    if missing:
        raise ServeExtraMissing(
            f"capgen serve needs the serve extra ({', '.join(missing)} missing): "
            "pip install 'capgen[serve]'"
        )


def serve_command(
    model: Annotated[
        Path | None, typer.Option("--model", "-m", help="Model folder (default: capgen setup's).")
    ] = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on (loopback unless told).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free port, shown at start).")] = 8000,
    workers: Annotated[
        str,
        typer.Option(
            metavar="N|auto",
            help="Worker processes, each with its own model (auto: about one per 4 cores, "
            "as many as memory holds; docs/serve.md).",
        ),
    ] = "auto",
    threads: Annotated[
        str,
        typer.Option(
            metavar="N|auto", help="Encoder threads per worker (auto: the cores shared out)."
        ),
    ] = "auto",
    int8: Annotated[bool, typer.Option("--int8", help="Use the model's INT8 encoder.")] = False,
    max_batch: Annotated[int, typer.Option(help="Most images in one model batch.")] = 8,
    max_wait_ms: Annotated[
        float, typer.Option(help="Longest wait for a batch to fill, in ms.")
    ] = 5.0,
    max_queue: Annotated[int, typer.Option(help="Most images waiting; more: 503.")] = 64,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body, MB; more: 413.")] = 20.0,
    timeout_s: Annotated[float, typer.Option(help="Longest a request may take; more: 504.")] = 30.0,
    head_timeout_s: Annotated[
        float, typer.Option(help="Longest a client may take to send a request head; more: closed.")
    ] = HEAD_TIMEOUT_S,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar=API_KEY_ENV,
            show_envvar=True,
            help="Require Authorization: Bearer KEY (prefer the environment variable).",
        ),
    ] = None,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(help="Allow this browser origin (repeatable); CORS is off without it."),
    ] = None,
    max_beam: Annotated[int, typer.Option(help="Largest beam_size a request may ask for.")] = 10,
    max_uploads: Annotated[
        int, typer.Option(help="Request bodies read at once; more: 503 busy.")
    ] = 16,
    restart_delay_s: Annotated[
        float,
        typer.Option(
            help="A worker that exits before it is ready starts again after this, "
            "doubling each time in a row (at most 8 s).",
        ),
    ] = RESTART_DELAY_S,
    insecure_public: Annotated[
        bool,
        typer.Option(
            "--insecure-public",
            help="Allow a non-loopback --host without --api-key (anyone who can reach it may use it).",
        ),
    ] = False,
) -> None:
    """Serve captions over HTTP: POST /v1/captions, GET /v1/model, /healthz, /readyz, /metrics, /."""
    settings = ServeSettings(
        model=model,
        host=host,
        port=port,
        workers=parse_count("--workers", workers),
        threads=parse_count("--threads", threads),
        int8=int8,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        max_queue=max_queue,
        max_body_mb=max_body_mb,
        timeout_s=timeout_s,
        head_timeout_s=head_timeout_s,
        api_key=api_key,
        cors_origins=tuple(cors_origin or ()),
        max_beam=max_beam,
        max_uploads=max_uploads,
        restart_delay_s=restart_delay_s,
        insecure_public=insecure_public,
    )
    require_serve_extra()
    from capgen.serve.server import serve

    serve(settings)


def register_serve_command(app: typer.Typer) -> None:
    """Add `serve` to the root app (capgen/cli.py)."""
    app.command("serve", cls=OneLineUsageCommand)(serve_command)

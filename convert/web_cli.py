"""`capgen export web DIR`: the command over capgen.convert.web_export."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from capgen.cli_support.console import escape_controls, write_stdout
from capgen.cli_support.usage_errors import OneLineUsageCommand


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def export_web_command(
    out_dir: Annotated[
        Path, typer.Argument(metavar="DIR", help="The site folder to write (new or empty).")
    ],
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            metavar="<path>",
            help="Model folder, or the NAME of one in $CAPGEN_HOME/models (default: capgen setup's).",
        ),
    ] = None,
    int8: Annotated[
        bool,
        typer.Option(
            "--int8", help="Ship the model's INT8 encoder (a quarter of the FP32 encoder's size)."
        ),
    ] = False,
    ort_dir: Annotated[
        Path | None,
        typer.Option(
            "--ort-dir",
            metavar="<path>",
            help="onnxruntime-web's dist folder (default: web/node_modules/onnxruntime-web/dist, from `make web`).",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace a site capgen exported there before.")
    ] = False,
) -> None:
    """Write a static web site that captions images in the browser (onnxruntime-web, no server code)."""
    from capgen.convert.web_export import export_web

    site = export_web(out_dir, model=model, int8=int8, ort_dir=ort_dir, force=force)
    write_stdout(
        escape_controls(
            f"wrote {site.folder}: model {site.model!r}{' (INT8 encoder)' if site.int8 else ''}, "
            f"{len(site.files)} files, {_megabytes(site.total_bytes)} "
            f"(model {_megabytes(site.model_bytes)}); serve it over https or from localhost "
            f"with the headers in {site.folder / '_headers'} (docs/web.md)"
        )
        + "\n"
    )


def register_export_commands(app: typer.Typer) -> None:
    """`capgen export web` (the root app's `export` group)."""
    from capgen.cli_support.usage_errors import OneLineUsageGroup

    export_app = typer.Typer(
        cls=OneLineUsageGroup,
        help="Export a model for another platform: `web`, a static site for the browser.",
        no_args_is_help=True,
    )
    export_app.command("web", cls=OneLineUsageCommand)(export_web_command)
    app.add_typer(export_app, name="export")

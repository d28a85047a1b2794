"""`capgen bench`: run the benchmark suite against the tutorial's Keras code."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def bench_command(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for results.json, RESULTS.md, the chart.")
    ] = Path("benchmarks/results"),
    quick: Annotated[bool, typer.Option(help="A few repetitions only (smoke run).")] = False,
) -> None:
    """Measure capgen against the tutorial's Keras code in one run; write JSON, Markdown and a chart."""
    from capgen.convert.cli import require_convert_stack

    require_convert_stack()
    from capgen.benchmarks.run import run_benchmarks

    run_benchmarks(output_dir=output, quick=quick, echo=typer.echo)


def register_bench_command(app: typer.Typer) -> None:
    app.command("bench")(bench_command)

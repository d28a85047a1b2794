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
    section: Annotated[
        list[str] | None,
        typer.Option(
            "--section",
            help="Run only this section (repeatable): tutorial, ceiling, encoder-kinds, "
            "int8-accuracy, peers, web. Its results replace the same entries of --output's "
            "results.json; the rest stays.",
        ),
    ] = None,
) -> None:
    """Measure capgen against the tutorial's Keras code in one run; write JSON, Markdown and a chart.

    Runs in a capgen repository checkout with ../shared/data beside it (the tutorial
    script, its decoder config and the Flickr8k photos): an installed capgen has neither.
    """
    from capgen.convert.cli import require_convert_stack

    _require_checkout()
    require_convert_stack()
    from capgen.benchmarks.run import check_sections, run_benchmarks

    if section:
        check_sections(section)  # a typo fails here, not after the model preparation
    run_benchmarks(output_dir=output, quick=quick, echo=typer.echo, sections=section or None)


def _require_checkout() -> None:
    """One line naming what `capgen bench` needs, instead of a crash deep in a fixture."""
    from capgen.benchmarks.fixtures import DECODER_JSON, REPO_ROOT, TUTORIAL_SCRIPT
    from capgen.runtime.errors import InputError

    missing = [path for path in (TUTORIAL_SCRIPT, DECODER_JSON) if not path.is_file()]
    if missing:
        raise InputError(
            f"capgen bench runs in a capgen repository checkout with the test data in "
            f"../shared/data next to it ({REPO_ROOT} lacks {', '.join(map(str, missing))}); "
            "clone the repository and run `make bench` there"
        )


def register_bench_command(app: typer.Typer) -> None:
    app.command("bench")(bench_command)

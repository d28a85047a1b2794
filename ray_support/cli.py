"""`capgen ray caption`: `capgen caption`'s batch job on a Ray cluster, written as JSON Lines or Parquet.

The driver expands folders and globs as `capgen caption` does, skips what
`--output` already has (`--resume`, the local batch's own reading of the
file), and hands the rest to `caption_dataset` as paths: each actor reads
its images itself, so the images must be on storage every node sees (the
model need not be: it is shipped through the object store unless
`--shared-model`). Rows stream back to the driver, which appends each one to
`--output` as it arrives (runtime/outputs.py's writer: whole lines, kept on
a crash). A Parquet output is a folder of part files, one per run.

Exit codes are capgen's (errors.ExitCode): 0 all captioned, 1 some failed
(each reported as `capgen: <path>: <reason>`), 2 usage problems including
a missing ray extra, an unreachable cluster and a Ray job that failed
after Ray's own retries, 3 a model problem, 130 Ctrl-C.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from capgen.cli_support.console import printable, say
from capgen.cli_support.usage_errors import OneLineUsageCommand
from capgen.runtime.errors import ExitCode, InputError

ray_app = typer.Typer(
    name="ray",
    # \[ : typer's rich markup would take [ray] for a style and drop it.
    help="Caption on a Ray cluster (pip install 'capgen\\[ray]').",
    no_args_is_help=True,
)


@ray_app.command("caption", cls=OneLineUsageCommand)
def ray_caption_command(
    images: Annotated[
        list[str], typer.Argument(help="Images, folders or globs.", show_default=False)
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="JSON Lines file, or a folder ending in .parquet for Parquet."
        ),
    ],
    address: Annotated[
        str | None,
        typer.Option(help="Ray cluster: HOST:PORT of the head, or auto (default: a local Ray)."),
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option(
            "--model", "-m", help="Model folder or installed NAME (default: capgen setup's)."
        ),
    ] = None,
    shared_model: Annotated[
        bool,
        typer.Option(
            "--shared-model", help="Every node reads --model at this path; do not ship it."
        ),
    ] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Keep --output and skip images it already has.")
    ] = False,
    concurrency: Annotated[int, typer.Option(help="Caption actors.")] = 2,
    num_cpus: Annotated[float, typer.Option(help="CPUs each actor asks Ray for.")] = 0.5,
    beam_size: Annotated[int, typer.Option("--beam-size", "-b", help="Beam width.")] = 3,
    max_length: Annotated[int | None, typer.Option(help="Most words per caption.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per actor batch.")] = 8,
    int8: Annotated[bool, typer.Option("--int8", help="Use the model's INT8 encoder.")] = False,
    fast_decoder: Annotated[
        bool, typer.Option("--fast-decoder", help="Use the model's fast decoder step.")
    ] = False,
) -> None:
    """Caption images on a Ray cluster; results go to --output as they arrive."""
    from capgen.ray.connect import connect, ray_logs_silenced, require_ray_extra
    from capgen.ray.output import open_ray_output
    from capgen.runtime.captioner import check_batch_size, resolve_model_dir
    from capgen.runtime.decoding import DecodingOptions
    from capgen.runtime.inputs import expand_inputs
    from capgen.runtime.manifest import load_manifest

    require_ray_extra()
    DecodingOptions(beam_size=beam_size, max_length=max_length)  # its checks, before any output
    check_batch_size(batch_size)
    if concurrency < 1:
        raise InputError(f"--concurrency must be at least 1, got {concurrency}")
    if num_cpus <= 0:
        raise InputError(f"--num-cpus must be above 0, got {num_cpus:g}")
    folder, _ = resolve_model_dir(model)
    manifest = load_manifest(folder)
    if int8 and manifest.encoder.int8_file is None:
        raise InputError(f"{folder}: this model has no INT8 encoder; caption without --int8")
    paths, empty_folders = expand_inputs(images)
    sink = open_ray_output(output, resume, paths)
    failed = 0
    try:
        for folder_name, reason in empty_folders.items():
            failed += sink.error(folder_name, reason)
        todo = [path for path in paths if path not in sink.done]
        if todo:
            with ray_logs_silenced():
                connect(address)
                failed += _run(todo, sink, folder, shared_model, concurrency, num_cpus, beam_size,
                               max_length, batch_size, int8, fast_decoder)  # fmt: skip
    finally:
        sink.close()
    if failed:
        raise typer.Exit(ExitCode.SOME_FAILED)


def _run(
    todo: list[str],
    sink: Any,
    folder: Path,
    shared_model: bool,
    concurrency: int,
    num_cpus: float,
    beam_size: int,
    max_length: int | None,
    batch_size: int,
    int8: bool,
    fast_decoder: bool,
) -> int:
    """The Ray job; each row to the sink as it arrives. Returns how many images failed."""
    import ray
    from ray.exceptions import RayError

    from capgen.ray.data import caption_dataset
    from capgen.ray.model_store import ship_model

    ray.data.DataContext.get_current().enable_progress_bars = False
    # Ray Data's INFO and deprecation lines would drown the one line per failure.
    logging.getLogger("ray").setLevel(logging.ERROR)
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    model = folder if shared_model else ship_model(folder)
    dataset = ray.data.from_items([{"path": path} for path in todo])
    captions = caption_dataset(
        dataset, model, batch_size=batch_size, concurrency=concurrency, num_cpus=num_cpus,
        beam_size=beam_size, max_length=max_length, int8=int8, fast_decoder=fast_decoder,
    )  # fmt: skip
    failed = 0
    try:
        for row in captions.iter_rows():
            if row.get("error") is not None:
                say(f"capgen: {printable(row['path'])}: {row['error']}")
                failed += 1
            sink.write(row)
    except RayError as exc:
        message = " ".join(str(exc).split())[:300]
        raise InputError(
            f"the Ray job failed: {message}; the captions written so far are kept, "
            "run again with --resume"
        ) from None
    return failed


def register_ray_command(app: typer.Typer) -> None:
    """Add `ray caption` to the root app (capgen/cli.py)."""
    app.add_typer(ray_app, name="ray")

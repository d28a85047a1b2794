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
after Ray's own retries, 3 a model problem, 130 Ctrl-C. The model folder is
checked on the driver before any actor starts (model_store.check_model),
and a capgen error an actor raises anyway (say a node's corrupt copy of a
shipped model) is reported as the same one line and exit code as locally,
not as Ray's actor-death story.

Without --address (or RAY_ADDRESS) a new local Ray is started, never the
cluster named in Ray's address file, which may be stale (connect.py).
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from capgen.cli_support.console import printable, say, terminal_progress
from capgen.cli_support.exit_codes import ExitCode
from capgen.cli_support.usage_errors import OneLineUsageCommand
from capgen.runtime.errors import CapgenError, InputError

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
        typer.Option(
            envvar="RAY_ADDRESS",
            help="Ray cluster: HOST:PORT of the head, or auto for the one running here "
            "(default: a new local Ray).",
        ),
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
    num_gpus: Annotated[float, typer.Option(help="GPUs each actor asks Ray for.")] = 0.0,
    beam_size: Annotated[int, typer.Option("--beam-size", "-b", help="Beam width.")] = 3,
    max_length: Annotated[int | None, typer.Option(help="Most words per caption.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per actor batch.")] = 8,
    int8: Annotated[bool, typer.Option("--int8", help="Use the model's INT8 encoder.")] = False,
    fast_decoder: Annotated[
        bool, typer.Option("--fast-decoder", help="Use the model's fast decoder step.")
    ] = False,
) -> None:
    """Caption images on a Ray cluster; results go to --output as they arrive."""
    started = time.perf_counter()
    from capgen.ray.connect import connect, ray_logs_silenced, require_ray_extra
    from capgen.ray.model_store import check_model
    from capgen.ray.output import open_ray_output
    from capgen.runtime.captioner import check_batch_size
    from capgen.runtime.decoding import DecodingOptions
    from capgen.runtime.inputs import expand_inputs

    require_ray_extra()
    DecodingOptions(beam_size=beam_size, max_length=max_length)  # its checks, before any output
    check_batch_size(batch_size)
    if concurrency < 1:
        raise InputError(f"--concurrency must be at least 1, got {concurrency}")
    if num_cpus <= 0:
        raise InputError(f"--num-cpus must be above 0, got {num_cpus:g}")
    if num_gpus < 0:
        raise InputError(f"--num-gpus must be 0 or more, got {num_gpus:g}")
    # The local Captioner's checks, here before any actor: not as an actor's death on a node.
    folder = check_model(model, int8=int8, fast_decoder=fast_decoder)
    paths, empty_folders = expand_inputs(images)
    sink = open_ray_output(output, resume, paths)
    progress = terminal_progress("ray caption")
    captioned = failed = 0
    todo = [path for path in paths if path not in sink.done]
    try:
        for folder_name, reason in empty_folders.items():
            failed += sink.error(folder_name, reason)
        if todo:
            with ray_logs_silenced():
                progress(
                    "starting a local Ray" if address is None else f"connecting to Ray at {address}"
                )
                connect(address)
                done, not_done = _run(todo, sink, folder, shared_model, concurrency, num_cpus,
                                      num_gpus, beam_size, max_length, batch_size, int8,
                                      fast_decoder, progress)  # fmt: skip
                captioned += done
                failed += not_done
    finally:
        sink.close()
    skipped = len(paths) - len(todo)
    say(summary_line(captioned, failed, skipped, output, time.perf_counter() - started))
    if failed:
        raise typer.Exit(ExitCode.SOME_FAILED)


def _run(
    todo: list[str],
    sink: Any,
    folder: Path,
    shared_model: bool,
    concurrency: int,
    num_cpus: float,
    num_gpus: float,
    beam_size: int,
    max_length: int | None,
    batch_size: int,
    int8: bool,
    fast_decoder: bool,
    progress: Callable[[str], None],
) -> tuple[int, int]:
    """The Ray job; each row to the sink as it arrives. Returns (images captioned, images failed).

    On a terminal a progress bar counts the rows as they come back (Ray Data's
    own bars are off: they describe operators, not images).
    """
    import ray
    from ray.exceptions import RayError
    from tqdm import tqdm

    from capgen.ray.connect import quiet_ray_console
    from capgen.ray.data import caption_dataset
    from capgen.ray.model_store import ship_model

    ray.data.DataContext.get_current().enable_progress_bars = False
    # Ray Data's INFO and deprecation lines would drown the one line per failure.
    logging.getLogger("ray").setLevel(logging.ERROR)
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    quiet_ray_console()  # not even its errors: job_failure says them in one line
    if not shared_model:
        progress("shipping the model to the cluster's object store")
    # Only the files these actors load (with --int8, not the FP32 encoder), to every node.
    model = folder if shared_model else ship_model(folder, int8=int8, fast_decoder=fast_decoder)
    dataset = ray.data.from_items([{"path": path} for path in todo])
    captions = caption_dataset(
        dataset, model, batch_size=batch_size, concurrency=concurrency, num_cpus=num_cpus,
        num_gpus=num_gpus, beam_size=beam_size, max_length=max_length, int8=int8, fast_decoder=fast_decoder,
    )  # fmt: skip
    captioned = failed = 0
    bar = tqdm(
        total=len(todo),
        unit="img",
        file=sys.stderr,
        dynamic_ncols=True,
        leave=False,  # the summary line says it once the job is done
        disable=not sys.stderr.isatty(),
    )
    try:
        for row in captions.iter_rows():
            if row.get("error") is not None:
                with tqdm.external_write_mode(file=sys.stderr):  # not through the bar
                    say(f"capgen: {printable(row['path'])}: {row['error']}")
                failed += 1
            else:
                captioned += 1
            sink.write(row)
            bar.update()
    except RayError as exc:
        raise job_failure(exc) from None
    finally:
        bar.close()
    return captioned, failed


def job_failure(exc: BaseException) -> CapgenError:
    """The one-line error for a Ray job that failed: an actor's own capgen error if it raised one.

    An actor whose `Captioner` refused the model dies in `__init__`; the driver
    gets Ray's RayTaskError or ActorDiedError around it (with the worker's
    traceback in its text). The capgen error inside is what the local command
    would have said, with its exit code (3 for a model problem); anything
    else is a failed job (exit 2), its message squeezed onto one line.
    """
    found = capgen_error_in(exc)
    if found is not None:
        return found
    message = " ".join(str(exc).split())[:300]
    return InputError(
        f"the Ray job failed: {message}; the captions written so far are kept, "
        "run again with --resume"
    )


_CAPGEN_ERROR_LINE = re.compile(r"capgen\.runtime\.errors\.([A-Za-z]+): ([^\n]+)")


def capgen_error_in(exc: BaseException) -> CapgenError | None:
    """The CapgenError an exception from Ray wraps, rebuilt as a plain one; None if none does.

    Objects first: RayTaskError keeps the original in `cause`, ActorDiedError
    its RayTaskError in `args`, Ray Data chains its own exceptions. When Ray
    kept only text (a cause it could not pickle), the traceback's last
    `capgen.runtime.errors.<Name>: <message>` line names it.
    """
    from capgen.runtime import errors

    pending: list[object] = [exc]
    seen: set[int] = set()
    while pending:
        current = pending.pop(0)
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        cause = getattr(current, "cause", None)
        if isinstance(current, CapgenError) and not isinstance(cause, BaseException):
            # A plain capgen error (a RayTaskError dual instance has its `cause`: unwrap that).
            return current
        pending.extend([cause, *current.args, current.__cause__, current.__context__])
    for name, message in reversed(_CAPGEN_ERROR_LINE.findall(str(exc))):
        kind = getattr(errors, name, None)
        if isinstance(kind, type) and issubclass(kind, CapgenError):
            return kind(message.strip())
    return None


def summary_line(captioned: int, failed: int, skipped: int, output: Path, seconds: float) -> str:
    """The line `capgen ray caption` ends with, so a run that succeeds is not silent.

    How many images were captioned and failed (and skipped, with --resume, as
    already in the output), where the results are, and the wall time. It starts
    with `capgen: ` like every stderr line of the command, but unlike a failure
    line (`capgen: <path>: <reason>`) holds no second `: ` (unless --output's name does).
    """
    counts = f"{_images(captioned)} captioned, {failed} failed"
    if skipped:
        counts += f", {skipped} skipped (already in the output)"
    return f"capgen: {counts}; written to {printable(str(output))} in {seconds:.1f} s"


def _images(count: int) -> str:
    return f"{count} image" if count == 1 else f"{count} images"


def register_ray_command(app: typer.Typer) -> None:
    """Add `ray caption` to the root app (capgen/cli.py)."""
    app.add_typer(ray_app, name="ray")

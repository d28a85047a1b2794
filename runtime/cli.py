"""`capgen caption` and `capgen info`: the runtime's command line.

Output of `capgen caption`:
- one image file given: just its caption on stdout; several arguments, a
  folder or a glob: `path<TAB>caption` per line, in input order (folders,
  not recursively, and globs expand to their sorted images);
- `--json`: one JSON object per line (path, caption, log_probability,
  finished, tokens, timings in ms; alternatives with --n-best); a failed image
  is a line `{"path": ..., "error": ...}`;
- `--output FILE`: the same JSON Lines appended to FILE and flushed as each
  image finishes; `--resume` skips images FILE already has a caption for
  (failed ones are retried);
- every failure is also reported on stderr as `capgen: <path>: <reason>` and
  the other images are still captioned; exit status 0 when all succeeded, 1
  when any image failed, 130 on Ctrl-C (what finished is already written),
  and the error's own code (see errors.py) when nothing could run at all.

Heavy imports (numpy, onnxruntime, Pillow) happen inside the commands so
`capgen --help` and the other subcommands stay fast.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from capgen.runtime.console import say, tolerate_any_terminal
from capgen.runtime.errors import CapgenError, InputError
from capgen.runtime.usage_errors import OneLineUsageCommand

F = TypeVar("F", bound=Callable[..., Any])

DEMO_NOTE = (
    "capgen: note: using the default demonstration model, trained on synthetic scenes "
    "(shapes and colours), not on photos. To caption photos, convert your own: "
    "capgen convert model model_9.h5 tokenizer.p -o mymodel/ && capgen caption --model mymodel/ IMAGE"
)
INTERRUPTED_EXIT = 130
BROKEN_PIPE_EXIT = 141  # 128 + SIGPIPE, what a shell reports for a tool killed by a closed pipe


def cli_errors(function: F) -> F:
    """Map CapgenError to `capgen: error: <message>` and its exit code, Ctrl-C to 130: never a traceback."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        tolerate_any_terminal()
        try:
            return function(*args, **kwargs)
        except CapgenError as err:
            say(f"capgen: error: {err}")
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt:  # Ctrl-C while loading: nothing to keep, but no traceback either
            say("capgen: interrupted")
            raise typer.Exit(INTERRUPTED_EXIT) from None

    return wrapper  # type: ignore[return-value]


def _check_annotate_folder(annotate: Path, images: list[str]) -> None:
    """Refuse an --annotate folder that holds input images: their pictures would replace the photos."""
    target = os.path.realpath(annotate)
    for image in images:
        if os.path.realpath(os.path.dirname(image) or ".") == target:
            raise InputError(
                f"--annotate {annotate} is where input images are ({image}); annotated copies "
                "would overwrite them, choose another folder"
            )


@cli_errors
def caption_command(
    images: Annotated[
        list[str] | None, typer.Argument(help="Images, folders or globs.", show_default=False)
    ] = None,
    image: Annotated[
        list[str] | None,
        typer.Option("--image", "-i", help="An image (repeatable; the tutorial's flag)."),
    ] = None,
    beam_size: Annotated[
        int, typer.Option("--beam-size", "-b", help="1 = the tutorial's greedy loop.")
    ] = 3,
    max_length: Annotated[
        int | None, typer.Option(help="Most words per caption (default: the model's).")
    ] = None,
    length_penalty: Annotated[
        float | None,
        typer.Option(help="Rank beams by logp / ((5+len)/6)^alpha (default: total logp)."),
    ] = None,
    n_best: Annotated[int, typer.Option(help="Alternatives to include in --json output.")] = 1,
    model: Annotated[
        Path | None, typer.Option("--model", "-m", help="Model folder (default: capgen setup's).")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="Encoder threads (default: one per core).")
    ] = None,
    int8: Annotated[bool, typer.Option("--int8", help="Use the model's INT8 encoder.")] = False,
    fast_decoder: Annotated[
        bool,
        typer.Option(
            "--fast-decoder",
            help="Use the model's fast decoder step: greedy words exact, scores approximate.",
        ),
    ] = False,
    batch_size: Annotated[int, typer.Option(help="Images encoded and decoded together.")] = 8,
    json_lines: Annotated[bool, typer.Option("--json", help="JSON Lines on stdout.")] = False,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write JSON Lines here as each image is done."),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Keep --output and skip images it already has captions for."),
    ] = False,
    raw: Annotated[
        bool, typer.Option("--raw", help="The tutorial's exact 'start … end' string.")
    ] = False,
    annotate: Annotated[
        Path | None, typer.Option(help="Save each image with its caption beneath here.")
    ] = None,
) -> None:
    """Caption images: the caption for one image file, path<TAB>caption lines for several.

    Failures are reported on stderr as `capgen: <path>: <reason>` and the
    others still captioned; exit 0 if all succeeded, 1 if any failed.
    """
    import warnings

    # Pillow warns about oddities it recovers from (corrupt EXIF, huge images we
    # refuse anyway); the CLI reports problems itself, one line per image.
    warnings.filterwarnings("ignore", module="PIL")
    from capgen.runtime.inputs import expand_inputs

    arguments = [*(image or []), *(images or [])]
    if not arguments:
        raise InputError("no images given; usage: capgen caption IMAGE... (or -i IMAGE)")
    if resume and output is None:
        raise InputError("--resume needs --output FILE")
    paths, empty_folders = expand_inputs(arguments)

    from capgen.runtime import results
    from capgen.runtime.captioner import Captioner, check_batch_size
    from capgen.runtime.decoding import DecodingOptions
    from capgen.runtime.outputs import CaptionSinks, StdoutUnwritable

    options = DecodingOptions(
        beam_size=beam_size, max_length=max_length, length_penalty=length_penalty, n_best=n_best
    )
    check_batch_size(batch_size)  # every option is checked before --output is touched
    captioner = Captioner(
        model, threads=threads, int8=int8, fast_decoder=fast_decoder
    )  # before touching --output: a bad model changes nothing
    if captioner.is_default_model:
        say(DEMO_NOTE)
    done = results.prepare_resume(output) if resume and output is not None else set()
    todo = [path for path in paths if path not in done]
    if output is not None and not resume:
        results.check_replaceable(output)
        try:
            output.write_bytes(b"")
        except OSError as exc:
            raise InputError(f"{output}: cannot write ({exc.strerror or exc})") from exc
    if annotate is not None:
        _check_annotate_folder(annotate, todo)
        try:
            annotate.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"{annotate}: cannot create folder ({exc.strerror or exc})") from exc
    sinks = CaptionSinks(
        json_lines=json_lines,
        raw=raw,
        # Just the caption for `capgen caption photo.jpg`; with several arguments,
        # a folder or a glob, each line says which image it is about.
        show_path=not (len(arguments) == 1 and paths == arguments),
        writer=results.JsonlWriter(output) if output is not None else None,
        annotate_dir=annotate,
    )
    for (
        folder,
        reason,
    ) in empty_folders.items():  # also a JSON line, so --json and --output readers see it
        sinks.handle(folder, InputError(reason))
    if sys.stderr.isatty() and len(todo) > 1:
        from tqdm import tqdm

        sinks.progress = tqdm(total=len(todo), unit="img", file=sys.stderr, dynamic_ncols=True)
    try:
        for path, outcome in captioner.iter_captions(todo, options=options, batch_size=batch_size):
            sinks.handle(path, outcome)
    except KeyboardInterrupt:
        say("capgen: interrupted; results so far are written")
        raise typer.Exit(INTERRUPTED_EXIT) from None
    except BrokenPipeError:
        # `capgen caption folder | head -1`: the reader left; stop quietly like other Unix tools.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(BROKEN_PIPE_EXIT) from None
    except StdoutUnwritable:
        # Say so once; Python's own flush of the same full stdout at exit must not add a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise
    finally:
        sinks.close()
    if sinks.failures:
        raise typer.Exit(1)


@cli_errors
def info_command(
    model_dir: Annotated[
        Path | None, typer.Argument(help="Model folder (default: capgen setup's).")
    ] = None,
) -> None:
    """Show what a model folder's manifest says and verify every file's size and sha256."""
    from capgen.runtime.captioner import resolve_model_dir
    from capgen.runtime.errors import ModelIntegrityError
    from capgen.runtime.manifest import FORMAT_NAME, load_manifest, verify_file

    folder, is_default = resolve_model_dir(model_dir)
    manifest = load_manifest(folder)
    enc, dec, voc = manifest.encoder, manifest.decoder, manifest.vocabulary
    lines = [
        f"model:        {manifest.name}{'  (default demonstration model)' if is_default else ''}",
        f"folder:       {folder}",
        f"description:  {manifest.description}",
        f"format:       {FORMAT_NAME} v{manifest.format_version}",
        f"encoder:      {enc.file} ({enc.kind}, {enc.height}x{enc.width} RGB uint8, "
        f"{enc.resize_filter} resize, {enc.feature_size} features)",
        f"int8 encoder: {enc.int8_file or 'none'}",
        f"fast decoder: {dec.int8_step_file or 'none'}",
        f"decoder:      {dec.projection_file} + {dec.step_file} ({dec.units} LSTM units, "
        f"{dec.recurrent_activation or '?'} gates, {dec.merge or '?'} merge)",
        f"vocabulary:   {voc.file}: {voc.size} ids",
        f"start/end:    {_caption_words(voc)}",
        f"max_length:   {manifest.max_length}",
    ]
    for key, value in sorted(manifest.sources.items()):
        if isinstance(value, dict):
            lines.append(
                f"source:       {key}: {value.get('name', '?')} sha256 {str(value.get('sha256', '?'))[:16]}…"
            )
    converted = manifest.converted_with
    if converted:
        lines.append("converted:    " + ", ".join(f"{k} {v}" for k, v in sorted(converted.items())))
    if manifest.created:
        lines.append(f"created:      {manifest.created}")
    report = ["\n".join(lines) + "\nfiles:\n"]
    problems = []
    for name, record in manifest.files.items():
        try:
            verify_file(manifest.path(name), record, use_stamps=False)
            status = "ok"
        except ModelIntegrityError as err:
            status = f"FAILED: {err}"
            problems.append(err)
        report.append(
            f"  {name:<24} {record.bytes:>12} bytes  sha256 {record.sha256[:16]}…  {status}\n"
        )
    _print_report("".join(report))
    if problems:
        raise ModelIntegrityError(
            f"{len(problems)} file(s) do not match the manifest: {problems[0]}"
        )


def _caption_words(voc: Any) -> str:
    """`start 'startseq' (id 2, in 30,000 of 30,000 captions), end …` from the manifest."""
    evidence = voc.delimiters or {}
    documents = evidence.get("documents")

    def word(token: str | None, token_id: int | None, docs: object) -> str:
        if token is None:
            return "none (captions run to max_length)"
        where = (
            "not in the vocabulary: first input is padding"
            if token_id is None
            else f"id {token_id}"
        )
        if isinstance(docs, int) and isinstance(documents, int) and documents:
            where += f", in {docs:,} of {documents:,} captions"
        return f"{token!r} ({where})"

    start = word(voc.start_token, voc.start_id, evidence.get("start_documents"))
    end = word(voc.end_token, voc.end_id, evidence.get("end_documents"))
    how = {
        "captions": "the captions they appear in",
        "word_counts": "word counts",
        "ids": "word ids",
    }
    chosen_by = evidence.get("chosen_by")
    chosen = f"; chosen by {how.get(chosen_by, chosen_by)}" if chosen_by else ""
    return f"start {start}, end {end}{chosen}"


def _print_report(text: str) -> None:
    """All of `capgen info` at once; a closed pipe exits quietly (141), a full disk is one line (2)."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(BROKEN_PIPE_EXIT) from None
    except OSError as exc:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise InputError(f"cannot write to standard output ({exc.strerror or exc})") from None


def register_runtime_commands(app: typer.Typer) -> None:
    """Add `caption` and `info` to the root app (capgen/cli.py)."""
    app.command("caption", cls=OneLineUsageCommand)(caption_command)
    app.command("info", cls=OneLineUsageCommand)(info_command)

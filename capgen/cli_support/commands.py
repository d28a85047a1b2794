"""`capgen caption`, `capgen info` and `capgen tune`: the runtime's command line.

Output of `capgen caption`:
- one image file given: just its caption on stdout; several arguments, a
  folder or a glob: `path<TAB>caption` per line, in input order (folders,
  not recursively, and globs expand to their sorted images);
- `--json`: one JSON object per line (path, caption, log_probability,
  finished, tokens, timings in ms; alternatives with --n-best); a failed image
  is a line `{"path": ..., "error": ...}`;
- `--output FILE`: the same JSON Lines appended to FILE and flushed as each
  image finishes; `--resume` skips images FILE already has a caption for
  (failed ones are retried); `--format csv|tsv|coco` (or FILE's extension)
  writes that format instead, whole when the run ends; `--format txt` /
  `--output-dir DIR` one caption file per image (output_formats.py);
- `--recursive`: folders are searched in their subfolders too;
- every failure is also reported on stderr as `capgen: <path>: <reason>` and
  the other images are still captioned; exit status 0 when all succeeded, 1
  when some of several images failed, the failure's own code when the one
  image given alone failed, 130 on Ctrl-C (what finished is already written),
  and the error's own code when nothing could run at all (errors.ExitCode);
- file names and captions in line output and on stderr show control
  characters as escapes (cli_support/console.py); --json is exact.

Errors are raised, not printed: capgen.cli_support.presenter shows them.

Heavy imports (numpy, onnxruntime, Pillow) happen inside the commands so
`capgen --help` and the other subcommands stay fast.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from capgen.cli_support.console import (
    detail,
    escape_controls,
    is_quiet,
    note,
    set_verbosity,
    write_stdout,
)
from capgen.cli_support.usage_errors import OneLineUsageCommand
from capgen.runtime.errors import CapgenError, InputError
from capgen.runtime.identity import DEMONSTRATION_NOTE

if TYPE_CHECKING:
    from capgen.cli_support.output_formats import OutputFormat
    from capgen.cli_support.sinks import CaptionSinks
    from capgen.runtime.captioner import Captioner
    from capgen.runtime.decoding import DecodingOptions
    from capgen.runtime.installed import InstalledModel

PRECISION_HELP = (
    "Encoder precision: fp32 (exact, onnxruntime; default), bf16 (OpenVINO on a bf16 CPU: "
    "pip install 'capgen[openvino]'), int8 (the model's INT8 graph, as --int8) or auto (the "
    "fastest mode `capgen tune` found agreeing with fp32 here; fp32 until then)."
)
DEMO_NOTE = f"capgen: note: {DEMONSTRATION_NOTE}"


def caption_command(
    images: Annotated[
        list[str] | None,
        typer.Argument(
            help="Images, folders or globs; - reads one image from standard input.",
            show_default=False,
        ),
    ] = None,
    image: Annotated[
        list[str] | None,
        typer.Option("--image", "-i", help="An image (repeatable; the tutorial's flag)."),
    ] = None,
    beam_size: Annotated[
        int,
        typer.Option(
            "--beam-size",
            "-b",
            help="Beam width. The default 3 usually gives better captions than the "
            "tutorial's greedy loop, which is -b 1 (its captions can differ).",
        ),
    ] = 3,
    max_length: Annotated[
        int | None, typer.Option(help="Most words per caption (default: the model's).")
    ] = None,
    length_penalty: Annotated[
        float | None,
        typer.Option(help="Rank beams by logp / ((5+len)/6)^alpha (default: total logp)."),
    ] = None,
    n_best: Annotated[
        int, typer.Option(help="Alternatives to include (JSON only: --json or a jsonl --output).")
    ] = 1,
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            "-m",
            help="Model folder, or the NAME of one in $CAPGEN_HOME/models (see capgen models; "
            "default: capgen setup's).",
        ),
    ] = None,
    provider: Annotated[
        list[str] | None,
        typer.Option(
            "--provider",
            help="onnxruntime execution provider, e.g. OpenVINOExecutionProvider (repeatable, "
            "in order of preference; default: CPUExecutionProvider).",
        ),
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="Encoder threads (default: one per core).")
    ] = None,
    int8: Annotated[bool, typer.Option("--int8", help="Use the model's INT8 encoder.")] = False,
    precision: Annotated[
        str | None,
        typer.Option("--precision", metavar="fp32|bf16|int8|auto", help=PRECISION_HELP),
    ] = None,
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
        typer.Option(
            "--output",
            "-o",
            help="Write the captions here: JSON Lines as each image is done, or the --format "
            "its extension names (.csv, .tsv, .txt; .json/.jsonl: JSON Lines).",
        ),
    ] = None,
    output_format: Annotated[
        str | None,
        typer.Option(
            "--format",
            metavar="txt|tsv|csv|jsonl|coco",
            help="Format of --output (default: from its extension, else jsonl). coco: "
            '[{"image_id", "caption"}] for COCO evaluation; txt: one <stem>.txt per image, beside '
            "it or in --output-dir.",
            show_default=False,
        ),
    ] = None,
    output_dir: Annotated[
        Path | None,
        typer.Option(
            "--output-dir",
            help="Write one <stem>.txt caption file per image into this folder (--format txt).",
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Keep --output (jsonl) and skip images it already has captions for; with "
            "--format txt, skip images that have a caption file.",
        ),
    ] = False,
    recursive: Annotated[
        bool,
        typer.Option(
            "--recursive", "-r", help="Also take the images in every subfolder of a folder."
        ),
    ] = False,
    raw: Annotated[
        bool, typer.Option("--raw", help="The tutorial's exact 'start … end' string.")
    ] = False,
    annotate: Annotated[
        Path | None, typer.Option(help="Save each image with its caption beneath here.")
    ] = None,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet",
            "-q",
            help="No notes or progress bar on stderr; results and errors still appear.",
        ),
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            help="Also say on stderr which model files run and where the time goes "
            "(model load, per-image preprocess/encode/decode, total).",
        ),
    ] = False,
) -> None:
    """Caption images: the caption for one image file, path<TAB>caption lines for several.

    A caption that reached the model's max_length before its end word ends with "\\[max length reached]" (--json: "finished": false).

    Failures are reported on stderr as `capgen: <path>: <reason>` and the others still captioned; exit 0 if all succeeded, 1 if any failed.
    """
    # \\[ in the docstring: typer's rich help markup would take [...] for a style and drop it.
    import warnings

    # Pillow warns about oddities it recovers from (corrupt EXIF, huge images we
    # refuse anyway); the CLI reports problems itself, one line per image.
    warnings.filterwarnings("ignore", module="PIL")
    from capgen.cli_support.output_formats import (
        OutputFormat,
        check_resume,
        choose_format,
        parse_format,
    )
    from capgen.runtime.captioner import Captioner, check_batch_size
    from capgen.runtime.decoding import DecodingOptions
    from capgen.runtime.inputs import check_local, expand_inputs

    set_verbosity(quiet, verbose)
    started = time.perf_counter()
    arguments = [*(image or []), *(images or [])]
    if not arguments:
        raise InputError("no images given; usage: capgen caption IMAGE... (or -i IMAGE)")
    check_local(arguments)
    fmt = choose_format(parse_format(output_format), output, output_dir)
    check_resume(fmt, output, resume)
    _check_standard_input(arguments, annotate)
    paths, empty_folders = expand_inputs(arguments, recursive=recursive)
    options = DecodingOptions(
        beam_size=beam_size, max_length=max_length, length_penalty=length_penalty, n_best=n_best
    )
    if n_best > 1 and not json_lines and fmt is not OutputFormat.JSONL:
        raise InputError(
            "--n-best alternatives appear only in JSON: add --json (or --output FILE in jsonl)"
        )
    check_batch_size(batch_size)  # every option is checked before --output is touched
    # The model too: a bad model changes nothing (Captioner plans the encoder, and
    # refuses --int8 on a folder without an INT8 graph, before any session is built).
    captioner = Captioner(
        model,
        threads=threads,
        int8=int8,
        fast_decoder=fast_decoder,
        providers=provider,
        precision=precision,
    )
    detail(_model_details(captioner, time.perf_counter() - started))
    if captioner.is_demonstration:  # the manifest says so (capgen setup writes it)
        note(DEMO_NOTE)
    # Just the caption for `capgen caption photo.jpg`; with several arguments,
    # a folder or a glob, each line says which image it is about.
    single_image = len(arguments) == 1 and paths == arguments
    sinks, done = _open_sinks(
        paths, (fmt, output, output_dir), resume, annotate, json_lines, raw, not single_image
    )
    for (
        folder,
        reason,
    ) in empty_folders.items():  # also a JSON line, for --json and --output readers
        sinks.handle(folder, InputError(reason))
    todo = [p for p in paths if p not in done]
    captioning = time.perf_counter()
    _caption_all(captioner, sinks, todo, options, batch_size)
    if todo:
        seconds = time.perf_counter() - captioning
        failed = len(todo) - sinks.captioned
        detail(
            f"capgen: {sinks.captioned} image(s) captioned"
            f"{f', {failed} failed' if failed else ''} in {seconds:.2f} s "
            f"({seconds * 1000.0 / len(todo):.1f} ms per image); "
            f"{time.perf_counter() - started:.2f} s since the command started"
        )
    if sinks.failure_codes:
        raise typer.Exit(sinks.exit_code(single_image))


def _model_details(captioner: Captioner, seconds: float) -> str:
    """-v's line about what runs: the model, the graph files chosen, the providers, the load time."""
    manifest = captioner.manifest
    files = ", ".join(captioner.model_files)
    return (
        f"capgen: model {manifest.name} ({manifest.vocabulary.size} words) from "
        f"{manifest.folder}: {files}; {', '.join(captioner.providers)}; "
        f"{captioner.encoder_plan.describe()}; "
        f"loaded in {seconds:.2f} s"
    )


STANDARD_INPUT = "-"


def _check_standard_input(arguments: list[str], annotate: Path | None) -> None:
    """`-` is one image read from standard input (a file named - is ./-)."""
    count = arguments.count(STANDARD_INPUT)
    if not count:
        return
    if count > 1:
        raise InputError("- (standard input) can be given only once")
    if annotate is not None:
        raise InputError(
            "--annotate needs image files; - (standard input) has no name to save under"
        )
    if sys.stdin is None or sys.stdin.isatty():
        raise InputError(
            "- reads an image from standard input, which is a terminal: pipe one in "
            "(capgen caption - < photo.jpg)"
        )


def _source(path: str) -> Any:
    """What to caption for `path`: standard input's bytes for `-`, else the path itself."""
    return sys.stdin.buffer if path == STANDARD_INPUT else path


def _open_sinks(
    paths: list[str],
    destination: tuple[OutputFormat | None, Path | None, Path | None],
    resume: bool,
    annotate: Path | None,
    json_lines: bool,
    raw: bool,
    show_path: bool,
) -> tuple[CaptionSinks, set[str]]:
    """Check every output against every input, then open them: (sinks, images --output already has).

    Nothing is written until all checks have passed: a refused --annotate
    folder leaves --output as it was.
    """
    from capgen.cli_support.output_formats import WholeFileWriter, open_writer
    from capgen.cli_support.outputs import AnnotateFolder, InputFiles
    from capgen.cli_support.sinks import CaptionSinks

    fmt, output, output_dir = destination
    inputs = InputFiles(paths)
    folder = AnnotateFolder(annotate, inputs) if annotate is not None else None
    writer, done = open_writer(fmt, output, output_dir, resume, inputs)
    if folder is not None:
        try:
            folder.create()
        except CapgenError:
            if isinstance(writer, WholeFileWriter):
                writer.discard()  # its file was not replaced: leave no temporary behind
            raise
    sinks = CaptionSinks(
        json_lines=json_lines, raw=raw, show_path=show_path, writer=writer, annotate=folder
    )
    return sinks, done


def _decoded_once(paths: list[str]) -> Iterator[tuple[str, Any, Any]]:
    """(path, what to caption, picture for --annotate): each image decoded once, for both.

    An image that cannot be decoded is passed on as its path, so the captioner
    reports it in its own words like any other failure.
    """
    from capgen.cli_support.annotate import for_annotation
    from capgen.runtime.preprocess import load_image

    for path in paths:
        try:
            image = load_image(_source(path))
            yield path, image, for_annotation(image)
        except CapgenError:
            yield path, path, None


def _caption_all(
    captioner: Captioner,
    sinks: CaptionSinks,
    todo: list[str],
    options: DecodingOptions,
    batch_size: int,
) -> None:
    """The loop: caption `todo` in order, each outcome to the sinks as soon as it is known."""
    if sys.stderr.isatty() and len(todo) > 1 and not is_quiet():
        from tqdm import tqdm

        sinks.progress = tqdm(total=len(todo), unit="img", file=sys.stderr, dynamic_ncols=True)
    items = (
        _decoded_once(todo)
        if sinks.annotate is not None
        else ((path, _source(path), None) for path in todo)
    )
    pictures: dict[int, Any] = {}

    def sources() -> Iterator[Any]:
        for index, (_, source, picture) in enumerate(items):
            pictures[index] = picture
            yield source

    try:
        outcomes = captioner.iter_captions(sources(), options=options, batch_size=batch_size)
        for index, (path, (_, outcome)) in enumerate(zip(todo, outcomes, strict=True)):
            sinks.handle(path, outcome, pictures.pop(index, None))
    except KeyboardInterrupt as interrupt:
        interrupt.add_note("results so far are written")
        raise
    finally:
        sinks.close()


def info_command(
    model_dir: Annotated[
        Path | None,
        typer.Argument(help="Model folder or installed model NAME (default: capgen setup's)."),
    ] = None,
) -> None:
    """Show what a model folder's manifest says and verify every file's size and sha256."""
    from capgen.runtime.captioner import resolve_model_dir
    from capgen.runtime.errors import ModelError, ModelIntegrityError
    from capgen.runtime.identity import is_demonstration
    from capgen.runtime.integrity import verify_file
    from capgen.runtime.manifest import FORMAT_NAME, load_manifest
    from capgen.runtime.onnx_external_data import single_file_graph
    from capgen.runtime.precision import describe_precisions
    from capgen.runtime.vocabulary import describe_caption_words

    folder, _ = resolve_model_dir(model_dir)
    manifest = load_manifest(folder)
    is_default = is_demonstration(manifest)
    enc, dec, voc = manifest.encoder, manifest.decoder, manifest.vocabulary
    lines = [
        f"model:        {manifest.name}{'  (demonstration model)' if is_default else ''}",
        f"folder:       {folder}",
        f"description:  {manifest.description}",
        f"format:       {FORMAT_NAME} v{manifest.format_version}",
        f"encoder:      {enc.file} ({enc.kind}, {enc.height}x{enc.width} RGB uint8, "
        f"{enc.resize_filter} resize, {enc.feature_size} features)",
        f"int8 encoder: {enc.int8_file or 'none'}",
        f"fast decoder: {dec.int8_step_file or 'none'}",
        *(f"precision:    {line}" for line in describe_precisions(manifest)),
        f"decoder:      {dec.projection_file} + {dec.step_file} ({dec.units} LSTM units, "
        f"{dec.recurrent_activation or '?'} gates, {dec.merge or '?'} merge)",
        f"vocabulary:   {voc.file}: {voc.size} ids",
        "start/end:    "
        + describe_caption_words(
            voc.start_token, voc.start_id, voc.end_token, voc.end_id, voc.delimiters
        ),
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
    # A manifest's text may hold control characters: each line is escaped on its
    # own, so a newline inside a field cannot fake a line of the report.
    report = ["\n".join(map(escape_controls, lines)) + "\nfiles:\n"]
    # The graphs the runtime loads: "ok" must mean the loader takes them too, and
    # it refuses a graph that keeps tensors in external data (matching sha256 or not).
    graphs = {
        enc.file,
        enc.int8_file,
        dec.projection_file,
        dec.step_file,
        dec.int8_step_file,
        dec.word_gates_file,
    }
    problems: list[ModelError] = []
    for name, record in manifest.files.items():
        try:
            verify_file(manifest.path(name), record, use_stamps=False)
            if name in graphs:
                with single_file_graph(manifest.path(name)):
                    pass
            status = "ok"
        except ModelIntegrityError as err:
            status = f"FAILED: {err}"
            problems.append(err)
        except ModelError as err:
            if type(err) is not ModelError:  # e.g. a Git LFS pointer: its own one-line error
                raise
            status = f"FAILED: {err}"
            problems.append(err)
        needs = f"  onnxruntime {record.onnxruntime}" if record.onnxruntime else ""
        report.append(
            escape_controls(
                f"  {name:<24} {record.bytes:>12} bytes  sha256 {record.sha256[:16]}…  {status}{needs}"
            )
            + "\n"
        )
    write_stdout("".join(report))  # all at once; a closed pipe is the presenter's
    if problems and all(isinstance(problem, ModelIntegrityError) for problem in problems):
        raise ModelIntegrityError(
            f"{len(problems)} file(s) do not match the manifest: {problems[0]}"
        )
    if problems:
        raise ModelError(f"{len(problems)} file(s) cannot be loaded: {problems[0]}")


def models_command() -> None:
    """List the models installed in $CAPGEN_HOME/models (name, vocabulary, encoder, size, INT8)."""
    from capgen.runtime.home import models_dir
    from capgen.runtime.installed import installed_models

    models = installed_models()
    if not models:
        write_stdout(
            escape_controls(
                f"no models in {models_dir()}; build the demonstration with `capgen setup`, or "
                f"convert yours with `capgen convert model model_9.h5 tokenizer.p -o {models_dir()}/NAME`"
            )
            + "\n"
        )
        return
    write_stdout("".join(escape_controls(line) + "\n" for line in model_table(models)))


def _size(size_bytes: int) -> str:
    return f"{size_bytes / 1e6:.1f} MB" if size_bytes >= 1e6 else f"{size_bytes / 1e3:.0f} kB"


def model_table(models: list[InstalledModel]) -> list[str]:
    """The lines `capgen models` prints: a header, then one line per model."""
    rows = [("NAME", "VOCABULARY", "ENCODER", "SIZE", "INT8")]
    for model in models:
        if model.problem is not None:
            rows.append(
                (model.name, "?", "?", _size(model.size_bytes), f"unreadable: {model.problem}")
            )
            continue
        name = model.name + (" (demonstration)" if model.demonstration else "")
        rows.append(
            (
                name,
                f"{model.vocabulary:,}",
                str(model.encoder_kind),
                _size(model.size_bytes),
                "yes" if model.int8 else "no",
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
        + "  "
        + row[4]
        for row in rows
    ]


def tune_command(
    images: Annotated[
        list[str] | None,
        typer.Argument(
            help="Bench images, folders or globs: at least 10 photos like those you will caption.",
            show_default=False,
        ),
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            "-m",
            help="Model folder, or the NAME of one in $CAPGEN_HOME/models (default: capgen setup's).",
        ),
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="Encoder threads (default: one per core).")
    ] = None,
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="Also take the images in subfolders.")
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Say on stderr what each mode measured.")
    ] = False,
) -> None:
    """Measure each encoder precision on this machine; store the fastest whose captions agree.

    A mode qualifies when its greedy captions equal fp32's on at least 97% of the images;
    `--precision auto` then runs the fastest that qualified, for this model on this machine.
    Run it on a quiet machine: the timings decide.
    """
    from capgen.runtime.inputs import check_local, expand_inputs
    from capgen.runtime.tuning import tune

    set_verbosity(False, verbose)
    arguments = list(images or [])
    if not arguments:
        raise InputError("no bench images given; usage: capgen tune IMAGE... [-m MODEL]")
    check_local(arguments)
    paths, _ = expand_inputs(arguments, recursive=recursive)
    started = time.perf_counter()
    result = tune(model, paths, threads=threads, progress=lambda line: detail(f"capgen: {line}"))
    lines = [f"auto: {result.mode} on {result.engine} (stored in {result.stored})"]
    for name, numbers in result.candidates.items():
        if numbers.get("error") is not None:
            lines.append(f"  {name:<18} unavailable: {numbers['error']}")
        else:
            lines.append(
                f"  {name:<18} {numbers['ms_per_image']:8.1f} ms per image  "
                f"{numbers['equal_captions']}/{result.images} greedy captions equal fp32's"
            )
    write_stdout("".join(escape_controls(line) + "\n" for line in lines))
    detail(f"capgen: tuned in {time.perf_counter() - started:.1f} s")


def register_runtime_commands(app: typer.Typer) -> None:
    """Add `caption`, `info` and `models` to the root app (capgen/cli.py)."""
    app.command("caption", cls=OneLineUsageCommand)(caption_command)
    app.command("info", cls=OneLineUsageCommand)(info_command)
    app.command("models", cls=OneLineUsageCommand)(models_command)
    app.command("tune", cls=OneLineUsageCommand)(tune_command)

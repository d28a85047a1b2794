"""`capgen convert quantize MODEL_DIR`: add the INT8 variants (encoder, fast decoder step) to a model folder."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer


def quantize_command(
    model_dir: Annotated[Path, typer.Argument(help="A converted capgen model folder.")],
    scenes: Annotated[
        int,
        typer.Option(
            # The demonstration's own calibration knob (xception+colour encoders only):
            # hidden, since a converted tutorial model never needs it.
            hidden=True,
            help="Train-split synthetic scenes added to the calibration photos.",
        ),
    ] = 4,
    calibration: Annotated[
        Path | None,
        typer.Option(
            help="A folder of your own photos, like the ones you will caption, to tune the INT8 "
            "encoder on (default: photos that come with capgen).",
        ),
    ] = None,
) -> None:
    """Add a faster INT8 encoder (about 2x; most captions stay the same) and a fast decoder step to a model folder.

    Both are opt-in at caption time (capgen caption --int8 --fast-decoder); the exact files stay the default. Needs pip install 'capgen\\[convert]'.
    """
    # \\[ in the docstring: typer's rich help markup would take [...] for a style and drop it.
    from capgen.cli_support.console import terminal_progress
    from capgen.convert.cli import require_convert_stack

    require_convert_stack()
    from capgen.convert.calibration import fetch_kitchenware_photos, folder_pixels, photo_pixels
    from capgen.convert.fast_decoder import add_fast_decoder
    from capgen.convert.quantize import INT8_FILENAME, feature_cosines, quantize_model_folder
    from capgen.runtime.manifest import load_manifest

    model_dir = model_dir.resolve()  # the quantizer works in a scratch folder
    manifest = load_manifest(model_dir)
    images = None
    if calibration is not None:  # checked before any work, so a bad folder costs nothing
        spec = manifest.encoder
        images, found = folder_pixels(calibration, spec.height, spec.width, spec.resize_filter)
        typer.echo(f"calibration: {len(images)} of the {found} images in {calibration}")
    # Quantizing is a minute or more with the quantizer's own output silenced: on a
    # terminal, say which stage runs (stderr; a redirected run keeps only the results).
    progress = terminal_progress("convert quantize")
    started = time.perf_counter()
    quantize_model_folder(
        model_dir, images=images, scene_count=scenes, echo=typer.echo, progress=progress
    )
    progress("fast decoder step")
    typer.echo(
        f"wrote {add_fast_decoder(model_dir)} (fast decoder step: INT8 output layer, best words exact)"
    )
    typer.echo(f"quantized in {time.perf_counter() - started:.1f} s")
    # A quick sanity check a user can read: how far INT8 moved the features of
    # the calibration photos (not an accuracy claim; see benchmarks/ for that).
    progress("comparing INT8 and FP32 features")
    manifest = load_manifest(model_dir)
    sample = images[:4] if images else photo_pixels(fetch_kitchenware_photos()[:4])
    cosines = feature_cosines(
        manifest.path(manifest.encoder.file), manifest.path(INT8_FILENAME), sample
    )
    typer.echo(f"feature cosine INT8 vs FP32 on {len(sample)} photos: min {cosines.min():.4f}")


def register_quantize_command(convert_app: typer.Typer) -> None:
    convert_app.command("quantize")(quantize_command)

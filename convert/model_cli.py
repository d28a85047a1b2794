"""`capgen convert model MODEL TOKENIZER -o OUT`: the tutorial user's one conversion command.

It prints what it read from the user's files (vocabulary, max_length, sizes,
activation, merge, delimiters) so a user can see at a glance that capgen
understood their model the way they trained it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from capgen.cli_support.console import escape_controls, write_stdout
from capgen.cli_support.usage_errors import OneLineUsageCommand


def model_command(
    model: Annotated[
        Path,
        typer.Argument(help="The decoder: model_9.h5 (Keras 2/3), .keras, or a weights-only .h5."),
    ],
    tokenizer: Annotated[
        Path,
        typer.Argument(
            help="The pickled Keras Tokenizer (tokenizer.p), or tokenizer.to_json() output."
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Model folder to write.")],
    architecture: Annotated[
        Path | None,
        typer.Option("--architecture", help="model.to_json() output, for a weights-only .h5."),
    ] = None,
    encoder: Annotated[
        str,
        typer.Option(
            help="An encoder kind (xception, vgg16, resnet50, inceptionv3, densenet201, "
            "xception+colour), PATH to an encoder ONNX, or PATH to your saved Keras encoder "
            "(.h5/.keras, with --preprocessing)."
        ),
    ] = "xception",
    encoder_kind: Annotated[
        str | None,
        typer.Option(help="The same as --encoder KIND (give one of the two)."),
    ] = None,
    weights: Annotated[
        Path | None,
        typer.Option(
            help="The encoder kind's Keras weights .h5 from ~/.keras/models/ (xception's "
            "default: ImageNet, fetched once; every other kind needs it)."
        ),
    ] = None,
    preprocessing: Annotated[
        str | None,
        typer.Option(
            help="For --encoder encoder.h5/.keras: caffe (vgg16, resnet50), torch (densenet), "
            "tf (inception_v3, xception) or none, as keras.applications.*.preprocess_input."
        ),
    ] = None,
    resize_filter: Annotated[
        str | None,
        typer.Option(
            help="How photos are resized for the encoder: nearest (keras load_img), bicubic "
            "(PIL resize, Pillow >= 7), bilinear (tf.image.resize), box, hamming, lanczos "
            "(default: the kind's tutorial's; see README)."
        ),
    ] = None,
    start_token: Annotated[
        str | None,
        typer.Option(
            help="Caption start word (default: the pair of words found in nearly every caption)."
        ),
    ] = None,
    end_token: Annotated[
        str | None,
        typer.Option(
            help="Caption end word (default: the pair of words found in nearly every caption)."
        ),
    ] = None,
    start_outside_vocabulary: Annotated[
        bool,
        typer.Option(
            help="The --start-token word is not in the tokenizer, as in loops whose first input "
            "was all padding."
        ),
    ] = False,
    no_end_token: Annotated[
        bool, typer.Option(help="No end word: captions run to max_length, as the loop did.")
    ] = False,
    max_length: Annotated[
        int | None, typer.Option(help="Only for models whose word input has no fixed length.")
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(help="Name recorded in the manifest (default: the output folder's name)."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing model folder.")] = False,
) -> None:
    """Convert a tutorial model (model_9.h5 + tokenizer.p) into a capgen model folder.

    Needs h5py and onnx (pip install 'capgen\\[convert-decoder]'); TensorFlow
    only to export an encoder capgen does not write itself (xception+colour, a
    Keras encoder file) that is not in the cache yet.
    """
    from capgen.convert.stack import DECODER_STACK, quiet_tensorflow, require

    # Before importing the converter, which needs onnx; TensorFlow is checked
    # only where an encoder must be exported (capgen.convert.encoder).
    require(
        DECODER_STACK,
        "converting a model needs the conversion stack",
        "pip install 'capgen[convert-decoder]' (add TensorFlow with 'capgen[convert]' to "
        "export xception+colour or a Keras encoder file)",
    )
    quiet_tensorflow()  # before anything imports TensorFlow
    from capgen.convert.convert_model import convert_model
    from capgen.runtime.errors import InputError

    if encoder_kind is not None:
        if encoder != "xception" and encoder != encoder_kind:
            raise InputError("give the encoder once: --encoder or --encoder-kind, not both")
        encoder = encoder_kind

    started = time.perf_counter()
    report = convert_model(
        model,
        tokenizer,
        output,
        architecture_json=architecture,
        encoder=encoder,
        encoder_weights=weights,
        resize_filter=resize_filter,
        encoder_preprocessing=preprocessing,
        start_token=start_token,
        end_token=end_token,
        start_outside_vocabulary=start_outside_vocabulary,
        no_end_token=no_end_token,
        max_length=max_length,
        name=name,
        force=force,
        progress=lambda line: write_stdout(escape_controls(line) + "\n"),  # stderr: one-line errors
    )
    arch = report.architecture
    merge_order = "photo, words" if arch.photo_first else "words, photo"
    typer.echo(f"vocabulary:     {report.vocab_size:,} ids")
    typer.echo(f"start/end:      {report.delimiters.describe()}")
    typer.echo(f"max length:     {report.max_length}")
    typer.echo(
        f"photo features: {arch.feature_size} -> Dense {arch.projection_size} "
        f"({arch.photo_activation})"
    )
    typer.echo(
        f"words:          Embedding {arch.embedding_size} -> LSTM {arch.units} "
        f"(recurrent activation {arch.recurrent_activation})"
    )
    typer.echo(
        f"merge:          {arch.merge} ({merge_order}) -> Dense {arch.hidden_size} "
        f"({arch.hidden_activation}) -> softmax {arch.vocab_size:,}"
    )
    typer.echo(f"encoder:        {report.encoder_kind} ({report.encoder_path})")
    pixels = report.encoder_input
    if pixels:
        typer.echo(
            f"photos:         {pixels.get('width')}x{pixels.get('height')}, "
            f"{str(pixels.get('resize_filter', '?')).lower()} resize, {pixels.get('scaling', '?')}"
        )
    typer.echo(f"wrote {report.out_dir} ({time.perf_counter() - started:.1f} s)")


def register_model_command(convert_app: typer.Typer) -> None:
    convert_app.command("model", cls=OneLineUsageCommand)(model_command)

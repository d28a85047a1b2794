"""`model_9.h5` + `tokenizer.p` -> a model folder: the decoder conversion, start to end.

Everything about the decoder is read with h5py and a restricted unpickler, so
this path never imports TensorFlow; only exporting an encoder that is not yet
cached does (in capgen.convert.encoder).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capgen.convert.architecture import DecoderArchitecture, read_architecture
from capgen.convert.decoder_weights import assemble_decoder_weights
from capgen.convert.delimiters import DelimiterOptions, Delimiters, choose_delimiters
from capgen.convert.hashing import sha256_file
from capgen.convert.keras_reader import read_keras_model
from capgen.convert.model_folder import (
    EncoderInfo,
    ModelFolderSpec,
    check_encoder_fits,
    describe_encoder,
    prepare_target,
    resize_filter_name,
    with_resize_filter,
    write_model_folder,
)
from capgen.convert.tokenizer import build_vocabulary, read_tokenizer
from capgen.runtime.errors import InputError, ModelError, TokenizerError, UnsupportedModelError
from capgen.runtime.identity import DEMONSTRATION_KEY
from capgen.runtime.limits import MAX_CAPTION_LENGTH


@dataclass(frozen=True)
class ConversionReport:
    """What the converter found and where it wrote; the CLI prints this."""

    out_dir: Path
    architecture: DecoderArchitecture
    vocab_size: int
    max_length: int
    delimiters: Delimiters
    encoder_kind: str
    encoder_path: Path
    encoder_input: Mapping[str, Any] = field(default_factory=dict)  # size, resize filter, scaling


def resolve_max_length(arch: DecoderArchitecture, override: int | None) -> int:
    """The model's fixed sequence length; an override only where the input is variable length."""
    if override is not None and not 1 <= override <= MAX_CAPTION_LENGTH:
        raise InputError(f"--max-length must be from 1 to {MAX_CAPTION_LENGTH}, got {override}")
    if arch.max_length is not None and arch.max_length > MAX_CAPTION_LENGTH:
        raise UnsupportedModelError(
            f"the model's word-id input {arch.sequence_input!r} is {arch.max_length} tokens long; "
            f"capgen runs captions of at most {MAX_CAPTION_LENGTH} words"
        )
    if arch.max_length is None:
        if override is None:
            raise InputError(
                f"the model's word-id input {arch.sequence_input!r} has no fixed length; "
                "pass --max-length (the max_length the model was trained with)"
            )
        return override
    if override is not None and override != arch.max_length:
        raise InputError(
            f"--max-length {override} contradicts the model, whose word-id input is fixed at "
            f"{arch.max_length} tokens"
        )
    return arch.max_length


def _encoder_from_choice(
    choice: str, feature_size: int, weights: Path | None, preprocessing: str | None
) -> EncoderInfo:
    """A registered kind (`xception`, ...) comes from the cache (exported once); anything else
    is a path: a saved Keras encoder (.h5/.keras, exported once with `preprocessing`) or an ONNX."""
    from capgen.convert import encoder as encoders
    from capgen.convert.encoder_registry import (
        encoder_kind_names,
        find_encoder_kind,
        kinds_with_size,
    )
    from capgen.convert.keras_encoder import ensure_keras_encoder, is_keras_encoder_path

    spec = find_encoder_kind(choice)
    if preprocessing is not None and (spec is not None or not is_keras_encoder_path(choice)):
        raise InputError(
            "--preprocessing is for a saved Keras encoder (--encoder encoder.h5 or .keras); "
            "a kind's preprocessing is its own and an ONNX encoder's is inside it"
        )
    if spec is not None:
        expected = spec.feature_size
        if expected != feature_size:
            raise ModelError(
                f"encoder {choice!r} outputs {expected} features but the decoder's photo input "
                f"takes {feature_size}; pass --encoder with the encoder the model was trained with "
                f"({', '.join(kinds_with_size(feature_size)) or 'no built-in kind has that size'}"
                ", or PATH to an encoder ONNX)"
            )
        path = encoders.ensure_encoder(choice, weights)
        info = describe_encoder(path, choice)
        record = encoders.encoder_record(path)
        weights_source = {
            "name": str(record.get("weights_file", "")),
            "sha256": str(record.get("weights_sha256", "")),
        }
        return EncoderInfo(
            info.path, info.kind, info.feature_size, info.preprocessing, weights_source
        )
    path = Path(choice)
    if not path.is_file():
        kinds = ", ".join(encoder_kind_names())
        raise InputError(
            f"--encoder {choice!r} is neither one of {kinds} nor an ONNX or Keras encoder file"
        )
    if is_keras_encoder_path(choice):
        exported = ensure_keras_encoder(path, preprocessing)
        info = describe_encoder(exported)
        return EncoderInfo(
            info.path, info.kind, info.feature_size, info.preprocessing, _source(path)
        )
    return describe_encoder(path)


STEPS = 5


def _stepper(progress: Callable[[str], None] | None) -> Callable[[str], None]:
    """`[n/5] what` to `progress`, counting the steps of one conversion."""
    count = 0

    def step(what: str) -> None:
        nonlocal count
        count += 1
        if progress is not None:
            progress(f"[{count}/{STEPS}] {what}")

    return step


def _encoder_step(choice: str) -> str:
    from capgen.convert.encoder_registry import find_encoder_kind

    if find_encoder_kind(choice) is None:
        return f"encoder {choice}"
    return f"encoder {choice} (from the cache, or exported once with TensorFlow: about a minute)"


def _source(path: Path) -> dict[str, str]:
    return {"name": path.name, "sha256": sha256_file(path)}


def convert_model(
    model_path: Path,
    tokenizer_path: Path,
    out_dir: Path,
    *,
    architecture_json: Path | None = None,
    encoder: str | EncoderInfo = "xception",
    encoder_weights: Path | None = None,
    resize_filter: str | None = None,
    encoder_preprocessing: str | None = None,
    start_token: str | None = None,
    end_token: str | None = None,
    start_outside_vocabulary: bool = False,
    no_end_token: bool = False,
    max_length: int | None = None,
    name: str | None = None,
    description: str | None = None,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
    demonstration: bool = False,
) -> ConversionReport:
    """Convert the tutorial's decoder and assemble the model folder at `out_dir`.

    Start and end words come from the tokenizer's counts unless given
    (delimiters.py); `start_outside_vocabulary` and `no_end_token` reproduce
    caption loops that start from a word the tokenizer does not know, or never stop early.
    `name` defaults to the output folder's name (what `capgen caption -m NAME`
    finds in $CAPGEN_HOME/models); `progress` gets one line as each step starts;
    `demonstration` marks capgen's demonstration model in the manifest;
    `resize_filter` (nearest, bilinear, bicubic, ...) replaces the encoder's
    recorded filter, for a model trained on photos resized another way;
    `encoder_preprocessing` (caffe, torch, tf, none) is for `encoder` naming a
    saved Keras encoder file, whose preprocessing nothing else records.
    """
    out_dir = Path(out_dir)
    chosen_filter = None if resize_filter is None else resize_filter_name(resize_filter)
    name = name or out_dir.name or out_dir.resolve().name or "model"
    step = _stepper(progress)
    prepare_target(out_dir, force)
    step(f"reading the decoder {Path(model_path).name}")
    files = read_keras_model(
        Path(model_path), Path(architecture_json) if architecture_json else None
    )
    arch = read_architecture(files.model_config, files.keras_version)
    step(f"reading the tokenizer {Path(tokenizer_path).name}")
    tokenizer = read_tokenizer(Path(tokenizer_path))
    vocabulary = build_vocabulary(tokenizer, arch.vocab_size)
    delimiters = choose_delimiters(
        tokenizer,
        vocabulary,
        DelimiterOptions(start_token, end_token, start_outside_vocabulary, no_end_token),
    )
    if delimiters.start_id is not None and delimiters.start_id >= arch.embedding_input_dim:
        raise TokenizerError(
            f"start token {delimiters.start_token!r} has id {delimiters.start_id}, beyond the "
            f"model's embedding of {arch.embedding_input_dim} ids"
        )
    length = resolve_max_length(arch, max_length)
    step(f"checking the decoder's weights ({arch.vocab_size:,} words, LSTM {arch.units})")
    weights = assemble_decoder_weights(arch, files.weights)
    if isinstance(encoder, EncoderInfo):
        step(f"encoder {encoder.path.name}")
        check_encoder_fits(encoder, arch.feature_size)
        encoder_info = encoder
    else:
        step(_encoder_step(encoder))
        encoder_info = _encoder_from_choice(
            encoder, arch.feature_size, encoder_weights, encoder_preprocessing
        )
    if chosen_filter is not None:
        encoder_info = with_resize_filter(encoder_info, chosen_filter)
    sources = {"model": _source(Path(model_path)), "tokenizer": _source(Path(tokenizer_path))}
    if architecture_json is not None:
        sources["architecture"] = _source(Path(architecture_json))
    spec = ModelFolderSpec(
        weights=weights,
        vocabulary=vocabulary,
        delimiters=delimiters,
        max_length=length,
        sources=sources,
        name=name,
        description=description
        or f"converted from {Path(model_path).name} and {Path(tokenizer_path).name}",
        extra_manifest={DEMONSTRATION_KEY: True} if demonstration else {},
    )
    step(f"building the decoder graphs and writing {out_dir}")
    write_model_folder(out_dir, spec, encoder_info, force=force)
    return ConversionReport(
        out_dir=out_dir,
        architecture=arch,
        vocab_size=arch.vocab_size,
        max_length=length,
        delimiters=delimiters,
        encoder_kind=encoder_info.kind,
        encoder_path=encoder_info.path,
        encoder_input=dict(encoder_info.preprocessing),
    )

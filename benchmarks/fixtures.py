"""What both arms of the benchmark run on: the same decoders, tokenizers, photos and weights.

- `tutorial7577`: a real tutorial decoder's architecture (Keras 2.8 config,
  7,577 words) with random weights, saved as the tutorial saves it (a full
  Keras 2 `.h5`) next to its real tokenizer, and converted with capgen's own
  converter for the capgen arm. The weights are "peaked": the final layer is
  scaled so each word wins by a clear margin (random small weights would make
  near-ties that flip between two correct implementations), and `end` and ids
  with no word are pushed down so every caption is exactly 32 words, the
  tutorial's worst case and the one its per-word cost is quoted for.
- `default`: the project's default model, the Flickr8k photo captioner
  (`models/photo/model_N.h5`, a Keras 2 `.h5` as the tutorial saves it, with
  the plain ImageNet Xception encoder), converted the same way.
- photos: the 12 real Flickr8k photos plus generated scenes (test-split
  indices, never used for calibration) to reach the throughput folder size.

Everything is built once into `$CAPGEN_HOME/bench/` and reused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from capgen.runtime.atomic_write import atomic_path
from capgen.runtime.home import capgen_home
from capgen.runtime.manifest import MANIFEST_FILE

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
FLICKR_PHOTOS = SHARED_DATA / "flickr8k" / "Flicker8k_Dataset"
DECODER_JSON = SHARED_DATA / "model_configs" / "decoder_keras2.8.json"
DECODER_TOKENIZER = SHARED_DATA / "model_configs" / "decoder_keras2.8.tokenizer.p"
DEFAULT_MODEL_DIR = REPO_ROOT / "models" / "photo"
DEFAULT_MODEL_ENV = "CAPGEN_BENCH_DEFAULT_MODEL"
TUTORIAL_SCRIPT = REPO_ROOT / "benchmarks" / "tutorial" / "main.py"
PEAK_SCALE = 8.0  # logits spread: the winning word leads by several nats
SUPPRESSED_BIAS = -50.0
# Scenes for the throughput folder: far past any train/dev split's indices.
SCENE_SEED = 8
SCENE_FIRST_INDEX = 900_000
# Bump when this module changes what it builds (weights, conversion): it keys the stamps.
RECIPE_VERSION = "1"


@dataclass(frozen=True)
class BenchModel:
    """One decoder, as each arm loads it."""

    name: str
    keras_file: Path  # what the tutorial script loads
    tokenizer: Path
    model_dir: Path  # capgen's converted folder
    colour: bool  # the decoder expects xception+colour features
    note: str

    def to_json(self) -> dict[str, str | bool]:
        return {
            key: str(value) if isinstance(value, Path) else value
            for key, value in asdict(self).items()
        }

    @staticmethod
    def from_json(data: dict[str, str | bool]) -> BenchModel:
        return BenchModel(
            name=str(data["name"]),
            keras_file=Path(str(data["keras_file"])),
            tokenizer=Path(str(data["tokenizer"])),
            model_dir=Path(str(data["model_dir"])),
            colour=bool(data["colour"]),
            note=str(data["note"]),
        )


def bench_home() -> Path:
    return capgen_home() / "bench"


def _peaked_weights(model: Any, tokenizer_words: dict[str, int], seed: int = 0) -> None:
    """Random weights with a decisive softmax; `end` and ids without a word never win."""
    rng = np.random.default_rng(seed)
    arrays = []
    for array in model.get_weights():
        arrays.append(rng.normal(0.0, 0.08, array.shape).astype(np.float32))
    model.set_weights(arrays)
    final = model.layers[-1]
    kernel, bias = final.get_weights()
    kernel = kernel / (np.std(kernel) + 1e-9) * (PEAK_SCALE / np.sqrt(kernel.shape[0]))
    bias = np.zeros_like(bias)
    has_word = np.zeros(bias.shape[0], dtype=bool)
    for index in tokenizer_words.values():
        if index < bias.shape[0]:
            has_word[index] = True
    bias[~has_word] = SUPPRESSED_BIAS
    bias[tokenizer_words["end"]] = SUPPRESSED_BIAS
    final.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])


def _word_index(tokenizer_path: Path) -> dict[str, int]:
    from capgen.convert.tokenizer import read_tokenizer

    return dict(read_tokenizer(tokenizer_path).word_index)


def repickle_for_tf_keras(tokenizer_path: Path, target: Path) -> Path:
    """The same Tokenizer state, pickled as a tf_keras Tokenizer.

    The shared tokenizer references `keras_preprocessing.text`, a package
    today's stack no longer installs, so the tutorial's `pickle.load` fails on
    it; a tutorial user on this stack would re-pickle it like this. The state
    (word_index and all) is copied unchanged, read with capgen's safe reader.
    """
    import pickle

    from tf_keras.preprocessing.text import Tokenizer

    from capgen.convert.tokenizer import loads_restricted

    state = vars(loads_restricted(tokenizer_path.read_bytes()))
    tokenizer = Tokenizer()
    tokenizer.__dict__.update(state)
    with target.open("wb") as handle:
        pickle.dump(tokenizer, handle)
    return target


def build_tutorial7577(target_dir: Path) -> Path:
    """The 7,577-word decoder as a tutorial-style full Keras 2 `.h5`."""
    import tf_keras

    target_dir.mkdir(parents=True, exist_ok=True)
    h5_path = target_dir / "model_7577.h5"
    model = tf_keras.models.model_from_json(DECODER_JSON.read_text())
    _peaked_weights(model, _word_index(DECODER_TOKENIZER))
    with atomic_path(h5_path, keep_suffix=True) as partial:  # Keras picks the format by suffix
        model.save(partial)
    return h5_path


def _convert(keras_file: Path, tokenizer: Path, out_dir: Path, encoder: str, name: str) -> None:
    from capgen.convert.convert_model import convert_model

    convert_model(keras_file, tokenizer, out_dir, encoder=encoder, name=name, force=True)


def _stamp_ok(stamp: Path, wanted: dict[str, str]) -> bool:
    try:
        return json.loads(stamp.read_text()) == wanted
    except (OSError, ValueError):
        return False


def _fingerprint(kind: str, *paths: Path) -> dict[str, str]:
    """What a converted bench model depends on: this module's recipe, its inputs' content and
    the encoder's export recipe (never source files' bytes)."""
    from capgen.convert.encoder import PORTABLE_CHECK, export_recipe
    from capgen.convert.encoder_registry import get_encoder_kind
    from capgen.convert.hashing import sha256_file
    from capgen.convert.model_folder import CONVERTER_RECIPE

    fingerprint = {"recipe": RECIPE_VERSION, "converter_recipe": CONVERTER_RECIPE}
    for path in paths:
        fingerprint[path.name] = sha256_file(path)
    for key, value in export_recipe(get_encoder_kind(kind)).items():
        fingerprint[f"encoder.{key}"] = value
    # Folders converted before the encoder was made portable hold one OpenVINO refuses.
    fingerprint["encoder.portable"] = str(PORTABLE_CHECK)
    return fingerprint


def prepare_tutorial7577(echo: Callable[[str], None] = print) -> BenchModel:
    folder = bench_home() / "tutorial7577"
    model_dir = folder / "capgen_model"
    stamp = folder / "stamp.json"
    wanted = _fingerprint("xception", DECODER_JSON, DECODER_TOKENIZER)
    h5_path = folder / "model_7577.h5"
    if not (
        _stamp_ok(stamp, wanted) and h5_path.is_file() and (model_dir / MANIFEST_FILE).is_file()
    ):
        echo("building the 7,577-word tutorial decoder (.h5) and converting it with capgen")
        build_tutorial7577(folder)
        _convert(h5_path, DECODER_TOKENIZER, model_dir, "xception", "tutorial7577")
        repickle_for_tf_keras(DECODER_TOKENIZER, folder / "tokenizer_tf_keras.p")
        stamp.write_text(json.dumps(wanted))
    return BenchModel(
        name="tutorial7577",
        keras_file=h5_path,
        tokenizer=folder / "tokenizer_tf_keras.p",
        model_dir=model_dir,
        colour=False,
        note="Keras 2.8 tutorial decoder config (7,577 words), peaked random weights, Keras 2 .h5 "
        "loaded with tf_keras; its real tokenizer re-pickled for tf_keras (same state); "
        "ImageNet Xception encoder; every caption is 32 words",
    )


def default_model_source() -> Path:
    """models/photo, or the folder named by CAPGEN_BENCH_DEFAULT_MODEL (a candidate model)."""
    override = os.environ.get(DEFAULT_MODEL_ENV)
    return Path(override) if override else DEFAULT_MODEL_DIR


def prepare_default(echo: Callable[[str], None] = print) -> BenchModel | None:
    """The default model, converted from the committed Keras file; None if it is not there yet."""
    from capgen.models.setup_default import PHOTO_MODEL, model_sources
    from capgen.runtime.errors import InputError

    try:
        keras_file, tokenizer = model_sources(PHOTO_MODEL, default_model_source())
    except InputError:
        return None
    folder = bench_home() / "default"
    model_dir = folder / "capgen_model"
    stamp = folder / "stamp.json"
    wanted = _fingerprint(PHOTO_MODEL.encoder, keras_file, tokenizer)
    if not (_stamp_ok(stamp, wanted) and (model_dir / MANIFEST_FILE).is_file()):
        echo(f"converting the default model with capgen ({PHOTO_MODEL.encoder} encoder)")
        folder.mkdir(parents=True, exist_ok=True)
        _convert(keras_file, tokenizer, model_dir, PHOTO_MODEL.encoder, "default")
        stamp.write_text(json.dumps(wanted))
    return BenchModel(
        name="default",
        keras_file=keras_file,
        tokenizer=tokenizer,
        model_dir=model_dir,
        colour=False,
        note=f"the default photo model ({keras_file.name}, a Keras 2 .h5 loaded with tf_keras) "
        "with the plain ImageNet Xception encoder",
    )


def ensure_int8(model: BenchModel, echo: Callable[[str], None] = print) -> Path:
    """The model folder's INT8 encoder, quantized once with capgen's own command code."""
    from capgen.convert.quantize import quantize_model_folder
    from capgen.runtime.manifest import load_manifest

    int8_file = load_manifest(model.model_dir).encoder.int8_file
    if int8_file and (model.model_dir / int8_file).is_file():
        return model.model_dir / int8_file
    echo(f"quantizing the {model.name} encoder to INT8")
    return quantize_model_folder(model.model_dir, echo=echo).output


def ensure_fast_decoder(model: BenchModel) -> bool:
    """Add the converter's opt-in fast decoder step where the converter offers one."""
    import importlib.util

    from capgen.runtime.manifest import load_manifest

    if importlib.util.find_spec("capgen.convert.fast_decoder") is None:
        return False
    if load_manifest(model.model_dir).decoder.int8_step_file:
        return True
    from capgen.convert.fast_decoder import add_fast_decoder

    add_fast_decoder(model.model_dir)
    return True


def flickr_photos() -> list[Path]:
    return sorted(FLICKR_PHOTOS.glob("*.jpg"))


def photo_folder(count: int) -> list[Path]:
    """`count` photos: the real Flickr8k ones first, then generated scenes, written once."""
    from capgen.models.scenes import render, sample_scene

    photos = flickr_photos()[:count]
    folder = bench_home() / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    index = SCENE_FIRST_INDEX
    while len(photos) < count:
        path = folder / f"scene_{SCENE_SEED}_{index}.jpg"
        if not path.is_file():
            path.write_bytes(render(sample_scene(SCENE_SEED, index), SCENE_SEED, index))
        photos.append(path)
        index += 1
    return photos

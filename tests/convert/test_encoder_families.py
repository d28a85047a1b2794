"""Every tutorial's encoder (issue 17): VGG16 fc2, ResNet50, InceptionV3, DenseNet201.

Parity needs no ImageNet files: each application gets random weights saved in
Keras's own cache layout and is exported through `ensure_encoder`, the path a
user's `--weights` file takes. Its features must equal Keras `predict` after
the family's `preprocess_input` on the same pixels of the 12 Flickr8k photos
(max abs <= 1e-4 of the feature scale). Then decoders with the matching feature
size caption those photos token for token as the tutorial loop does with
`load_img` and that encoder. Each family is exported once per session (slow:
VGG16's export alone takes about a minute).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from capgen_cli import assert_one_line_error
from family_helpers import (
    KINDS,
    FamilyExports,
    capgen_home,
    onnx_features,
)
from keras_decoder_builders import (
    fit_small_tokenizer,
    save_small_tutorial_decoder,
    tutorial_greedy,
)
from PIL import Image

pytestmark = pytest.mark.convert

RELATIVE_TOLERANCE = 1e-4
CAPGEN = Path(sys.executable).with_name("capgen")


@pytest.fixture(scope="session")
def family_exports(
    tmp_path_factory: pytest.TempPathFactory, tensorflow_stack: None
) -> FamilyExports:
    return FamilyExports(tmp_path_factory.mktemp("families"))


@pytest.fixture(scope="session")
def family_tokenizer(
    tmp_path_factory: pytest.TempPathFactory, tf_keras_stack: None
) -> tuple[Path, Any]:
    path = tmp_path_factory.mktemp("family_tokenizer") / "tokenizer.p"
    return path, fit_small_tokenizer(path)


def _resized(path: Path, size: int, resample: Image.Resampling) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB").resize((size, size), resample))


def _forget_keras_models() -> None:
    import keras

    keras.backend.clear_session()


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_exported_family_matches_keras_predict(
    kind: str, family_exports: FamilyExports, flickr_photos: list[Path]
) -> None:
    import onnx

    from capgen.convert.applications import FAMILIES, SCALING

    family = FAMILIES[kind]
    exported = family_exports.get(kind)
    pixels = np.stack(
        [_resized(path, family.input_size, Image.Resampling.NEAREST) for path in flickr_photos]
    )
    ours = onnx_features(exported.encoder, pixels)
    theirs = family_exports.reference_features(kind, pixels)

    assert ours.shape == theirs.shape == (len(flickr_photos), family.feature_size)
    scale = float(np.abs(theirs).max())
    assert scale > 0 and np.isfinite(ours).all()
    worst = float(np.abs(ours - theirs).max())
    assert worst <= RELATIVE_TOLERANCE * scale, f"{kind}: max abs {worst:.3g} at scale {scale:.3g}"
    # The photos' features differ, so agreeing on them says something about the preprocessing.
    assert float(np.abs(theirs - theirs.mean(axis=0)).max()) > 100 * worst
    props = {
        prop.key: prop.value
        for prop in onnx.load(str(exported.encoder), load_external_data=False).metadata_props
    }
    recorded = json.loads(props["capgen.encoder.preprocessing"])
    assert (recorded["height"], recorded["width"]) == (family.input_size,) * 2
    assert recorded["resize_filter"] == "NEAREST"
    assert recorded["scaling"] == SCALING[family.mode]
    assert props["capgen.encoder.kind"] == kind


def _tutorial_features(
    kind: str, exports: FamilyExports, photos: list[Path], interpolation: str
) -> Any:
    """The tutorial's extract_features: load_img(target_size) -> preprocess_input -> predict."""
    import keras

    from capgen.convert.applications import FAMILIES

    size = FAMILIES[kind].input_size
    arrays = np.stack(
        [
            keras.utils.img_to_array(
                keras.utils.load_img(path, target_size=(size, size), interpolation=interpolation)
            )
            for path in photos
        ]
    )
    return arrays, exports.reference_features(kind, arrays)


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "resize_filter"), [("vgg16", None), ("densenet201", "bilinear")])
def test_family_decoder_captions_like_the_tutorial_loop(
    kind: str,
    resize_filter: str | None,
    family_exports: FamilyExports,
    family_tokenizer: tuple[Path, Any],
    flickr_photos: list[Path],
    tmp_path: Path,
) -> None:
    """A VGG16 (4096) / DenseNet201 (1920) decoder: capgen's greedy words are the tutorial's."""
    import tf_keras

    from capgen.convert.applications import FAMILIES
    from capgen.convert.convert_model import convert_model
    from capgen.runtime.captioner import Captioner

    family = FAMILIES[kind]
    exported = family_exports.get(kind)
    tokenizer_path, tokenizer = family_tokenizer
    model_file = save_small_tutorial_decoder(
        tmp_path / "model.h5", tokenizer, family.feature_size, seed=3
    )
    if resize_filter is None:  # the VGG16 user's one command, through the console script
        done = _capgen(
            "convert", "model", str(model_file), str(tokenizer_path), "-o", str(tmp_path / "out"),
            "--encoder-kind", kind, "--weights", str(exported.weights),
            home=family_exports.home,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert f"photos:         {family.input_size}x{family.input_size}, nearest" in done.stdout
    else:
        with capgen_home(family_exports.home):
            convert_model(
                model_file,
                tokenizer_path,
                tmp_path / "out",
                encoder=kind,
                encoder_weights=exported.weights,
                resize_filter=resize_filter,
            )
    interpolation = resize_filter or "nearest"
    _, features = _tutorial_features(kind, family_exports, flickr_photos, interpolation)
    decoder = tf_keras.models.load_model(model_file, compile=False)
    expected = tutorial_greedy(
        lambda photos, words: decoder.predict_on_batch([photos, words.astype(np.float32)]),
        tokenizer,
        features,
        max_length=12,
    )

    captioner = Captioner(tmp_path / "out")
    # load_img's pixels with capgen's pass order (width, then height: Pillow 10/11's own, on
    # every Pillow); Pillow 12.3/13's load_img runs the height pass first for some portraits,
    # so the tutorial's features above may come from slightly other pixels: the words below
    # must still be the tutorial's.
    first = Image.open(flickr_photos[0]).convert("RGB")
    resample = Image.Resampling[interpolation.upper()]
    two_pass = first.resize((family.input_size, first.height), resample).resize(
        (family.input_size, family.input_size), resample
    )
    assert np.array_equal(captioner.preprocess(flickr_photos[0]), np.asarray(two_pass))
    vocabulary = json.loads((tmp_path / "out" / "vocabulary.json").read_text())
    results = captioner.caption_batch(flickr_photos, beam_size=1)
    for index, (want, got) in enumerate(zip(expected, results, strict=True)):
        words = [vocabulary[token] for token in got.tokens if vocabulary[token] is not None]
        assert words == want.words, f"photo {index}: {words} != {want.words}"
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["encoder"]["kind"] == kind
    assert manifest["encoder"]["feature_size"] == family.feature_size
    assert manifest["encoder"]["input"]["resize_filter"] == interpolation.upper()
    assert manifest["encoder"]["input"]["height"] == family.input_size
    assert manifest["sources"]["encoder_weights"]["name"] == family.weights_file


def _capgen(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CAPGEN_HOME": str(home)}
    return subprocess.run(
        [str(CAPGEN), *args], capture_output=True, text=True, env=env, timeout=600
    )


def test_a_family_without_weights_asks_for_the_keras_file(tmp_path: Path) -> None:
    """Nothing is downloaded: --kind vgg16 without --weights names the file to pass."""
    done = _capgen("convert", "encoder", "--kind", "vgg16", home=tmp_path)
    assert_one_line_error(done, 2, "--weights", "vgg16_weights_tf_dim_ordering_tf_kernels.h5")


def test_vgg16_refuses_the_notop_file(tmp_path: Path, tensorflow_stack: None) -> None:
    from capgen.convert.applications import FAMILIES, build_application
    from capgen.convert.random_weights import random_weights_file
    from capgen.runtime.errors import InputError

    notop = random_weights_file("vgg16", tmp_path, top=False)
    assert notop.name == "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    with pytest.raises(InputError, match=r"no-top weights file.*fc2.*kernels\.h5$"):
        build_application(FAMILIES["vgg16"], notop)
    _forget_keras_models()


@pytest.mark.slow
def test_the_wrong_family_is_named_in_one_line(
    family_exports: FamilyExports, tmp_path: Path
) -> None:
    """ResNet50's file given as DenseNet201's, through the console script (the export's child)."""
    resnet = family_exports.weights("resnet50")
    done = _capgen(
        "convert", "encoder", "--kind", "densenet201", "--weights", str(resnet), home=tmp_path
    )
    assert_one_line_error(
        done, 2, "holds ResNet50 weights", "densenet201_weights_tf_dim_ordering_tf_kernels_notop.h5"
    )


@pytest.mark.slow
def test_damaged_weight_files_get_one_line(
    family_exports: FamilyExports, shared_data: Path, tmp_path: Path
) -> None:
    from capgen.convert.applications import FAMILIES, build_application
    from capgen.runtime.errors import InputError

    resnet = family_exports.weights("resnet50")
    truncated = tmp_path / resnet.name
    truncated.write_bytes(resnet.read_bytes()[: resnet.stat().st_size // 2])
    with pytest.raises(InputError, match="corrupted or truncated"):
        build_application(FAMILIES["resnet50"], truncated)
    pointer = tmp_path / "pointer" / resnet.name
    pointer.parent.mkdir()
    shutil.copy(shared_data / "bad_inputs" / "git-lfs-pointer-model_9.h5", pointer)
    with pytest.raises(InputError, match="Git LFS pointer"):
        build_application(FAMILIES["resnet50"], pointer)
    _forget_keras_models()


def test_decoder_feature_size_must_match_the_kind(
    family_tokenizer: tuple[Path, Any], tmp_path: Path
) -> None:
    """A 2048-feature decoder with --encoder-kind vgg16 stops before any export, in one line."""
    tokenizer_path, tokenizer = family_tokenizer
    model_file = save_small_tutorial_decoder(tmp_path / "model.h5", tokenizer, 2048, seed=4)
    weights = tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
    weights.write_bytes(b"never read")
    done = _capgen(
        "convert", "model", str(model_file), str(tokenizer_path), "-o", str(tmp_path / "out"),
        "--encoder-kind", "vgg16", "--weights", str(weights), home=tmp_path / "home",
    )  # fmt: skip
    assert_one_line_error(done, 3, "outputs 4096 features", "takes 2048", "resnet50", "inceptionv3")
    assert not (tmp_path / "out").exists()


def test_resize_filter_must_be_a_pillow_filter(
    family_tokenizer: tuple[Path, Any], tmp_path: Path
) -> None:
    tokenizer_path, tokenizer = family_tokenizer
    model_file = save_small_tutorial_decoder(tmp_path / "model.h5", tokenizer, 2048, seed=4)
    done = _capgen(
        "convert", "model", str(model_file), str(tokenizer_path), "-o", str(tmp_path / "out"),
        "--resize-filter", "cubic", home=tmp_path / "home",
    )  # fmt: skip
    assert_one_line_error(done, 2, "--resize-filter 'cubic'", "nearest", "bicubic")


def test_an_encoder_without_pooling_is_quantized_whole() -> None:
    """VGG16's fc2 graph has no GlobalAveragePool: INT8 keeps no node float (not an error)."""
    from onnx import TensorProto, helper

    from capgen.convert.quantize import nodes_kept_float

    nodes = [
        helper.make_node("Cast", ["image"], ["x"], name="scale", to=TensorProto.FLOAT),
        helper.make_node("Conv", ["x", "w"], ["conv"], name="conv"),
        helper.make_node("Reshape", ["conv", "shape"], ["flat"], name="flatten"),
        helper.make_node("MatMul", ["flat", "k"], ["features"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "toy",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, [1, 3, 2, 2])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, 2])],
    )
    assert nodes_kept_float(helper.make_model(graph)) == []


@pytest.mark.slow
def test_an_average_pooled_kind_also_takes_the_full_weights_file(
    tmp_path: Path, tensorflow_stack: None
) -> None:
    """ResNet50's full file holds the no-top weights too: they are the ones loaded."""
    import keras

    from capgen.convert.applications import FAMILIES, build_application
    from capgen.convert.random_weights import random_weights_file

    full_file = random_weights_file("resnet50", tmp_path, seed=9, top=True)
    assert full_file.name == "resnet50_weights_tf_dim_ordering_tf_kernels.h5"
    model = build_application(FAMILIES["resnet50"], full_file)
    reference = keras.applications.ResNet50(weights=str(full_file), include_top=True)
    ours, theirs = model.get_weights(), reference.get_weights()
    assert len(theirs) == len(ours) + 2  # the classifier's kernel and bias
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=False))
    _forget_keras_models()


def test_int8_calibration_photos_have_the_encoders_input_size(tensorflow_stack: None) -> None:
    """`capgen convert quantize` on a VGG16 folder calibrates with 224x224 photos, not 299."""
    from capgen.convert.quantize import calibration_pixels

    photos = calibration_pixels("vgg16", 0, (224, 224))
    assert photos and {photo.shape for photo in photos} == {(224, 224, 3)}

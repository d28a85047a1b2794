"""Issue 26 item 2: Xception's ONNX graph written from the HDF5 weights, without TensorFlow.

- the graph gives Keras's Xception features (weights=None + load_weights from
  the same file) within 1e-5 on real photos, and the tf2onnx export's too;
- the export (`capgen convert encoder`, i.e. `ensure_encoder`) and INT8
  quantization run in a process where TensorFlow, Keras and tf2onnx cannot be
  imported, and give the same graph and features as here;
- a weights file that is not exactly Xception's no-top file (a missing layer
  or array, a wrong shape, NaN, a link to another file, ...) is refused in one
  line and nothing is written;
- the cache keeps an export tf2onnx made earlier (an equivalent recipe) and
  records new exports without TensorFlow's versions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from blocked_imports import TENSORFLOW_STACK, blocking_prelude
from h5_edits import Change, delete, drop_layer, edited_copy, rename_layer, replace_array, set_nan
from onnx_interface import cpu_session, graph_interface

from capgen.convert import encoder
from capgen.convert.encoder_registry import get_encoder_kind
from capgen.convert.hashing import sha256_file
from capgen.convert.xception_onnx import (
    build_xception_onnx,
    expected_layers,
    read_xception_weights,
    write_xception_onnx,
)
from capgen.runtime.errors import CapgenError, ConversionError, InputError
from capgen.runtime.home import encoders_dir

# One worker runs the module: its module fixtures (the ImageNet graph written here and its
# features on the 12 photos, the random weights file) are made once, not on both workers.
pytestmark = pytest.mark.xdist_group("xception-onnx")

TOLERANCE = 1e-5
BLOCKED = TENSORFLOW_STACK
# Run first in a child process: TensorFlow & co. (and whatever else is named) cannot be
# imported. `None` in sys.modules makes importlib.util.find_spec answer "not installed";
# the finder refuses any submodule import that might get past it.


def _run_blocked(code: str, home: Path, blocked: tuple[str, ...] = BLOCKED) -> str:
    """`code` in a fresh interpreter with `blocked` unimportable; its stdout (fails on errors)."""
    env = {**os.environ, "CAPGEN_HOME": str(home), "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", blocking_prelude(blocked) + code],
        capture_output=True,
        text=True,
        env=env,
        cwd=home.parent,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _features(path: Path, pixels: np.ndarray) -> np.ndarray:
    session = cpu_session(path)
    return np.concatenate(
        [
            session.run(["features"], {"image": pixels[i : i + 4]})[0]
            for i in range(0, len(pixels), 4)
        ]
    )


@pytest.fixture(scope="module")
def imagenet_weights() -> Path:
    from capgen.convert.weights import fetch_imagenet_weights

    try:
        return fetch_imagenet_weights()
    except CapgenError as error:  # no cached file and no TensorFlow to build it here
        pytest.skip(f"no ImageNet Xception weights: {error}")


@pytest.fixture(scope="module")
def photo_pixels(flickr_photos: list[Path]) -> np.ndarray:
    from capgen.runtime.preprocess import prepare

    return np.stack([prepare(path, 299, 299) for path in flickr_photos])


@pytest.fixture(scope="module")
def direct_encoder(imagenet_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("direct")
    return write_xception_onnx(
        imagenet_weights, folder / "xception.onnx", encoder.encoder_props("xception")
    )


@pytest.fixture(scope="module")
def direct_features(direct_encoder: Path, photo_pixels: np.ndarray) -> np.ndarray:
    return _features(direct_encoder, photo_pixels)


def _assert_distinct_photos(features: np.ndarray) -> None:
    """ImageNet weights give each photo its own features; a broken graph (zeros, one constant
    vector) would match another broken one."""
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    cosine = unit @ unit.T
    assert cosine[~np.eye(len(cosine), dtype=bool)].max() < 0.9
    assert np.isfinite(features).all() and features.std() > 0.05


# --- equivalence -------------------------------------------------------------------


@pytest.mark.convert
def test_features_match_keras_xception_on_real_photos(
    tensorflow_stack: None,
    imagenet_weights: Path,
    photo_pixels: np.ndarray,
    direct_features: np.ndarray,
) -> None:
    from capgen.convert.stack import quiet_tensorflow

    quiet_tensorflow()
    import keras

    model = keras.applications.Xception(
        weights=None, include_top=False, pooling="avg", input_shape=(299, 299, 3)
    )
    model.load_weights(str(imagenet_weights))
    # The architecture this module writes is Keras's: the same weighted layers, in order.
    weighted = [layer for layer in model.layers if layer.weights]
    assert [tuple(tuple(w.shape) for w in layer.weights) for layer in weighted] == [
        layer.shapes for layer in expected_layers()
    ]
    named = [
        (layer.name, spec.name) for layer, spec in zip(weighted, expected_layers(), strict=True)
    ]
    assert all(spec is None or name == spec for name, spec in named)

    scaled = photo_pixels.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    keras_features = model.predict(scaled, batch_size=4, verbose=0)

    assert direct_features.shape == (len(photo_pixels), 2048)
    difference = np.abs(direct_features - keras_features).max()
    assert difference <= TOLERANCE, f"max abs difference vs Keras {difference:.3g}"
    _assert_distinct_photos(direct_features)


def _tf2onnx_export(weights: Path, folder: Path) -> Path:
    """The tf2onnx export of the same weights, made in a child process (it needs ~6 GB)."""
    target = folder / "xception-tf2onnx.onnx"
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from capgen.convert.stack import quiet_tensorflow\n"
        "quiet_tensorflow()\n"
        "from capgen.convert.encoder import build_xception_encoder, encoder_props, "
        "save_function_as_onnx\n"
        "weights, target = Path(sys.argv[1]), Path(sys.argv[2])\n"
        "save_function_as_onnx(build_xception_encoder(weights), (299, 299), "
        "encoder_props('xception'), target)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(weights), str(target)],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return target


@pytest.mark.convert
@pytest.mark.slow
def test_features_match_the_tf2onnx_export(
    tensorflow_stack: None,
    imagenet_weights: Path,
    photo_pixels: np.ndarray,
    direct_features: np.ndarray,
    tmp_path: Path,
) -> None:
    """Why an export tf2onnx made earlier may stay in the cache (EQUIVALENT_KIND_RECIPES)."""
    import onnx

    tf2onnx_path = _tf2onnx_export(imagenet_weights, tmp_path)
    reference = onnx.load(str(tf2onnx_path), load_external_data=False)
    assert reference.producer_name == "capgen (tf2onnx)"
    tf2onnx_features = _features(tf2onnx_path, photo_pixels)
    difference = np.abs(direct_features - tf2onnx_features).max()
    assert difference <= TOLERANCE, f"max abs difference vs tf2onnx {difference:.3g}"
    _assert_distinct_photos(tf2onnx_features)


def test_the_graph_has_the_encoder_contract(direct_encoder: Path) -> None:
    import onnx

    from capgen.convert.portable import portability_problems

    model = onnx.load(str(direct_encoder))
    onnx.checker.check_model(model, full_check=True)
    props = encoder.encoder_props("xception")
    assert graph_interface(model) == {
        "inputs": [("image", onnx.TensorProto.UINT8, ["N", 299, 299, 3])],
        "outputs": [("features", onnx.TensorProto.FLOAT, ["N", 2048])],
        "props": props,
        "opsets": [("", 17)],
        "ir_version": 8,
    }
    assert json.loads(props["capgen.encoder.preprocessing"]) == encoder.PREPROCESSING
    assert portability_problems(model) == []
    ops = {node.op_type for node in model.graph.node}
    assert ops == {"Cast", "Div", "Sub", "Transpose", "Conv", "Relu", "MaxPool", "Add",
                   "GlobalAveragePool", "Squeeze"}  # fmt: skip
    # 36 Conv + 34 depthwise, every batch norm folded in; the quantizer finds its pooling.
    assert sum(node.op_type == "Conv" for node in model.graph.node) == 74
    assert len({node.name for node in model.graph.node}) == len(model.graph.node)
    cached = encoders_dir() / "xception.onnx"
    if cached.is_file():  # the tf2onnx export, where one exists: the same interface
        assert graph_interface(onnx.load(str(cached), load_external_data=False)) == graph_interface(
            model
        )


def test_the_export_is_reproducible(imagenet_weights: Path, direct_encoder: Path) -> None:
    """Byte for byte: a re-export (an onnx upgrade, --force) leaves model folders' sha256 valid."""
    model = build_xception_onnx(imagenet_weights, encoder.encoder_props("xception"))
    assert model.SerializeToString() == direct_encoder.read_bytes()


# --- without TensorFlow ------------------------------------------------------------


@pytest.mark.slow
def test_convert_encoder_runs_without_tensorflow(
    imagenet_weights: Path,
    direct_encoder: Path,
    direct_features: np.ndarray,
    photo_pixels: np.ndarray,
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    code = f"""
import json
from capgen.cli import main
sys.argv = ["capgen", "convert", "encoder", "--weights", {str(imagenet_weights)!r}]
try:
    main()
except SystemExit as done:
    assert not done.code, done.code
loaded = [name for name in BLOCKED if sys.modules.get(name) is not None]
print(json.dumps({{"loaded": loaded}}))
"""
    stdout = _run_blocked(code, home)
    assert json.loads(stdout.splitlines()[-1]) == {"loaded": []}
    assert "features: shape (1, 2048)" in stdout
    exported = home / "encoders" / f"xception-{sha256_file(imagenet_weights)[:12]}.onnx"
    assert f"encoder xception: {exported}" in stdout
    assert sha256_file(exported) == sha256_file(direct_encoder)
    features = _features(exported, photo_pixels)
    assert np.array_equal(features, direct_features)

    record = json.loads(exported.with_name(exported.name + ".json").read_text())
    assert record == {
        "kind": "xception",
        "weights_sha256": sha256_file(imagenet_weights),
        "recipe": encoder.export_recipe(get_encoder_kind("xception")),
        "weights_file": imagenet_weights.name,
        "onnx_sha256": sha256_file(exported),
        "feature_size": 2048,
        "portable": encoder.PORTABLE_CHECK,
    }
    assert not set(record["recipe"]) & {"tensorflow", "keras", "tf2onnx"}
    assert record["recipe"]["kind_recipe"] == str(encoder.XCEPTION_RECIPE_VERSION) == "2"


@pytest.mark.slow
def test_quantization_runs_without_tensorflow_or_sympy(
    direct_encoder: Path, photo_pixels: np.ndarray, tmp_path: Path
) -> None:
    """The light install lacks sympy too (onnxruntime's symbolic shape inference needs it)."""
    home = tmp_path / "home"
    home.mkdir()
    np.save(home / "pixels.npy", photo_pixels[:3])
    int8 = tmp_path / "encoder.int8.onnx"
    code = f"""
import json
import numpy as np
from pathlib import Path
from capgen.convert.quantize import quantize_encoder
pixels = np.load({str(home / "pixels.npy")!r})
quantize_encoder(Path({str(direct_encoder)!r}), Path({str(int8)!r}), list(pixels))
print(json.dumps([name for name in BLOCKED if sys.modules.get(name) is not None]))
"""
    stdout = _run_blocked(code, home, (*BLOCKED, "sympy"))
    assert json.loads(stdout.splitlines()[-1]) == []
    from capgen.convert.quantize import feature_cosines

    held_out = list(photo_pixels[3:])  # photos calibration did not see
    assert feature_cosines(direct_encoder, int8, held_out).min() > 0.9


# --- refused weights files ----------------------------------------------------------


def _write_weights(path: Path, keras2: bool = False, top: bool = False, seed: int = 0) -> Path:
    """A file in the layout Keras saves Xception's weights in, with random values.

    `keras2`: Keras 2's names (`conv2d_1`.., weight names ending in `:0`), as in
    the file Keras downloads; Keras 3 (the wheel-made file) otherwise.
    """
    import h5py

    rng = np.random.default_rng(seed)
    suffix = ":0" if keras2 else ""
    counts = {"conv": 0, "bn": 0}
    layer_names = ["input_layer"]
    with h5py.File(path, "w") as handle:
        handle.create_group("input_layer").attrs["weight_names"] = []  # a layer with no weights
        for layer in expected_layers():
            name = layer.name
            if name is None:
                base = "conv2d" if layer.kind == "conv" else "batch_normalization"
                number = counts[layer.kind] + (1 if keras2 else 0)
                counts[layer.kind] += 1
                name = f"{base}_{number}" if number else base
            layer_names.append(name)
            group = handle.create_group(name)
            names = []
            for array, shape in zip(layer.arrays, layer.shapes, strict=True):
                if array in ("gamma", "moving_variance"):
                    values = rng.uniform(0.5, 1.5, shape)
                else:
                    values = rng.normal(0.0, 0.05, shape)
                names.append(f"{name}/{array}{suffix}")
                group.create_dataset(names[-1], data=values.astype(np.float32))
            group.attrs["weight_names"] = [n.encode() for n in names]
        if top:
            layer_names.append("predictions")
            group = handle.create_group("predictions")
            for array, shape in (("kernel", (2048, 1000)), ("bias", (1000,))):
                group.create_dataset(f"predictions/{array}", data=np.zeros(shape, np.float32))
            group.attrs["weight_names"] = [b"predictions/kernel", b"predictions/bias"]
        handle.attrs["layer_names"] = [n.encode() for n in layer_names]
    return path


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_weights(tmp_path_factory.mktemp("random") / "xception_random_notop.h5")


def test_keras2_and_keras3_files_give_the_same_graph(random_weights: Path, tmp_path: Path) -> None:
    keras2 = _write_weights(tmp_path / "keras2.h5", keras2=True)
    props = {"capgen.encoder.kind": "xception"}
    made = build_xception_onnx(random_weights, props).SerializeToString()
    assert build_xception_onnx(keras2, props).SerializeToString() == made
    other = _write_weights(tmp_path / "other.h5", seed=1)
    assert build_xception_onnx(other, props).SerializeToString() != made  # the values are used


REFUSALS: dict[str, tuple[Change, str]] = {
    "missing layer": (
        drop_layer("block7_sepconv2_bn"),
        "79 weighted layers where Xception has 80; missing 'block7_sepconv2_bn'",
    ),
    "listed layer without its group": (
        delete("block7_sepconv2_bn"),
        ": missing 'block7_sepconv2_bn'",
    ),
    "missing array": (
        delete("block9_sepconv1_bn/block9_sepconv1_bn/moving_mean"),
        "'block9_sepconv1_bn': missing 'block9_sepconv1_bn/moving_mean'",
    ),
    "wrong shape": (
        replace_array(
            "block3_sepconv1/block3_sepconv1/depthwise_kernel",
            lambda old: np.concatenate([old, old], axis=3),
        ),
        "has shape (3, 3, 128, 2), expected (3, 3, 128, 1)",
    ),
    "integer values": (
        replace_array("block1_conv1/block1_conv1/kernel", lambda old: old.astype(np.int32)),
        "'block1_conv1/kernel' is int32, not float",
    ),
    "NaN": (
        set_nan("block14_sepconv2_bn/block14_sepconv2_bn/moving_variance", 5),
        "'block14_sepconv2_bn/moving_variance' holds NaN or infinite values",
    ),
    "renamed layer": (
        rename_layer("block2_sepconv1", "separable_conv2d"),
        "weighted layer 5 is 'separable_conv2d' where Xception has 'block2_sepconv1'",
    ),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_a_damaged_weights_file_is_refused_in_one_line(
    case: str, random_weights: Path, tmp_path: Path
) -> None:
    change, expected = REFUSALS[case]
    weights = edited_copy(random_weights, tmp_path / "damaged.h5", change)
    output = tmp_path / "out" / "xception.onnx"
    with pytest.raises(ConversionError) as caught:
        write_xception_onnx(weights, output, {})
    message = str(caught.value)
    assert "\n" not in message and str(weights) in message
    assert expected in message
    assert not output.parent.exists() or not any(output.parent.iterdir())


def test_an_external_link_is_not_followed(random_weights: Path, tmp_path: Path) -> None:
    """A link to another file (even one holding the right array) is refused, not read."""
    import h5py

    elsewhere = tmp_path / "elsewhere.h5"
    dataset = "block5_sepconv1/block5_sepconv1/pointwise_kernel"
    with h5py.File(random_weights, "r") as source, h5py.File(elsewhere, "w") as target:
        target.create_dataset("kernel", data=np.asarray(source[dataset]))

    def link(handle: Any) -> None:
        del handle[dataset]
        handle[dataset] = h5py.ExternalLink(str(elsewhere), "/kernel")

    weights = edited_copy(random_weights, tmp_path / "linked.h5", link)
    with h5py.File(weights, "r") as handle:  # h5py itself would follow it
        assert handle[dataset].shape == (1, 1, 728, 728)
    with pytest.raises(ConversionError, match="is a link to elsewhere") as caught:
        read_xception_weights(weights)
    assert "\n" not in str(caught.value)


def test_the_full_file_and_non_weights_files_are_refused(
    random_weights: Path, tmp_path: Path
) -> None:
    with_top = _write_weights(tmp_path / "xception_with_top.h5", top=True)
    with pytest.raises(InputError, match=r"full \(with top\) weights file"):
        read_xception_weights(with_top)
    not_hdf5 = tmp_path / "notes.h5"
    not_hdf5.write_bytes(b"these are not weights\n" * 10)
    with pytest.raises(ConversionError, match="not a readable Keras Xception weights file") as bad:
        read_xception_weights(not_hdf5)
    assert "\n" not in str(bad.value)
    pointer = tmp_path / "pointer.h5"
    pointer.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 9\n")
    with pytest.raises(ConversionError, match="Git LFS pointer"):
        read_xception_weights(pointer)
    # The random file itself is accepted: what is refused above is the damage.
    assert len(read_xception_weights(random_weights)) == len(expected_layers()) == 80


# --- the export cache ------------------------------------------------------------


def _tf2onnx_record(weights: Path, target: Path, **recipe: str) -> dict[str, Any]:
    """A record as capgen wrote it for a tf2onnx export (kind recipe 1), before this change."""
    return {
        "kind": "xception",
        "weights_sha256": sha256_file(weights),
        "recipe": {
            "export_recipe": str(encoder.EXPORT_RECIPE_VERSION),
            "opset": "17",
            "tensorflow": "2.21.0",
            "keras": "3.15.1",
            "tf2onnx": "1.17.0",
            "onnx": "1.23.2",
            "kind_recipe": "1",
            **recipe,
        },
        "weights_file": weights.name,
        "onnx_sha256": sha256_file(target),
        "feature_size": 2048,
        "portable": encoder.PORTABLE_CHECK,
    }


def _cached_tf2onnx_export(home: Path, weights: Path, **recipe: str) -> tuple[Path, Path]:
    target = home / "encoders" / f"xception-{sha256_file(weights)[:12]}.onnx"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"the tf2onnx export")
    record_path = target.with_name(target.name + ".json")
    record_path.write_text(json.dumps(_tf2onnx_record(weights, target, **recipe)))
    return target, record_path


def test_a_tf2onnx_export_of_the_same_weights_stays_current(
    home: Path, exports: list[str], tmp_path: Path
) -> None:
    weights = tmp_path / "weights.h5"
    weights.write_bytes(b"weights content")
    target, record_path = _cached_tf2onnx_export(home, weights)
    before = record_path.read_text()
    assert encoder.ensure_encoder("xception", weights) == target
    assert exports == []
    assert target.read_bytes() == b"the tf2onnx export"
    assert record_path.read_text() == before  # still says what made it

    encoder.ensure_encoder("xception", weights, force=True)
    assert exports == ["xception"]
    record = json.loads(record_path.read_text())
    assert record["recipe"] == encoder.export_recipe(get_encoder_kind("xception"))
    assert "tensorflow" not in record["recipe"] and record["recipe"]["kind_recipe"] == "2"


@pytest.mark.parametrize(
    "recipe", [{"export_recipe": "0"}, {"kind_recipe": "3"}, {"opset": "13"}], ids=str
)
def test_other_recipes_are_exported_again(
    recipe: dict[str, str], home: Path, exports: list[str], tmp_path: Path
) -> None:
    weights = tmp_path / "weights.h5"
    weights.write_bytes(b"weights content")
    _cached_tf2onnx_export(home, weights, **recipe)
    encoder.ensure_encoder("xception", weights)
    assert exports == ["xception"]


def test_the_xception_recipe_holds_no_tensorflow_versions() -> None:
    recipe = encoder.export_recipe(get_encoder_kind("xception"))
    assert not set(recipe) & {"tensorflow", "keras", "tf2onnx"}
    assert {"export_recipe", "opset", "onnx", "kind_recipe"} <= set(recipe)
    # The Keras application families are written without TensorFlow too; the kinds
    # TensorFlow builds still depend on the TensorFlow stack's versions.
    assert not set(encoder.export_recipe(get_encoder_kind("vgg16"))) & {"tensorflow", "tf2onnx"}
    recipe = encoder.export_recipe(get_encoder_kind("xception+colour"))
    assert {"tensorflow", "tf2onnx"} <= set(recipe)

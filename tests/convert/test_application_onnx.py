"""The Keras application encoders written in ONNX from their weights files, without TensorFlow.

- the layer graphs capgen describes (`application_graphs`) list the weighted
  layers in Keras's own `model.layers` order, names and shapes: where Keras's
  loader reads each array by position;
- `capgen convert encoder --kind vgg16|densenet201` runs where TensorFlow,
  Keras and tf2onnx cannot be imported (VGG16's file named as its ImageNet
  file is, Keras 1: `block1_conv1_W_1:0`), and writes DenseNet201's graph
  byte for byte as this process does; its record keeps TensorFlow's versions out;
- Keras 2 (`conv1/conv/kernel:0`) and Keras 3 namings give the same graph,
  and ResNet50's full file the no-top one;
- a file that is not the kind's (another family, VGG16's no-top file,
  a damaged array, a link, a pointer, a truncated download) is one line,
  and nothing is written.

Parity with Keras `predict` is tests/convert/test_encoder_families.py's (its
weights files come from tests/convert/family_weights_h5.py too, with random
batch-norm statistics).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from blocked_imports import TENSORFLOW_STACK, blocking_prelude
from family_weights_h5 import family_layers, write_family_weights
from h5_edits import (
    Change,
    drop_layer,
    edited_copy,
    link_elsewhere,
    rename_layer,
    replace_array,
    set_nan,
)
from onnx_interface import graph_interface

from capgen.convert import encoder
from capgen.convert.application_graphs import ARCHITECTURES
from capgen.convert.application_onnx import build_application_onnx, write_application_onnx
from capgen.convert.applications import FAMILIES
from capgen.convert.encoder_registry import get_encoder_kind
from capgen.convert.hashing import sha256_file
from capgen.runtime.errors import InputError

pytest.importorskip("h5py")
pytest.importorskip("onnx")
# One worker runs the module, so each shared weights file below is written once, not once
# on each worker that gets a test needing it.
pytestmark = pytest.mark.xdist_group("application-onnx")


# Each shared file in another Keras's naming; VGG16's as its ImageNet file (Keras 1).
NAMING = {"resnet50": "keras3", "densenet201": "keras2", "vgg16": "keras1"}


class WeightFiles:
    """The files the tests share, each written once, when first asked for (VGG16's is 0.5 GB)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.made: dict[str, Path] = {}

    def __getitem__(self, kind: str) -> Path:
        if kind not in self.made:
            naming = NAMING[kind]
            path = self.folder / f"{kind}-{naming}" / FAMILIES[kind].weights_file
            self.made[kind] = write_family_weights(kind, path, naming=naming, seed=7)
        return self.made[kind]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> WeightFiles:
    return WeightFiles(tmp_path_factory.mktemp("family_weights"))


def _props(kind: str) -> dict[str, str]:
    return encoder.encoder_props(kind)


# --- Keras's order ---------------------------------------------------------------------


def test_the_layer_graphs_list_the_weights_in_keras_order(tensorflow_stack: None) -> None:
    """Names (where the source names a layer) and shapes of every weighted layer, in order."""
    from capgen.convert.stack import quiet_tensorflow

    quiet_tensorflow()
    import keras

    for kind, family in FAMILIES.items():
        application = getattr(keras.applications, family.application)
        if family.cut:
            model = application(weights=None, include_top=True)
        else:
            size = (family.input_size, family.input_size, 3)
            model = application(weights=None, include_top=False, input_shape=size)
        theirs = [
            (layer.name, [tuple(weight.shape) for weight in layer.weights])
            for layer in model.layers
            if layer.weights
        ]
        ours = family_layers(kind)
        assert len(ours) == len(theirs), kind
        for (name, layer), (keras_name, shapes) in zip(ours, theirs, strict=True):
            assert layer.shapes == shapes, (kind, name, keras_name)
            assert not layer.named or name == keras_name, (kind, name, keras_name)
        keras.backend.clear_session()


# --- without TensorFlow ----------------------------------------------------------------


def test_families_export_without_tensorflow(weights: WeightFiles, tmp_path: Path) -> None:
    """VGG16 (Dense top) and DenseNet201 (pre-activation batch norms) with TensorFlow blocked."""
    home = tmp_path / "home"
    runs = [["--kind", kind, "--weights", str(weights[kind])] for kind in ("vgg16", "densenet201")]
    code = f"""
import json
from capgen.cli import main
for args in {runs!r}:
    sys.argv = ["capgen", "convert", "encoder", *args]
    try:
        main()
    except SystemExit as done:
        assert not done.code, done.code
loaded = [name for name in BLOCKED if sys.modules.get(name) is not None]
print(json.dumps({{"loaded": loaded}}))
"""
    env = {**os.environ, "CAPGEN_HOME": str(home), "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", blocking_prelude(TENSORFLOW_STACK) + code],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == {"loaded": []}
    for kind in ("vgg16", "densenet201"):
        family = FAMILIES[kind]
        exported = home / "encoders" / f"{kind}-{sha256_file(weights[kind])[:12]}.onnx"
        assert f"encoder {kind}: {exported}" in done.stdout
        assert f"features: shape (1, {family.feature_size})" in done.stdout
        if kind == "densenet201":  # VGG16's 0.5 GB are not written twice
            here = build_application_onnx(kind, weights[kind], _props(kind))
            assert exported.read_bytes() == here.SerializeToString()
        record = json.loads(exported.with_name(exported.name + ".json").read_text())
        assert record["recipe"] == encoder.export_recipe(get_encoder_kind(kind))
        assert not set(record["recipe"]) & {"tensorflow", "keras", "tf2onnx"}
        assert record["recipe"]["kind_recipe"] == "2"


# --- the graph ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["resnet50", "densenet201"])
def test_the_graph_has_the_encoder_contract(
    kind: str, weights: WeightFiles, tmp_path: Path
) -> None:
    import onnx

    from capgen.convert.portable import portability_problems
    from capgen.convert.quantize import nodes_kept_float

    family = FAMILIES[kind]
    path = write_application_onnx(kind, weights[kind], tmp_path / "encoder.onnx", _props(kind))
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    size = family.input_size
    assert graph_interface(model) == {
        "inputs": [("image", onnx.TensorProto.UINT8, ["N", size, size, 3])],
        "outputs": [("features", onnx.TensorProto.FLOAT, ["N", family.feature_size])],
        "props": _props(kind),
        "opsets": [("", 17)],
        "ir_version": 8,
    }
    assert portability_problems(model) == []
    assert len({node.name for node in model.graph.node}) == len(model.graph.node)
    assert nodes_kept_float(model) == []  # one branch: INT8 quantizes all of it
    ops = {node.op_type for node in model.graph.node}
    # Every batch norm after a convolution is folded into it; DenseNet's pre-activation
    # ones (after a concatenation, before a ReLU) stay batch norms.
    assert ("BatchNormalization" in ops) == (kind == "densenet201")


def test_keras_namings_and_the_full_file_give_the_same_graph(
    weights: WeightFiles, tmp_path: Path
) -> None:
    keras3 = write_family_weights(
        "densenet201", tmp_path / "k3" / FAMILIES["densenet201"].weights_file, seed=7
    )
    made = build_application_onnx("densenet201", keras3, {}).SerializeToString()
    assert (
        build_application_onnx("densenet201", weights["densenet201"], {}).SerializeToString()
        == made
    )

    full = write_family_weights("resnet50", tmp_path / "full.h5", top=True, seed=7)
    made = build_application_onnx("resnet50", weights["resnet50"], {}).SerializeToString()
    assert build_application_onnx("resnet50", full, {}).SerializeToString() == made
    other = write_family_weights("resnet50", tmp_path / "other.h5", seed=8)
    assert build_application_onnx("resnet50", other, {}).SerializeToString() != made


def test_the_features_follow_the_weights_file(weights: WeightFiles, tmp_path: Path) -> None:
    """Photos get distinct, finite features (a graph that ignored its input would not)."""
    import onnxruntime as ort

    path = write_application_onnx(
        "resnet50", weights["resnet50"], tmp_path / "resnet50.onnx", _props("resnet50")
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    pixels = np.random.default_rng(3).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    features = session.run(["features"], {"image": pixels})[0]
    assert features.shape == (2, 2048) and np.isfinite(features).all()
    assert np.abs(features[0] - features[1]).max() > 1e-3 * np.abs(features).max()


# --- refused files -----------------------------------------------------------------


BN = "conv3_block2_1_bn/conv3_block2_1_bn"
REFUSALS: dict[str, tuple[Callable[[Path], Change], str]] = {
    "missing layer": (
        lambda _: drop_layer("conv4_block3_2_bn"),
        "does not hold resnet50's weights: 105 weighted layers where resnet50 has 106",
    ),
    "wrong shape": (
        lambda _: replace_array(
            "conv2_block1_2_conv/conv2_block1_2_conv/kernel",
            lambda old: np.concatenate([old, old], axis=3),
        ),
        "(layer 5: shapes [(3, 3, 64, 128), (64,)] where [(3, 3, 64, 64), (64,)] were expected)",
    ),
    "NaN": (lambda _: set_nan(f"{BN}/moving_variance", 3), "holds NaN or infinite values"),
    "integer values": (
        lambda _: replace_array(f"{BN}/gamma", lambda old: old.astype(np.int32)),
        "'conv3_block2_1_bn/gamma' is int32, not float",
    ),
    "renamed layer": (
        lambda _: rename_layer("conv2_block1_0_conv", "shortcut"),
        "weighted layer 7 is 'shortcut' where resnet50 has 'conv2_block1_0_conv'",
    ),
    "external link": (
        lambda folder: link_elsewhere(
            "conv5_block1_2_conv/conv5_block1_2_conv/kernel", folder / "elsewhere.h5"
        ),
        "external link to",
    ),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_a_damaged_weights_file_is_refused_in_one_line(
    case: str, weights: WeightFiles, tmp_path: Path
) -> None:
    make_change, expected = REFUSALS[case]
    damaged = edited_copy(
        weights["resnet50"],
        tmp_path / "damaged" / FAMILIES["resnet50"].weights_file,
        make_change(tmp_path),
    )
    _assert_refused("resnet50", damaged, tmp_path, expected)


def _assert_refused(kind: str, path: Path, tmp_path: Path, *expected: str) -> None:
    output = tmp_path / "out" / f"{kind}.onnx"
    with pytest.raises(InputError) as caught:
        write_application_onnx(kind, path, output, _props(kind))
    message = str(caught.value)
    assert "\n" not in message and str(path) in message, message
    for fragment in expected:
        assert fragment in message, message
    assert not output.parent.exists() or not any(output.parent.iterdir())


def test_the_wrong_file_is_named_in_one_line(weights: WeightFiles, tmp_path: Path) -> None:
    resnet = weights["resnet50"]
    _assert_refused(
        "densenet201",
        resnet,
        tmp_path,
        "holds ResNet50 weights",
        FAMILIES["densenet201"].weights_file,
    )
    notop = write_family_weights("vgg16", tmp_path / "vgg16_notop.h5", top=False)
    _assert_refused(
        "vgg16", notop, tmp_path, "is a no-top weights file", "(fc2): pass the full "
        "vgg16_weights_tf_dim_ordering_tf_kernels.h5",
    )  # fmt: skip
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(resnet.read_bytes()[: resnet.stat().st_size // 2])
    _assert_refused("resnet50", truncated, tmp_path, "corrupted or truncated")
    pointer = tmp_path / "pointer.h5"
    pointer.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 9\n")
    _assert_refused("resnet50", pointer, tmp_path, "Git LFS pointer")
    not_hdf5 = tmp_path / "notes.h5"
    not_hdf5.write_bytes(b"these are not weights\n" * 10)
    _assert_refused("inceptionv3", not_hdf5, tmp_path, "not a readable Keras weights file")


def test_every_family_has_a_layer_graph() -> None:
    for kind, family in FAMILIES.items():
        graph, output = ARCHITECTURES[kind]()
        assert graph.layers[graph.input].size == (family.input_size, family.input_size)
        assert graph.layers[output].channels == family.feature_size

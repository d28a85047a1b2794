"""Every graph capgen writes is one every execution provider it documents reads (issue 11, item 7).

OpenVINO refused the default model's `xception+colour` encoder: tf2onnx
writes an einsum that adds no dimension as `Unsqueeze` with an empty `axes`
input ("'axes' input is mandatory"). `make_portable`, which every writer
calls, rewrites such nodes as the Identity they are and refuses what it
cannot rewrite; `ensure_encoder` makes an entry an older capgen exported
portable in place. The exactness checks compare outputs bit for bit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from capgen.convert import encoder
from capgen.convert.encoder_registry import get_encoder_kind
from capgen.convert.hashing import sha256_file
from capgen.convert.portable import make_portable, portability_problems
from capgen.runtime.errors import ConversionError

_REAL_HOME = Path(os.environ.get("CAPGEN_HOME") or Path.home() / ".cache" / "capgen")
REAL_ENCODER = _REAL_HOME / "encoders" / "xception.onnx"
REAL_WEIGHTS = _REAL_HOME / "weights" / "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "shapes"

pytestmark = pytest.mark.slow  # each test exports or rewrites a full Xception graph


def _graph_with_unsqueeze(axes: list[int] | None) -> onnx.ModelProto:
    """x [2,3] -> Unsqueeze(axes) -> * 2 -> y; axes None: the axes input is left out."""
    inputs = ["x"] if axes is None else ["x", "axes"]
    initializers = (
        [] if axes is None else [numpy_helper.from_array(np.array(axes, np.int64), "axes")]
    )
    shape = [2, 3] if not axes else [2, 1, 3]
    graph = helper.make_graph(
        [
            helper.make_node("Unsqueeze", inputs, ["u"], name="add_nothing"),
            helper.make_node("Mul", ["u", "two"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        [*initializers, numpy_helper.from_array(np.array(2.0, np.float32), "two")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def test_an_unsqueeze_that_adds_no_dimension_becomes_identity_with_the_same_output() -> None:
    original = _graph_with_unsqueeze([])
    assert portability_problems(original) == [
        "Unsqueeze node 'add_nothing' has an empty axes input"
    ]
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    before = _run(original, {"x": x})
    fixed = make_portable(onnx.ModelProto.FromString(original.SerializeToString()))
    onnx.checker.check_model(fixed, full_check=True)
    assert portability_problems(fixed) == []
    assert [node.op_type for node in fixed.graph.node] == ["Identity", "Mul"]
    assert "axes" not in {tensor.name for tensor in fixed.graph.initializer}
    after = _run(fixed, {"x": x})
    assert before[0].tobytes() == after[0].tobytes()


def test_an_unsqueeze_with_axes_is_left_alone() -> None:
    model = make_portable(_graph_with_unsqueeze([1]))
    assert [node.op_type for node in model.graph.node] == ["Unsqueeze", "Mul"]
    assert portability_problems(model) == []


def test_a_graph_with_an_unsqueeze_lacking_axes_is_refused_in_one_line() -> None:
    with pytest.raises(ConversionError) as caught:
        make_portable(_graph_with_unsqueeze(None), "the test graph")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("the test graph: ")
    assert "Unsqueeze node 'add_nothing' has no axes input" in message


def _with_empty_unsqueeze_before_output(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` as an older capgen exported it: an Unsqueeze with empty axes on the way out."""
    graph = model.graph
    last = next(node for node in graph.node if "features" in node.output)
    last.output[:] = ["features_before"]
    graph.initializer.append(numpy_helper.from_array(np.zeros(0, np.int64), "no_axes"))
    graph.node.append(
        helper.make_node("Unsqueeze", ["features_before", "no_axes"], ["features"], name="old")
    )
    return model


def _example_pixels() -> np.ndarray:
    from capgen.runtime.preprocess import prepare

    photos = sorted(EXAMPLES.glob("*.jpg"))
    assert photos, f"no example images in {EXAMPLES}"
    return np.stack([prepare(str(photo), 299, 299) for photo in photos])


def test_an_encoder_an_older_capgen_cached_is_made_portable_in_place_with_the_same_features(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not (REAL_ENCODER.is_file() and REAL_WEIGHTS.is_file()):
        pytest.skip(
            f"no exported Xception encoder and weights in {_REAL_HOME} (capgen setup makes them)"
        )
    monkeypatch.setenv("CAPGEN_HOME", str(tmp_path / "home"))
    weights_sha = sha256_file(REAL_WEIGHTS)
    entry = tmp_path / "home" / "encoders" / f"xception-{weights_sha[:12]}.onnx"
    entry.parent.mkdir(parents=True)
    onnx.save(_with_empty_unsqueeze_before_output(onnx.load(str(REAL_ENCODER))), str(entry))
    old_copy = tmp_path / "model-folder-encoder.onnx"
    os.link(entry, old_copy)  # a model folder hard-linked to the cache entry
    old_sha = sha256_file(entry)
    record = {
        "kind": "xception",
        "weights_sha256": weights_sha,
        "recipe": encoder.export_recipe(get_encoder_kind("xception")),
        "weights_file": REAL_WEIGHTS.name,
        "onnx_sha256": old_sha,
        "feature_size": 2048,
    }  # as written before records said "portable"
    record_path = entry.with_name(entry.name + ".json")
    record_path.write_text(json.dumps(record))

    monkeypatch.setattr(encoder, "export_encoder", lambda *args: pytest.fail("exported again"))
    assert encoder.ensure_encoder("xception", REAL_WEIGHTS) == entry

    assert portability_problems(onnx.load(str(entry))) == []
    updated = json.loads(record_path.read_text())
    assert updated["onnx_sha256"] == sha256_file(entry) != old_sha
    assert updated["portable"] == encoder.PORTABLE_CHECK
    assert sha256_file(old_copy) == old_sha  # replaced, not rewritten: the folder keeps its file
    pixels = _example_pixels()
    old_features = _run(onnx.load(str(old_copy)), {"image": pixels})[0]
    new_features = _run(onnx.load(str(entry)), {"image": pixels})[0]
    assert old_features.tobytes() == new_features.tobytes()
    # A second call finds the record's mark and leaves the entry alone.
    before = entry.stat().st_mtime_ns
    encoder.ensure_encoder("xception", REAL_WEIGHTS)
    assert entry.stat().st_mtime_ns == before


@pytest.mark.parametrize("name", ["default", "shapes"])
def test_every_graph_of_the_built_in_models_is_portable(name: str) -> None:
    """The folders `capgen setup` built (it makes an older cache's encoder portable first)."""
    folder = _REAL_HOME / "models" / name
    graphs = sorted(folder.glob("*.onnx"))
    if not graphs:
        pytest.skip(f"no {name} model in {folder} (capgen setup --model all builds it)")
    problems = {
        graph.name: portability_problems(onnx.load(str(graph), load_external_data=False))
        for graph in graphs
    }
    assert problems == {graph.name: [] for graph in graphs}

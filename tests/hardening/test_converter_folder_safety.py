"""Issue 24, the converter's and model folders' findings (5, 7, 8 and 9).

Each test drives the real console script the way the finding's user did, or
the library function the finding is about, and names the finding (test_fNN_…).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import test_odd_images_and_broken_models
from cli_helpers import Run, assert_one_line_error, write_photos
from onnx import numpy_helper
from tiny_model import WORDS, random_weights, write_tiny_model

from capgen.cli_support.exit_codes import ExitCode
from capgen.runtime import results
from capgen.runtime.errors import ModelError

# Issue 7's small Keras 3 tutorial decoder (.h5 and .keras), its tokenizer, an encoder.
keras_sources = test_odd_images_and_broken_models.keras_sources

_EMBEDDINGS = "model_weights/embedding/embedding/embeddings"


def _convert(
    run: Run,
    sources: dict[str, Path],
    out: Path,
    *extra: str | Path,
    model: Path | None = None,
    encoder: Path | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[bytes]:
    """`capgen convert model MODEL TOKENIZER -o OUT --encoder E [EXTRA...]`."""
    return run(
        "convert",
        "model",
        model or sources["model"],
        sources["tokenizer"],
        "-o",
        out,
        "--encoder",
        encoder or sources["encoder"],
        *extra,
        timeout=timeout,
    )


def _edited_h5(source: Path, target: Path, dataset: str, value: float) -> Path:
    import h5py

    shutil.copyfile(source, target)
    with h5py.File(target, "a") as handle:
        array = np.asarray(handle[dataset])
        array.flat[3] = value
        handle[dataset][...] = array
    return target


# ---- F9: non-finite weights are refused at conversion, at load, and never written as JSON ----


@pytest.mark.convert
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_decoder_weights_are_refused_naming_the_layer(
    run: Run, keras_sources: dict[str, Path], tmp_path: Path, value: float
) -> None:
    model = _edited_h5(keras_sources["model"], tmp_path / "model_9.h5", _EMBEDDINGS, value)
    done = _convert(run, keras_sources, tmp_path / "out", model=model)
    assert_one_line_error(done, ExitCode.MODEL, "layer 'embedding' embeddings", "infinite or NaN")
    assert not (tmp_path / "out").exists()


def _with_nan_initializer(source: Path, target: Path) -> Path:
    """The encoder with its feature means multiplied by a NaN weight (an initializer)."""
    model = onnx.load(str(source))
    graph = model.graph
    graph.initializer.append(numpy_helper.from_array(np.array([np.nan], np.float32), "scale"))
    for node in graph.node:
        node.input[:] = ["scaled" if name == "means" else name for name in node.input]
    graph.node.append(onnx.helper.make_node("Mul", ["means", "scale"], ["scaled"]))
    graph.node.sort(
        key=lambda node: (
            ["Cast", "ReduceMean", "Mul"].index(node.op_type)
            if node.op_type in ("Cast", "ReduceMean", "Mul")
            else 3
        )
    )
    onnx.save(model, str(target))
    return target


@pytest.mark.convert
def test_an_encoder_with_non_finite_weights_is_refused(
    run: Run, keras_sources: dict[str, Path], tmp_path: Path
) -> None:
    encoder = _with_nan_initializer(keras_sources["encoder"], tmp_path / "encoder.onnx")
    done = _convert(run, keras_sources, tmp_path / "out", encoder=encoder)
    assert_one_line_error(done, ExitCode.MODEL, "infinite or NaN")
    assert not (tmp_path / "out").exists()


def _nan_model(folder: Path) -> Path:
    weights = random_weights(vocab_size=len(WORDS))
    bias = weights.output_bias.copy()
    bias[:] = np.nan
    write_tiny_model(folder, weights=dataclasses.replace(weights, output_bias=bias))
    return folder


def test_a_model_folder_with_non_finite_initializers_is_refused_at_load(
    run: Run, tmp_path: Path
) -> None:
    """Before the fix: an empty caption and exit 0 (with --json: `NaN` in the line)."""
    folder = _nan_model(tmp_path / "model")
    photo = write_photos(tmp_path / "photos", 1, seed=24)[0]
    for _ in range(2):  # the second run would use a verification stamp, if the first wrote one
        done = run("caption", "--model", folder, "--json", photo)
        stderr = done.stderr.decode("utf-8", "replace")
        assert done.returncode == ExitCode.MODEL, (done.returncode, stderr, done.stdout)
        assert b"Traceback" not in done.stderr and stderr.count("\n") == 1, stderr
        assert "infinite or NaN" in stderr and "decoder_step.onnx" in stderr, stderr
        assert b"NaN" not in done.stdout
    info = run("info", folder)
    assert info.returncode == ExitCode.MODEL, info.stderr


def test_the_walker_finds_every_kind_of_tensor(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    from capgen.runtime.finite_weights import first_non_finite_tensor

    def model_with(tensor: onnx.TensorProto, as_constant: bool) -> bytes:
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        if as_constant:
            node = helper.make_node("Constant", [], ["y"], value=tensor)
            graph = helper.make_graph([node], "g", [], [out])
        else:
            node = helper.make_node("Identity", [tensor.name], ["y"])
            graph = helper.make_graph([node], "g", [], [out], [tensor])
        return helper.make_model(graph).SerializeToString()

    values = np.array([1.0, np.inf, 2.0], np.float32)
    tensors = {
        "raw float": numpy_helper.from_array(values, "w"),
        "float_data": helper.make_tensor("w", TensorProto.FLOAT, [3], values.tolist()),
        "double": numpy_helper.from_array(values.astype(np.float64), "w"),
        "float16": numpy_helper.from_array(values.astype(np.float16), "w"),
        "float16 int32_data": helper.make_tensor(
            "w", TensorProto.FLOAT16, [3], values.astype(np.float16).tolist()
        ),
    }
    for label, tensor in tensors.items():
        for as_constant in (False, True):
            assert first_non_finite_tensor(model_with(tensor, as_constant)) == "w", label
    finite = numpy_helper.from_array(np.array([1.0, -3.0e38, 2.0], np.float32), "w")
    assert first_non_finite_tensor(model_with(finite, False)) is None


def test_json_lines_never_hold_nan() -> None:
    record = {
        "path": "a.jpg",
        "caption": "",
        "log_probability": float("nan"),
        "finished": True,
        "tokens": [],
        "timings": {"encode": 1.0},
        "alternatives": [{"caption": "", "log_probability": -float("inf")}],
    }

    def refuse(name: str) -> object:
        raise ValueError(f"{name} in a JSON line")

    line = results.to_line(record)
    parsed = json.loads(line, parse_constant=refuse)
    assert parsed["log_probability"] is None
    assert parsed["alternatives"][0]["log_probability"] is None
    assert results.parse_line(line.encode()) == parsed  # still capgen's own line for --resume


def test_a_manifest_is_never_written_with_nan(tmp_path: Path) -> None:
    from capgen.runtime.manifest import load_manifest, write_manifest

    folder = write_tiny_model(tmp_path / "model").folder
    manifest = load_manifest(folder)
    manifest = dataclasses.replace(manifest, extra={**manifest.extra, "score": float("nan")})
    with pytest.raises(ModelError, match="NaN or infinite"):
        write_manifest(manifest)
    json.loads((folder / "manifest.json").read_text(), parse_constant=lambda name: 1 / 0)


# ---- F8: a --weights file never makes capgen (or Keras after it) read outside the file ----


def _weights_file(path: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    """A legacy Keras weights file of one layer, `conv1`, whose kernel `edit` may replace."""
    import h5py

    with h5py.File(path, "w") as handle:
        handle.attrs["layer_names"] = [b"conv1"]
        layer = handle.create_group("conv1")
        layer.attrs["weight_names"] = [b"conv1/kernel:0"]
        layer["conv1/kernel:0"] = np.ones((3, 3, 3, 8), np.float32)
        if edit is not None:
            edit(handle)
    return path


def _hostile_weights(folder: Path) -> dict[str, tuple[Path, str]]:
    import os

    import h5py

    fifo = folder / "pipe.h5"
    os.mkfifo(fifo)
    other = _weights_file(folder / "other.h5", None)
    raw = folder / "raw.bin"
    raw.write_bytes(np.ones(8, np.float32).tobytes())
    kernel = "conv1/conv1/kernel:0"

    def relink(link):  # type: ignore[no-untyped-def]
        def edit(handle) -> None:  # type: ignore[no-untyped-def]
            del handle[kernel]
            handle[kernel] = link

        return edit

    def external_storage(handle) -> None:  # type: ignore[no-untyped-def]
        handle.create_dataset("extra", shape=(8,), dtype="<f4", external=[(str(raw), 0, 32)])

    def unlisted_link(handle) -> None:  # type: ignore[no-untyped-def]
        handle["optimizer_weights"] = h5py.ExternalLink(str(fifo), "/x")  # not in layer_names

    def make(name: str, edit) -> Path:  # type: ignore[no-untyped-def]
        return _weights_file(folder / f"{name}.h5", edit)

    return {
        "fifo": (make("fifo", relink(h5py.ExternalLink(str(fifo), "/x"))), "external link to"),
        "other": (make("other-link", relink(h5py.ExternalLink(str(other), kernel))), "external"),
        "soft": (make("soft", relink(h5py.SoftLink("/elsewhere"))), "SoftLink"),
        "unlisted": (make("unlisted", unlisted_link), "external link to"),
        "storage": (make("storage", external_storage), "keeps its values outside the file"),
    }


_READ_LAYOUT = (
    "import sys\n"
    "from pathlib import Path\n"
    "from capgen.convert.weights_layout import read_layout\n"
    "from capgen.runtime.errors import InputError\n"
    "try:\n"
    "    read_layout(Path(sys.argv[1]))\n"
    "except InputError as error:\n"
    "    print(error)\n"
    "    sys.exit(2)\n"
)


def test_links_and_external_storage_in_a_weights_file_are_refused(tmp_path: Path) -> None:
    """Before the fix, the FIFO case blocked forever (here: the child's timeout)."""
    import sys

    assert (
        _run_read_layout(sys.executable, _weights_file(tmp_path / "good.h5", None)).returncode == 0
    )
    for name, (path, fragment) in _hostile_weights(tmp_path).items():
        done = _run_read_layout(sys.executable, path)
        assert done.returncode == 2, (name, done.stdout, done.stderr)
        assert fragment in done.stdout and done.stdout.count("\n") == 1, (name, done.stdout)


def _run_read_layout(python: str, path: Path) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [python, "-c", _READ_LAYOUT, str(path)], capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"reading the layout of {path.name} hung")


def test_a_fifo_as_the_weights_file_is_refused(tmp_path: Path) -> None:
    import os
    import sys

    fifo = tmp_path / "weights.h5"
    os.mkfifo(fifo)
    done = _run_read_layout(sys.executable, fifo)
    assert done.returncode == 2 and "not a regular file" in done.stdout, done


@pytest.mark.convert
def test_cli_weights_file_linking_to_a_fifo_is_one_line(run: Run, tmp_path: Path) -> None:
    path, _ = _hostile_weights(tmp_path)["fifo"]
    done = run("convert", "encoder", "--kind", "resnet50", "--weights", path, timeout=300)
    assert_one_line_error(done, ExitCode.USAGE, "external link to")


# ---- F7: no code from a user's Keras file ever runs: the config is checked before Keras loads ----


@pytest.fixture(scope="module")
def lambda_encoders(
    tmp_path_factory: pytest.TempPathFactory, tf_keras_stack: None
) -> dict[str, Path]:
    """Keras 2 (.h5) and Keras 3 (.keras) encoders with a Lambda that writes a file when it runs."""
    import keras
    import tf_keras

    folder = tmp_path_factory.mktemp("lambda_encoders")
    sentinel = folder / "code-ran"
    code = f"lambda x: (open({str(sentinel)!r}, 'w').write('ran'), x)[1]"
    inputs = tf_keras.Input((32, 32, 3))
    hidden = tf_keras.layers.Lambda(eval(code))(inputs)
    pooled = tf_keras.layers.GlobalAveragePooling2D()(hidden)
    tf_keras.Model(inputs, tf_keras.layers.Dense(4)(pooled)).save(folder / "k2.h5")
    inputs3 = keras.Input((32, 32, 3))
    hidden3 = keras.layers.Lambda(eval(code))(inputs3)
    pooled3 = keras.layers.GlobalAveragePooling2D()(hidden3)
    keras.Model(inputs3, keras.layers.Dense(4)(pooled3)).save(folder / "k3.keras")
    sentinel.unlink()  # building the models ran the lambdas once
    return {"k2": folder / "k2.h5", "k3": folder / "k3.keras", "sentinel": sentinel}


@pytest.mark.convert
def test_a_lambda_layer_is_refused_before_any_keras_load(
    run: Run, lambda_encoders: dict[str, Path], keras_sources: dict[str, Path], tmp_path: Path
) -> None:
    """Before the fix, tf_keras loaded k2.h5 after Keras 3 refused it, and the lambda ran."""
    sentinel = lambda_encoders["sentinel"]
    for key in ("k2", "k3"):
        model = lambda_encoders[key]
        done = run(
            "convert", "encoder", "--keras-model", model, "--preprocessing", "tf", timeout=300
        )
        assert_one_line_error(done, ExitCode.MODEL, "Lambda")
        assert not sentinel.exists(), f"{key}: code from the file ran"
    done = _convert(
        run, keras_sources, tmp_path / "out", "--preprocessing", "tf",
        encoder=lambda_encoders["k2"],
    )  # fmt: skip
    assert_one_line_error(done, ExitCode.MODEL, "Lambda")
    assert not sentinel.exists() and not (tmp_path / "out").exists()


def test_only_keras_own_plain_classes_pass(tmp_path: Path) -> None:
    from capgen.convert.keras_encoder import check_plain_layers
    from capgen.runtime.errors import UnsupportedModelError

    def model(*layers: dict[str, object]) -> dict[str, object]:
        return {"class_name": "Functional", "config": {"layers": list(layers)}}

    plain = {"class_name": "Dense", "config": {"name": "d", "kernel_initializer": {
        "class_name": "GlorotUniform", "module": "keras.initializers", "config": {}}}}  # fmt: skip
    check_plain_layers(model(plain), tmp_path / "ok.h5")
    hostile = {
        "lambda": {"class_name": "Lambda", "config": {"name": "l", "function": "..."}},
        "tf op": {"class_name": "TFOpLambda", "config": {"name": "t", "function": "io.write_file"}},
        "custom": {"class_name": "MyLayer", "config": {"name": "m"}},
        "foreign module": {"class_name": "Dense", "module": "os", "config": {"name": "d"}},
        "registered": {"class_name": "Dense", "registered_name": "pkg>Dense", "config": {}},
        "nested": model({"class_name": "Lambda", "config": {"name": "inner"}}),
        "function activation": {
            "class_name": "Dense",
            "config": {
                "name": "d",
                "activation": {"class_name": "function", "config": "system", "module": "os"},
            },
        },
    }
    for label, layer in hostile.items():
        with pytest.raises(UnsupportedModelError):
            check_plain_layers(model(layer), tmp_path / f"{label}.h5")


# ---- F5: --force replaces only files capgen wrote, checked by content, not by the manifest's word ----


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.convert
def test_force_never_deletes_what_a_manifest_merely_lists(
    run: Run, keras_sources: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "mymodel"
    assert _convert(run, keras_sources, out).returncode == 0
    notes = out / "NOTES.md"
    notes.write_text("my notes\n")
    photos = out / "photos"
    photos.mkdir()
    (photos / "dog.jpg").write_bytes(b"\xff\xd8 a photo")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"]["NOTES.md"] = {"sha256": _sha256(notes), "bytes": notes.stat().st_size}
    manifest["files"]["photos"] = {"sha256": "0" * 64, "bytes": 4096}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))

    done = _convert(run, keras_sources, out, "--force")
    assert_one_line_error(done, ExitCode.USAGE, "refusing to replace", "NOTES.md", "photos")
    assert notes.read_text() == "my notes\n" and (photos / "dog.jpg").exists()

    # A file of capgen's name whose bytes are not what the manifest records is not capgen's either.
    notes.unlink()
    shutil.rmtree(photos)
    assert _convert(run, keras_sources, out, "--force").returncode == 0  # plain re-conversion works
    vocabulary = out / "vocabulary.json"
    vocabulary.write_text('["edited by hand"]\n')
    done = _convert(run, keras_sources, out, "--force")
    assert_one_line_error(done, ExitCode.USAGE, "vocabulary.json", "changed since capgen wrote it")
    assert vocabulary.read_text() == '["edited by hand"]\n'


def test_swap_in_deletes_only_the_verified_names(tmp_path: Path) -> None:
    from capgen.runtime.staging import create_staging, swap_in

    out_dir = tmp_path / "model"
    out_dir.mkdir()
    (out_dir / "manifest.json").write_text("old")
    (out_dir / "late.txt").write_text("appeared after the check")
    staging = create_staging(out_dir)
    (staging / "manifest.json").write_text("new")
    swap_in(staging, out_dir, replaceable={"manifest.json"})
    assert (out_dir / "manifest.json").read_text() == "new"
    kept = [path for path in tmp_path.rglob("late.txt")]
    assert len(kept) == 1 and kept[0].read_text() == "appeared after the check"

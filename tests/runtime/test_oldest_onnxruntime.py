"""Every kind of graph capgen writes loads on the oldest onnxruntime capgen supports (1.20.1).

Vendor, ARM and OpenVINO builds of onnxruntime lag behind; onnxruntime < 1.25
refused every model folder while the decoder graphs carried onnx.helper's IR
14. The files are written here by capgen's own writers (projection, exact
step, fast step, INT8 encoder through `quantize_encoder`; the FP32 encoder is
the one `capgen setup` exported with tf2onnx), then loaded and run in the
runtime-only venv built from constraints-oldest.txt. The fast step's 8-bit
MatMulNBits needs onnxruntime 1.22: there the runtime must refuse it in one
line naming that version, not pass onnxruntime's error through.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from runtime_venvs import OLDEST, RuntimeFlavour
from tiny_model import TinyModel, write_word_gates

from capgen.cli_support.exit_codes import ExitCode
from capgen.convert.portable import file_requirement
from capgen.runtime.manifest import load_manifest

OLDEST_VERSION = "1.20.1"
# What `capgen setup` exported with tf2onnx (the shared cache the lead fills).
SETUP_ENCODERS = Path.home() / ".cache" / "capgen" / "encoders"


def _conv_encoder(path: Path) -> Path:
    """A tiny Xception-shaped encoder (Conv ... GlobalAveragePool), at onnx.helper's newest IR."""
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Cast", ["image"], ["image_f"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["image_f", "scale"], ["scaled"]),
        helper.make_node("Transpose", ["scaled"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "kernel", "bias"], ["conv"], name="conv", pads=[1] * 4),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        helper.make_node("GlobalAveragePool", ["relu"], ["pooled"], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_conv_encoder",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", 32, 32, 3])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 8])],
        [
            helper.make_tensor("scale", TensorProto.FLOAT, [], [255.0]),
            numpy_helper.from_array(rng.normal(0, 1, (8, 3, 3, 3)).astype(np.float32), "kernel"),
            numpy_helper.from_array(np.zeros(8, np.float32), "bias"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def written(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One file of each kind, written by capgen (the tiny model folder gains a fast step)."""
    from capgen.convert.fast_decoder import add_fast_decoder
    from capgen.convert.quantize import quantize_encoder
    from capgen.convert.web_step import web_step

    root = tmp_path_factory.mktemp("portable")
    folder = root / "model"
    shutil.copytree(tiny_model.folder, folder)
    add_fast_decoder(folder)
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(4)]
    int8 = quantize_encoder(_conv_encoder(root / "conv.onnx"), root / "conv.int8.onnx", images)
    # The converter's word gates and the browser site's step without its table.
    gates = write_word_gates(folder, tiny_model.weights)
    split = web_step((folder / "decoder_step.onnx").read_bytes(), gates.read_bytes())
    (folder / "decoder_step.web.onnx").write_bytes(split.step)
    return {
        "folder": folder,
        "photo_projection.onnx": folder / "photo_projection.onnx",
        "decoder_step.onnx": folder / "decoder_step.onnx",
        "decoder_step.int8.onnx": folder / "decoder_step.int8.onnx",
        "encoder.int8.onnx": int8.output,
        "word_gates.onnx": gates,
        "decoder_step.web.onnx": folder / "decoder_step.web.onnx",
    }


def _run(venv: Path, *args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CAPGEN_HOME": str(home)}
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        list(args), capture_output=True, text=True, env=env, cwd=home, check=False, timeout=600
    )


_LOAD_AND_RUN = textwrap.dedent("""
    import json, sys
    import numpy as np
    import onnxruntime as ort
    outcome = {"version": ort.__version__}
    for path in sys.argv[1:]:
        try:
            session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            feeds = {}
            for port in session.get_inputs():
                shape = [1 if not isinstance(d, int) else d for d in port.shape]
                dtype = {"tensor(uint8)": np.uint8, "tensor(int64)": np.int64}.get(port.type, np.float32)
                feeds[port.name] = np.ones(shape, dtype=dtype)
            session.run(None, feeds)
            outcome[path] = "ok"
        except Exception as error:
            outcome[path] = str(error).splitlines()[0]
    print(json.dumps(outcome))
""")


@pytest.mark.slow
def test_every_graph_capgen_writes_loads_on_the_oldest_onnxruntime(
    written: dict[str, Path],
    runtime_venvs: Callable[[RuntimeFlavour], Path],
    tmp_path: Path,
) -> None:
    venv = runtime_venvs(OLDEST)
    setup_encoders = sorted(SETUP_ENCODERS.glob("*.onnx"))
    if not setup_encoders:
        pytest.skip(f"no encoder exported by `capgen setup` in {SETUP_ENCODERS}; run capgen setup")
    names = (
        "photo_projection.onnx",
        "decoder_step.onnx",
        "word_gates.onnx",
        "decoder_step.web.onnx",
    )
    graphs = [written[name] for name in names]
    graphs += [written["encoder.int8.onnx"], *setup_encoders, written["decoder_step.int8.onnx"]]
    for path in graphs:
        assert onnx.load(str(path), load_external_data=False).ir_version == 8, path
    result = _run(
        venv, str(venv / "bin" / "python"), "-c", _LOAD_AND_RUN, *map(str, graphs), home=tmp_path
    )
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome.pop("version") == OLDEST_VERSION
    fast = outcome.pop(str(written["decoder_step.int8.onnx"]))
    assert outcome == {str(path): "ok" for path in graphs[:-1]}
    # The fast step's record is true: 1.20 cannot run its 8-bit MatMulNBits.
    assert fast != "ok"
    assert file_requirement(written["decoder_step.int8.onnx"]) == ">=1.22"
    for path in graphs[:-1]:
        assert file_requirement(path) == ">=1.20", path


@pytest.mark.slow
def test_fast_step_on_the_oldest_onnxruntime_is_refused_in_one_line(
    written: dict[str, Path],
    runtime_venvs: Callable[[RuntimeFlavour], Path],
    tmp_path: Path,
) -> None:
    venv = runtime_venvs(OLDEST)
    folder = written["folder"]
    assert load_manifest(folder).files["decoder_step.int8.onnx"].onnxruntime == ">=1.22"
    image = tmp_path / "photo.png"
    Image.fromarray(np.full((40, 50, 3), 90, dtype=np.uint8)).save(image)
    capgen = str(venv / "bin" / "capgen")
    fast = _run(
        venv, capgen, "caption", "-m", str(folder), "--fast-decoder", str(image), home=tmp_path
    )
    assert fast.returncode == ExitCode.MODEL, fast.stderr
    lines = fast.stderr.strip().splitlines()
    assert len(lines) == 1, fast.stderr
    assert "needs onnxruntime >= 1.22" in lines[0] and OLDEST_VERSION in lines[0], lines[0]
    exact = _run(venv, capgen, "caption", "-m", str(folder), "-b", "1", str(image), home=tmp_path)
    assert exact.returncode == 0, exact.stderr
    assert exact.stdout.strip()

"""One encoder on one engine, in its own process: the measuring half of the bench's peers section.

Each arm of the peers table (onnxruntime, OpenVINO, LiteRT, capgen's own
`--precision` modes) runs in a process of its own, so no engine's thread
pool, allocator or import cost touches another's timings. The parent
(peers.py) sends the same requests to every arm in alternation; timing
happens here, around the engine's call only.

Run: python -m capgen.benchmarks.peer_engines SPEC_JSON
  SPEC: {"engine": "onnxruntime"|"openvino"|"litert"|"capgen", "file": graph path (capgen:
  the model folder), "threads": n, "pixels": .npy of uint8 [N, H, W, 3],
  "hint": OpenVINO's INFERENCE_PRECISION_HINT or null, "precision": capgen's mode}
Requests (one JSON line each): {"op": "encode", "index": i} -> {"seconds": s};
{"op": "save", "path": p} -> the last features of every photo as .npy; {"op": "quit"}.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

Runner = Callable[[np.ndarray], np.ndarray]  # uint8 [1, H, W, 3] -> features [1, F]


def _onnxruntime(spec: dict[str, Any]) -> tuple[Runner, str]:
    """A plain onnxruntime session: what a user who loads encoder.onnx themselves gets."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(spec["threads"])
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(spec["file"], options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return (lambda pixels: session.run(None, {name: pixels})[0]), f"onnxruntime {ort.__version__}"


def _openvino(spec: dict[str, Any]) -> tuple[Runner, str]:
    """OpenVINO's own package reading the ONNX file; no hint = its default precision."""
    import openvino as ov

    config: dict[str, Any] = {
        "INFERENCE_NUM_THREADS": int(spec["threads"]),
        "PERFORMANCE_HINT": "LATENCY",
    }
    if spec.get("hint"):
        config["INFERENCE_PRECISION_HINT"] = spec["hint"]
    compiled = ov.Core().compile_model(spec["file"], "CPU", config)
    request = compiled.create_infer_request()
    output = compiled.output(0)
    used = compiled.get_property("INFERENCE_PRECISION_HINT")
    used_name = str(getattr(used, "get_type_name", lambda: used)())
    version = str(ov.__version__).split("-")[0]

    def run(pixels: np.ndarray) -> np.ndarray:
        return np.array(request.infer({0: pixels})[output])

    return run, f"openvino {version}, computes in {used_name}"


def _litert(spec: dict[str, Any]) -> tuple[Runner, str]:
    """LiteRT's interpreter (XNNPACK, its default CPU delegate) on a Keras-converted .tflite."""
    from importlib.metadata import version

    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=spec["file"], num_threads=int(spec["threads"]))
    interpreter.allocate_tensors()
    (source,) = interpreter.get_input_details()
    (target,) = interpreter.get_output_details()
    quantized = source["dtype"] != np.float32

    def run(pixels: np.ndarray) -> np.ndarray:
        # Keras Xception's own preprocessing (x / 127.5 - 1): capgen's graph does it inside.
        scaled = pixels.astype(np.float32) / 127.5 - 1.0
        if quantized:  # an integer-input model (not what peers.py builds, but be exact)
            scale, zero = source["quantization"]
            scaled = np.round(scaled / scale + zero).astype(source["dtype"])
        interpreter.set_tensor(source["index"], scaled)
        interpreter.invoke()
        return np.array(interpreter.get_tensor(target["index"]), dtype=np.float32)

    return run, f"ai-edge-litert {version('ai-edge-litert')} (XNNPACK)"


def _capgen(spec: dict[str, Any]) -> tuple[Runner, str]:
    """capgen's public API with `precision=`: the mode a user would pick."""
    from capgen import Captioner

    captioner = Captioner(spec["file"], threads=int(spec["threads"]), precision=spec["precision"])
    return captioner.features, captioner.encoder_plan.describe()


ENGINES: dict[str, Callable[[dict[str, Any]], tuple[Runner, str]]] = {
    "onnxruntime": _onnxruntime,
    "openvino": _openvino,
    "litert": _litert,
    "capgen": _capgen,
}


def main(argv: list[str] | None = None) -> None:
    spec = json.loads((argv if argv is not None else sys.argv[1:])[0])
    pixels = np.load(spec["pixels"])
    started = time.perf_counter()
    run, note = ENGINES[spec["engine"]](spec)
    run(pixels[:1])  # first call: allocations and lazy compilation, not speed
    setup = time.perf_counter() - started
    features: dict[int, np.ndarray] = {}
    print(json.dumps({"ready": True, "setup_seconds": setup, "note": note}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "quit":
            break
        if request["op"] == "save":
            np.save(request["path"], np.concatenate([features[i] for i in sorted(features)]))
            answer: dict[str, Any] = {"saved": len(features)}
        else:
            index = int(request["index"])
            one = np.ascontiguousarray(pixels[index : index + 1])
            began = time.perf_counter()
            out = run(one)
            answer = {"seconds": time.perf_counter() - began}
            features[index] = np.asarray(out, dtype=np.float32).reshape(1, -1)
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()

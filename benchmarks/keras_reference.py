"""Keras's own Xception features, and the LiteRT files converted from that Keras model.

Run in a process of its own (TensorFlow never shares one with the engines
being timed): `python -m capgen.benchmarks.keras_reference JOB_JSON`, where
JOB: {"weights": the ImageNet Xception .h5, "pixels": .npy of uint8 photos,
"features": where to save Keras's features, "litert": {"folder": ..,
"calibration": .npy of uint8 photos} or null}. Prints one JSON line:
{"features": path, "litert": {variant: path}, "tensorflow": version}.

The LiteRT files are what a LiteRT user makes of the same Keras encoder
(TensorFlow's `TFLiteConverter.from_keras_model`): FP32, dynamic-range INT8
(weights int8, activations float) and full INT8 (weights and activations
int8, calibrated on the photos capgen's quantizer uses; float input and
output, as the converter leaves them by default). Each is made once into
the bench cache, keyed by the weights' sha256 and TensorFlow's version:
about a minute each on 2 cores.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

VARIANTS = ("fp32", "dynamic_int8", "full_int8")
# Bump when how the files are converted changes: it names the cache folder.
RECIPE = "1"


def _xception(weights: Path) -> Any:
    import keras

    model = keras.applications.Xception(
        weights=None, include_top=False, pooling="avg", input_shape=(299, 299, 3)
    )
    model.load_weights(str(weights))
    return model


def _scaled(pixels: np.ndarray) -> np.ndarray:
    return pixels.astype(np.float32) / 127.5 - 1.0


def litert_folder(root: Path, weights: Path, tensorflow_version: str) -> Path:
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
    return root / f"xception-{digest}-tf{tensorflow_version}-r{RECIPE}"


def _convert(model: Any, variant: str, calibration: np.ndarray) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if variant != "fp32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "full_int8":

        def representative() -> Any:
            for image in calibration:
                yield [_scaled(image[np.newaxis])]

        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return bytes(converter.convert())


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    job = json.loads((argv if argv is not None else sys.argv[1:])[0])
    # The converter prints its SavedModel's signature on stdout: stdout is this process's answer.
    with contextlib.redirect_stdout(sys.stderr):
        made, version = _run(job)
    print(json.dumps({"features": job["features"], "litert": made, "tensorflow": version}))


def _run(job: dict[str, Any]) -> tuple[dict[str, str], str]:
    import tensorflow as tf

    model = _xception(Path(job["weights"]))
    pixels = np.load(job["pixels"])
    features = np.concatenate(
        [model(_scaled(p[np.newaxis]), training=False).numpy() for p in pixels]
    )
    np.save(job["features"], features.astype(np.float32))
    made: dict[str, str] = {}
    if job.get("litert"):
        folder = litert_folder(Path(job["litert"]["folder"]), Path(job["weights"]), tf.__version__)
        folder.mkdir(parents=True, exist_ok=True)
        calibration = np.load(job["litert"]["calibration"])
        for variant in VARIANTS:
            target = folder / f"{variant}.tflite"
            if not target.is_file():
                partial = target.with_suffix(".partial")
                partial.write_bytes(_convert(model, variant, calibration))
                partial.replace(target)  # a killed conversion leaves no half file behind
            made[variant] = str(target)
    return made, str(tf.__version__)


if __name__ == "__main__":
    main()

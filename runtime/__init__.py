"""capgen's runtime: everything needed to caption images with onnxruntime, numpy and pillow.

Nothing here may import TensorFlow, Keras, h5py or the onnx package; a test
checks it, so the runtime deploys to machines (and edge devices) without them.

onnxruntime's telemetry is off unless the user sets ORT_DISABLE_TELEMETRY
themselves: onnxruntime reads the variable when it is imported, which is
after this package is (every capgen module that imports onnxruntime lives
under this package or imports it first). With telemetry on, onnxruntime
writes a device id under ~/.cache/Microsoft and, for a user without a
writable home, prints a coloured warning line on every run.
"""

import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

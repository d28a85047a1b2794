"""capgen's runtime: everything needed to caption images with onnxruntime, numpy and pillow.

Nothing here may import TensorFlow, Keras, h5py or the onnx package; a test
checks it, so the runtime deploys to machines (and edge devices) without them.
"""

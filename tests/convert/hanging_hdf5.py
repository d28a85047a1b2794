"""Write an HDF5 file on which h5py's attribute read never returns: the reader-bound tests' input.

Found by the damaged-file fuzz test (2026-12-05): one byte changed in a Keras
.h5, the length of an object in HDF5's global heap (where variable-length
strings live: `model_config`, `layer_names`, `weight_names`), from 18 to 246.
Reading any string from that heap then loops forever inside HDF5's C code,
at 100 % CPU. The same edit on a file h5py writes here has the same effect,
so the tests need neither TensorFlow nor a stored binary.
"""

from __future__ import annotations

from pathlib import Path

_MARKED_STRING = b"photo_dense/kernel"  # 18 bytes: its heap object's length field is edited
_SIZE_FIELD = 8  # a heap object: index (2), references (2), reserved (4), size (8), data


def write_hdf5_that_hangs_h5py(path: Path, config_apart: bool = False) -> Path:
    """A Keras-looking .h5 (model_config, layer_names, weight_names) with one heap length wrong.

    `config_apart`: the model config is a fixed-length string, stored outside the
    heap, so it still reads and only the names (what Keras's loader reads next) hang.
    """
    import h5py
    import numpy as np

    config = '{"class_name": "Functional", "config": {"layers": []}}'
    with h5py.File(path, "w") as handle:
        handle.attrs["model_config"] = np.bytes_(config.encode()) if config_apart else config
        handle.attrs["keras_version"] = "2.8.0"
        handle.attrs["layer_names"] = [b"photo_dense"]
        weights = handle.create_group("model_weights")
        weights.attrs["layer_names"] = [b"photo_dense"]
        layer = weights.create_group("photo_dense")
        layer.attrs["weight_names"] = [b"photo_dense/bias", _MARKED_STRING]
    data = bytearray(path.read_bytes())
    at = data.index(_MARKED_STRING) - _SIZE_FIELD
    assert data[at : at + _SIZE_FIELD] == len(_MARKED_STRING).to_bytes(_SIZE_FIELD, "little")
    data[at] = 246
    path.write_bytes(bytes(data))
    return path

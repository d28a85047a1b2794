"""Random-weight stand-ins for the Keras application weights files, in Keras's own cache layout.

Parity tests and latency benchmarks need a weights file for every family,
but the ImageNet files are downloads capgen never makes. A model built with
`weights=None` and saved with Keras's legacy HDF5 writer is laid out exactly
like `~/.keras/models/<family>_weights_tf_dim_ordering_tf_kernels[_notop].h5`,
so the export reads it through the same path a user's file takes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def save_keras_cache_layout(model: Any, target: Path) -> Path:
    """Write `model`'s weights as Keras caches application weights (legacy HDF5, layer_names)."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(target, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, model)
    return target


def random_weights_file(kind: str, folder: Path, seed: int = 0, top: bool | None = None) -> Path:
    """`folder / <Keras cache name>` holding random weights for `kind`'s application.

    `top` None writes the file the kind needs (VGG16's full file, the others'
    no-top file); True/False force the full or the no-top layout.
    """
    import keras

    from capgen.convert.applications import FAMILIES

    family = FAMILIES[kind]
    with_top = bool(family.cut) if top is None else top
    keras.utils.set_random_seed(seed)
    application = getattr(keras.applications, family.application)
    if with_top:
        model = application(weights=None, include_top=True)
    else:
        size = (family.input_size, family.input_size, 3)
        model = application(weights=None, include_top=False, input_shape=size)
    folder.mkdir(parents=True, exist_ok=True)
    return save_keras_cache_layout(model, folder / family.cache_name(with_top))

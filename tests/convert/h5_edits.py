"""Damage a copy of a Keras weights file in one way: the refusal tests of the direct ONNX writers.

Each `*_change` returns a function of an open `h5py.File` (r+) that makes one
edit; `edited_copy` applies it to a copy, so the fixture's file stays intact.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

Change = Callable[[Any], None]


def edited_copy(source: Path, target: Path, change: Change) -> Path:
    import h5py

    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    with h5py.File(target, "r+") as handle:
        change(handle)
    return target


def layer_names(handle: Any) -> list[str]:
    return [n.decode() if isinstance(n, bytes) else str(n) for n in handle.attrs["layer_names"]]


def drop_layer(name: str) -> Change:
    def change(handle: Any) -> None:
        del handle[name]
        handle.attrs["layer_names"] = [n for n in layer_names(handle) if n != name]

    return change


def replace_array(path: str, values: Callable[[np.ndarray], np.ndarray]) -> Change:
    def change(handle: Any) -> None:
        old = np.asarray(handle[path])
        del handle[path]
        handle.create_dataset(path, data=values(old))

    return change


def set_nan(path: str, index: int) -> Change:
    def change(handle: Any) -> None:
        handle[path][index] = np.nan

    return change


def rename_layer(old: str, new: str) -> Change:
    def change(handle: Any) -> None:
        handle.move(old, new)
        handle.attrs["layer_names"] = [new if n == old else n for n in layer_names(handle)]

    return change


def delete(path: str) -> Change:
    def change(handle: Any) -> None:
        del handle[path]

    return change


def link_elsewhere(path: str, elsewhere: Path) -> Change:
    """The array moved to another file and reached through an HDF5 external link."""

    def change(handle: Any) -> None:
        import h5py

        with h5py.File(elsewhere, "w") as other:
            other.create_dataset("kernel", data=np.asarray(handle[path]))
        del handle[path]
        handle[path] = h5py.ExternalLink(str(elsewhere), "/kernel")

    return change

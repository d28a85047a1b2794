"""How actors get the model folder: shared storage, or shipped through Ray's object store.

Two ways, both verified by the runtime's own manifest checks:

- a path (or installed model NAME) every node can read, e.g. an NFS or
  mounted bucket folder: each actor's `Captioner` verifies the files' sizes
  and sha256s against the manifest as it loads, like anywhere else;
- `ship_model(folder)`: the driver verifies the folder, reads every file the
  manifest lists and puts them into the object store once; on each node the
  first actor writes them into `$CAPGEN_HOME/ray-models/<manifest sha256>/`
  (a marked staging folder, `runtime/staging.py`, verified against the
  manifest's sha256s, then renamed into place), and every later actor on
  that node reuses it after the same verification. Bytes that do not match
  the manifest never load. An actor killed mid-copy leaves a marked staging
  folder; the next copy on that node removes it once its process is gone.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from capgen.runtime.captioner import resolve_model_dir
from capgen.runtime.errors import ModelError, ModelIntegrityError
from capgen.runtime.home import capgen_home
from capgen.runtime.integrity import verify_files
from capgen.runtime.manifest import MANIFEST_FILE, load_manifest
from capgen.runtime.staging import create_staging, place, prune_stale_in

STORE_FOLDER = "ray-models"


@dataclass(frozen=True)
class ShippedModel:
    """A model folder in Ray's object store: its manifest's sha256 and a reference to its files."""

    name: str
    manifest_sha256: str
    files: Any  # ray.ObjectRef to {file name: bytes}, manifest.json included


def check_model(
    model: str | Path | None, *, int8: bool = False, fast_decoder: bool = False, verify: bool = True
) -> Path:
    """The model folder, checked on the driver as the local `Captioner` checks it; ModelError if not.

    Actors build their `Captioner` on the nodes, where a model error became
    Ray's multi-line actor-death story (and exit 2) after the cluster had
    started; here it is capgen's one line and exit 3 before any actor is
    started: the manifest, the INT8 encoder and fast step when asked for, and
    (with `verify`) the size and sha256 of each file those captioners load.
    """
    from capgen.runtime.precision import plan_encoder
    from capgen.runtime.step_model import step_file_for

    folder, _ = resolve_model_dir(model)
    manifest = load_manifest(folder)
    encoder_file = plan_encoder(manifest, None, int8).file  # the Captioner's own checks
    decoder = manifest.decoder
    step_file = step_file_for(manifest, fast_decoder)
    if verify:
        verify_files(
            manifest, [encoder_file, decoder.projection_file, step_file, manifest.vocabulary.file]
        )
    return folder


def read_model(model: str | Path | None = None) -> tuple[str, str, dict[str, bytes]]:
    """`model`'s name, manifest sha256 and {file name: bytes} (manifest.json included), verified."""
    folder, _ = resolve_model_dir(model)
    manifest = load_manifest(folder)
    verify_files(manifest, use_stamps=False)  # what is shipped is what the manifest says
    names = [MANIFEST_FILE, *manifest.files]
    try:
        contents = {name: (folder / name).read_bytes() for name in names}
    except OSError as exc:
        raise ModelError(f"{folder}: cannot read the model ({exc.strerror or exc})") from None
    return manifest.name, hashlib.sha256(contents[MANIFEST_FILE]).hexdigest(), contents


def ship_model(model: str | Path | None = None) -> ShippedModel:
    """Verify `model` (folder, installed NAME or None for the default) and put it into the object store once."""
    import ray

    name, digest, contents = read_model(model)
    return ShippedModel(name, digest, ray.put(contents))


def model_folder(model: str | Path | ShippedModel | None) -> str | Path | None:
    """What `Captioner` should load on this node: the given path, or the shipped model's local copy."""
    if isinstance(model, ShippedModel):
        return materialise(model)
    return model


def _verified(folder: Path, manifest_sha256: str) -> bool:
    """True if `folder` holds exactly the shipped manifest and every file it lists."""
    try:
        if hashlib.sha256((folder / MANIFEST_FILE).read_bytes()).hexdigest() != manifest_sha256:
            return False
        verify_files(load_manifest(folder))
    except (OSError, ModelError):
        return False
    return True


def _copy_mismatch(target: Path, name: str) -> ModelIntegrityError:
    return ModelIntegrityError(
        f"{target}: this node's copy of model {name!r} does not match its manifest; "
        "delete the folder and run again"
    )


def materialise(model: ShippedModel, store: Path | None = None) -> Path:
    """This node's verified copy of a shipped model, written once per node."""
    root = (store or capgen_home() / STORE_FOLDER).resolve()
    target = root / model.manifest_sha256
    if target.is_dir():
        prune_stale_in(root)  # a killed actor's leftovers go even when the copy is here already
        if _verified(target, model.manifest_sha256):
            return target
        raise _copy_mismatch(target, model.name)
    import ray

    return write_copy(model.name, model.manifest_sha256, ray.get(model.files), root)


def _relative_name(name: str) -> PurePosixPath:
    """A manifest file name as a path inside the copy, or an integrity error (no way out of it)."""
    path = PurePosixPath(name)
    if path.is_absolute() or not path.parts or ".." in path.parts or "\0" in name:
        raise ModelIntegrityError(f"shipped model: file name {name!r} leaves the model folder")
    return path


def write_copy(name: str, manifest_sha256: str, contents: Mapping[str, bytes], root: Path) -> Path:
    """Write `contents` to `root/<manifest_sha256>` through a marked staging folder; return it.

    The dead writers' staging leftovers in `root` go first. The files are
    created exclusively, never through a link, and verified against the
    manifest before the folder is renamed into place; if another actor on
    this node placed its copy first, that copy is verified and used.
    """
    target = root / manifest_sha256
    root.mkdir(parents=True, exist_ok=True)
    prune_stale_in(root)
    staging = create_staging(target)
    try:
        for file_name, data in contents.items():
            path = staging / _relative_name(file_name)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
        if not _verified(staging, manifest_sha256):
            raise ModelIntegrityError(
                f"model {name!r}: the shipped files do not match the manifest's sha256s"
            )
        if not place(staging, target) and (
            target.is_symlink() or not _verified(target, manifest_sha256)
        ):
            raise _copy_mismatch(target, name)
    finally:
        if staging.exists():
            with contextlib.suppress(OSError):
                shutil.rmtree(staging)
    return target

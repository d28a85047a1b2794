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
  `ship_model(folder, int8=True, fast_decoder=False)` ships only the files a
  Captioner with those settings loads (the default model: 62 of its 195 MB;
  the FP32 encoder, the fast step and the browser's word gates stay home),
  into `<manifest sha256>-<files digest>/`; `caption_dataset` and the Serve
  deployment refuse other settings for it on the driver, in one line.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from capgen.runtime.captioner import resolve_model_dir
from capgen.runtime.errors import InputError, ModelError, ModelIntegrityError
from capgen.runtime.home import capgen_home
from capgen.runtime.integrity import verify_files
from capgen.runtime.manifest import MANIFEST_FILE, Manifest, load_manifest
from capgen.runtime.staging import create_staging, place, prune_stale_in

STORE_FOLDER = "ray-models"


@dataclass(frozen=True)
class ShippedModel:
    """A model folder in Ray's object store: its manifest's sha256 and a reference to its files."""

    name: str
    manifest_sha256: str
    files: Any  # ray.ObjectRef to {file name: bytes}, manifest.json included
    # The files shipped besides manifest.json; None: every file the manifest lists.
    file_names: tuple[str, ...] | None = None
    # The Captioner settings the files were chosen for (None: any, both files shipped).
    int8: bool | None = None
    fast_decoder: bool | None = None

    @property
    def folder_name(self) -> str:
        """The node copy's folder in the store: one per manifest and set of files."""
        return copy_folder_name(self.manifest_sha256, self.file_names)

    def check_settings(self, *, int8: bool, fast_decoder: bool) -> None:
        """InputError unless the files shipped are those a Captioner(int8, fast_decoder) loads."""
        for option, shipped, wanted in (
            ("int8", self.int8, int8),
            ("fast_decoder", self.fast_decoder, fast_decoder),
        ):
            if shipped is not None and shipped != wanted:
                raise InputError(
                    f"model {self.name!r} was shipped with {option}={shipped}, for captioners "
                    f"that run with {option}={wanted}: ship it with ship_model(..., "
                    f"{option}={wanted}), or without {option} to ship the files of both"
                )


def copy_folder_name(manifest_sha256: str, file_names: Collection[str] | None) -> str:
    """`<manifest sha256>` for a whole folder, `<manifest sha256>-<digest of the names>` for part."""
    if file_names is None:
        return manifest_sha256
    digest = hashlib.sha256("\n".join(sorted(file_names)).encode()).hexdigest()[:16]
    return f"{manifest_sha256}-{digest}"


def captioner_files(
    manifest: Manifest, *, int8: bool | None = None, fast_decoder: bool | None = None
) -> list[str]:
    """The files (besides manifest.json) a Captioner(int8=..., fast_decoder=...) loads.

    A None setting counts both of its choices (the file of each one the model has).
    ModelError, the Captioner's own, when a choice asked for has no file.
    """
    from capgen.runtime.precision import plan_encoder
    from capgen.runtime.step_model import step_file_for

    encoder, decoder = manifest.encoder, manifest.decoder
    if int8 is None:
        encoders = [encoder.file, *([encoder.int8_file] if encoder.int8_file else [])]
    else:
        encoders = [plan_encoder(manifest, None, int8).file]
    if fast_decoder is None:
        steps = [decoder.step_file, *([decoder.int8_step_file] if decoder.int8_step_file else [])]
    else:
        steps = [step_file_for(manifest, fast_decoder)]
    # In the order the Captioner verifies them.
    names = [*encoders, decoder.projection_file, *steps, manifest.vocabulary.file]
    return list(dict.fromkeys(names))


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
    folder, _ = resolve_model_dir(model)
    manifest = load_manifest(folder)
    # The Captioner's own checks (an INT8 encoder, a fast step), and the files it loads.
    names = captioner_files(manifest, int8=int8, fast_decoder=fast_decoder)
    if verify:
        verify_files(manifest, names)
    return folder


def read_model(
    model: str | Path | None = None, file_names: Collection[str] | None = None
) -> tuple[str, str, dict[str, bytes]]:
    """`model`'s name, manifest sha256 and {file name: bytes} (manifest.json included), verified.

    `file_names`: the files to read besides manifest.json (None: every file it lists).
    """
    folder, _ = resolve_model_dir(model)
    return _read_files(folder, load_manifest(folder), file_names)


def _read_files(
    folder: Path, manifest: Manifest, file_names: Collection[str] | None
) -> tuple[str, str, dict[str, bytes]]:
    """read_model's work on a folder whose manifest is already loaded."""
    chosen = list(manifest.files) if file_names is None else list(file_names)
    unknown = [name for name in chosen if name not in manifest.files]
    if unknown:
        raise ModelError(f"{folder}: manifest.json lists no file {unknown[0]!r}")
    # What is shipped is what the manifest says.
    verify_files(manifest, chosen, use_stamps=False)
    names = [MANIFEST_FILE, *chosen]
    try:
        contents = {name: (folder / name).read_bytes() for name in names}
    except OSError as exc:
        raise ModelError(f"{folder}: cannot read the model ({exc.strerror or exc})") from None
    return manifest.name, hashlib.sha256(contents[MANIFEST_FILE]).hexdigest(), contents


def ship_model(
    model: str | Path | None = None,
    *,
    int8: bool | None = None,
    fast_decoder: bool | None = None,
) -> ShippedModel:
    """Verify `model` (folder, installed NAME or None for the default) and put it into the object store once.

    With neither `int8` nor `fast_decoder`, every file of the folder is shipped. With
    either, only the files a Captioner with those settings loads (a setting left out:
    the files of both its choices), so less crosses the network to every node; the
    actors must then run with those settings (`caption_dataset` checks).
    """
    import ray

    folder, _ = resolve_model_dir(model)
    manifest = load_manifest(folder)
    file_names = None
    if int8 is not None or fast_decoder is not None:
        file_names = tuple(captioner_files(manifest, int8=int8, fast_decoder=fast_decoder))
    name, digest, contents = _read_files(folder, manifest, file_names)
    return ShippedModel(name, digest, ray.put(contents), file_names, int8, fast_decoder)


def model_folder(model: str | Path | ShippedModel | None) -> str | Path | None:
    """What `Captioner` should load on this node: the given path, or the shipped model's local copy."""
    if isinstance(model, ShippedModel):
        return materialise(model)
    return model


def _verified(
    folder: Path, manifest_sha256: str, file_names: Collection[str] | None = None
) -> bool:
    """True if `folder` holds exactly the shipped manifest and the files shipped (None: all it lists)."""
    try:
        if hashlib.sha256((folder / MANIFEST_FILE).read_bytes()).hexdigest() != manifest_sha256:
            return False
        manifest = load_manifest(folder)
        if file_names is not None and not set(file_names) <= set(manifest.files):
            return False
        verify_files(manifest, None if file_names is None else list(file_names))
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
    target = root / model.folder_name
    if target.is_dir():
        prune_stale_in(root)  # a killed actor's leftovers go even when the copy is here already
        if _verified(target, model.manifest_sha256, model.file_names):
            return target
        raise _copy_mismatch(target, model.name)
    import ray

    return write_copy(
        model.name, model.manifest_sha256, ray.get(model.files), root, model.file_names
    )


def _relative_name(name: str) -> PurePosixPath:
    """A manifest file name as a path inside the copy, or an integrity error (no way out of it)."""
    path = PurePosixPath(name)
    if path.is_absolute() or not path.parts or ".." in path.parts or "\0" in name:
        raise ModelIntegrityError(f"shipped model: file name {name!r} leaves the model folder")
    return path


def write_copy(
    name: str,
    manifest_sha256: str,
    contents: Mapping[str, bytes],
    root: Path,
    file_names: Collection[str] | None = None,
) -> Path:
    """Write `contents` to `root/<copy_folder_name>` through a marked staging folder; return it.

    `file_names`: the files shipped besides manifest.json (None: every file it
    lists), and so exactly what `contents` must hold and what is verified.
    The dead writers' staging leftovers in `root` go first. The files are
    created exclusively, never through a link, and verified against the
    manifest before the folder is renamed into place; if another actor on
    this node placed its copy first, that copy is verified and used.
    """
    target = root / copy_folder_name(manifest_sha256, file_names)
    if file_names is not None and set(contents) != {MANIFEST_FILE, *file_names}:
        raise ModelIntegrityError(
            f"model {name!r}: the shipped files are not the ones it was shipped with"
        )
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
        if not _verified(staging, manifest_sha256, file_names):
            raise ModelIntegrityError(
                f"model {name!r}: the shipped files do not match the manifest's sha256s"
            )
        if not place(staging, target) and (
            target.is_symlink() or not _verified(target, manifest_sha256, file_names)
        ):
            raise _copy_mismatch(target, name)
    finally:
        if staging.exists():
            with contextlib.suppress(OSError):
                shutil.rmtree(staging)
    return target

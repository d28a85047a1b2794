"""The models installed in `$CAPGEN_HOME/models`: what `capgen models` lists and `-m NAME` finds.

Each folder under `models/` is one model, named by its folder (what
`-m NAME` takes). A folder whose manifest cannot be read is still listed,
with the reason, so a broken install is visible rather than silently absent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from capgen.runtime.errors import ModelError
from capgen.runtime.home import models_dir
from capgen.runtime.identity import is_demonstration
from capgen.runtime.manifest import MANIFEST_FILE, load_manifest


@dataclass(frozen=True)
class InstalledModel:
    """One folder under `$CAPGEN_HOME/models`; the fields are None when its manifest is unreadable."""

    name: str
    folder: Path
    size_bytes: int
    vocabulary: int | None = None
    encoder_kind: str | None = None
    int8: bool = False
    demonstration: bool = False
    problem: str | None = None


def _folder_bytes(folder: Path) -> int:
    """Bytes of the regular files directly in `folder` (links are not followed)."""
    total = 0
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
    except OSError:
        pass
    return total


def _describe(folder: Path) -> InstalledModel:
    size = _folder_bytes(folder)
    try:
        manifest = load_manifest(folder)
    except (ModelError, OSError) as error:
        return InstalledModel(folder.name, folder, size, problem=str(error))
    return InstalledModel(
        name=folder.name,
        folder=folder,
        size_bytes=size,
        vocabulary=manifest.vocabulary.size,
        encoder_kind=manifest.encoder.kind,
        int8=manifest.encoder.int8_file is not None,
        demonstration=is_demonstration(manifest),
    )


def installed_models(root: Path | None = None) -> list[InstalledModel]:
    """Every model folder under `root` (default `$CAPGEN_HOME/models`), sorted by name."""
    root = models_dir() if root is None else root
    try:
        folders = sorted(
            entry for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith(".")
        )
    except OSError:
        return []
    return [_describe(folder) for folder in folders if (folder / MANIFEST_FILE).exists()]


def list_models() -> list[InstalledModel]:
    """The models in `$CAPGEN_HOME/models`, sorted by name: `capgen models` for Python callers.

    Each is a frozen `InstalledModel`; its `name` is what `Captioner(NAME)`
    takes. A folder whose manifest cannot be read is included with `problem`
    set, so a broken install shows up here instead of vanishing. Reads only
    manifests (no onnxruntime, no model loaded), so listing stays cheap.
    """
    return installed_models()

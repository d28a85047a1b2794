"""What the web tests share: where node, onnxruntime-web and the built models are, and skips saying why."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WEB = REPO / "web"
ORT_DIST = WEB / "node_modules" / "onnxruntime-web" / "dist"
EXAMPLE_PHOTOS = sorted((REPO / "examples").glob("*.jpg"))
EXAMPLE_SCENES = sorted((REPO / "examples" / "shapes").glob("*.jpg"))


def node() -> str:
    found = shutil.which("node")
    if found is None:
        pytest.skip("node is not installed (Node.js 20 runs web/; .ci/run installs it)")
    return found


def ort_dist() -> Path:
    if not (ORT_DIST / "ort.node.min.mjs").is_file():
        pytest.skip(f"onnxruntime-web is not installed in {WEB} (run `make web`: npm ci there)")
    return ORT_DIST


def fake_ort_dir(folder: Path) -> Path:
    """`folder` holding stand-ins for onnxruntime-web's files (`capgen export web` only copies them)."""
    from capgen.convert.web_export import ORT_FILES

    folder.mkdir()
    for name in ORT_FILES:
        (folder / name).write_bytes(f"// {name}\n".encode())
    return folder


def built_model(name: str) -> Path:
    """A model folder capgen built in $CAPGEN_HOME/models (read only here), or a skip."""
    from capgen.runtime.home import models_dir

    folder = models_dir() / name
    if not (folder / "manifest.json").is_file():
        pytest.skip(
            f"model {name!r} is not built in {folder.parent} (run `capgen setup` / make demo)"
        )
    return folder

"""What the web tests share: where node, onnxruntime-web and the built models are, and skips saying why."""

from __future__ import annotations

import hashlib
import json
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

if TYPE_CHECKING:
    from capgen.convert.web_export import WebSite
    from capgen.runtime.captioner import Captioner

REPO = Path(__file__).resolve().parents[2]
WEB = REPO / "web"
ORT_DIST = WEB / "node_modules" / "onnxruntime-web" / "dist"
EXAMPLE_PHOTOS = sorted((REPO / "examples").glob("*.jpg"))
EXAMPLE_SCENES = sorted((REPO / "examples" / "shapes").glob("*.jpg"))
# Tests sharing the session's Node process (conftest.py `web_node`) and sites (`web_sites`): on
# one xdist worker, so Node compiles onnxruntime-web once and each site is exported once.
SHARES_NODE = pytest.mark.xdist_group("web-node")


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


class NodeCaptioner:
    """One Node process running tests/web/caption_files.mjs for many caption jobs.

    Each job loads its site's model and releases it; the process, and with it
    onnxruntime-web's WebAssembly compiled and tiered up by V8, lives for the
    session (conftest.py's `web_node`), so a job pays neither Node's start nor
    the first, unoptimised runs of the module. Jobs run one at a time.
    """

    def __init__(self, folder: Path) -> None:
        self._stderr = (folder / "node-stderr.txt").open("w+b")
        self._process = subprocess.Popen(
            [node(), str(REPO / "tests" / "web" / "caption_files.mjs")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True,
        )  # fmt: skip
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _why(self, what: str) -> str:
        self._stderr.flush()
        self._stderr.seek(0)
        return f"{what}; node's stderr: {self._stderr.read().decode(errors='replace')[-3000:]}"

    def run(self, job: dict[str, Any], timeout: float = 1800.0) -> list[dict[str, Any]]:
        """The {run, image, result} records of one job, in the order Node wrote them."""
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps(job) + "\n")
        self._process.stdin.flush()
        deadline = time.monotonic() + timeout
        records: list[dict[str, Any]] = []
        while True:
            try:
                line = self._lines.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                self._process.kill()
                raise AssertionError(self._why(f"no answer from node in {timeout:.0f} s")) from None
            if line is None:
                raise AssertionError(self._why(f"node exited ({self._process.wait()})"))
            item = json.loads(line)
            if "error" in item:
                raise AssertionError(f"node failed the job: {item['error']}")
            if item.get("done"):
                return records
            records.append(item)

    def close(self) -> None:
        if self._process.stdin is not None and not self._process.stdin.closed:
            self._process.stdin.close()
        try:
            self._process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._stderr.close()


class SiteCache:
    """`sites(model, int8=False, word_gates=None)`: `capgen export web`'s site, written once.

    Read only: tests that check one site's files, or run it in Node, share it (exporting the
    default model splits its 7,577-word step: seconds of CPU each time). onnxruntime-web's
    files are `make web`'s, or stand-ins without it (Node imports web/'s own, never the site's).
    """

    def __init__(self, root: Path) -> None:
        self._root = root
        self._made: dict[tuple[str, bool, bool | None], WebSite] = {}

    def __call__(self, model: Path, int8: bool = False, word_gates: bool | None = None) -> WebSite:
        from capgen.convert.web_export import export_web

        key = (str(model), int8, word_gates)
        if key not in self._made:
            folder = self._root / f"site-{len(self._made)}"
            installed = (ORT_DIST / "ort.node.min.mjs").is_file()
            ort = ORT_DIST if installed else fake_ort_dir(self._root / f"ort-{len(self._made)}")
            self._made[key] = export_web(
                folder, model=model, int8=int8, ort_dir=ort, word_gates=word_gates
            )
        return self._made[key]


class PythonRuntime:
    """The parity tests' Python side: each batch's encoder features, kept for the session
    (conftest.py's `python_runtime`).

    The same photos go through the same encoder file in more than one test: the default
    model's encoder.onnx serves test_tokens_equal_the_python_runtime[default-fp32] and the
    tutorial-size model (test_web_tutorial_size.py), whose first batch of 8 is the former's.
    onnxruntime gives the same features for the same graph, session settings and input, so
    a batch seen before is not encoded again (caption_files.mjs keeps Node's the same way).
    The key is the whole batch (the encoder file's sha256, how it runs, the stacked pixels'
    bytes), not each image: `capgen caption` encodes a batch together, and an image in a
    batch of other neighbours is encoded anew, exactly as the command would. Only features
    are kept (kilobytes); Captioners, with their sessions, are not.
    """

    def __init__(self) -> None:
        self._features: dict[tuple[object, ...], np.ndarray] = {}

    def features(self, captioner: Captioner, pixels: np.ndarray) -> np.ndarray:
        """`captioner.features(pixels)`, computed once per encoder file, engine and batch."""
        plan = captioner.encoder_plan
        sha256 = captioner.manifest.files[plan.file].sha256
        digest = hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()
        key = (
            sha256,
            plan.engine,
            plan.inference_precision,
            pixels.shape,
            str(pixels.dtype),
            digest,
        )
        if key not in self._features:
            features = captioner.features(pixels)
            features.setflags(write=False)  # shared by every test that meets this batch
            self._features[key] = features
        return self._features[key]

"""`capgen export web`'s site in headless Chromium, served on 127.0.0.1 with COOP/COEP.

- The page captions the files picked in it with the CLI's words, tokens and
  alternatives (the shapes model, INT8 encoder, beam 3 with 2 best), running
  cross-origin isolated (threads).
- The browser's decoding (createImageBitmap, EXIF orientation, alpha onto
  white) gives Pillow's pixels exactly: PNGs (RGB, RGBA, grey), a JPEG with
  an EXIF rotation, and the example JPEGs.
- A second visit takes every model file from Cache Storage (keyed by sha256).

The site ships the step split (decoder_step.web.onnx + word_gates.bin, the
rows computed in the page), as the default model's site does; the shapes
model's own export keeps its small table (test_web_parity.py runs that).

Chromium is driven through chromedriver's WebDriver HTTP API with httpx, as
tests/serve/test_serve_page.py does; without /usr/bin/chromium and
/usr/bin/chromedriver, node, `make web` or the shapes model these tests skip
saying why.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from capgen_cli import capgen
from chromium_session import chromium_session
from PIL import Image
from web_helpers import EXAMPLE_PHOTOS, EXAMPLE_SCENES, built_model, ort_dist

from capgen.benchmarks.static_site import serve_folder
from capgen.convert.web_export import export_web
from capgen.runtime.preprocess import load_image, to_rgb

httpx = pytest.importorskip("httpx", reason="httpx (dev extra) is not installed")

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C WebDriver element key
WAIT_S = 600.0  # loading 40 MB and captioning on a loaded 2-core machine; a bound, not a timing
ROWS_SCRIPT = """
return Array.from(document.querySelectorAll("#results .row"), (row) => ({
  state: row.dataset.state,
  name: row.querySelector(".name").textContent,
  caption: row.querySelector(".caption").textContent,
  tokens: row.dataset.tokens ? JSON.parse(row.dataset.tokens) : null,
  alternatives: Array.from(row.querySelectorAll(".alt-caption"), (item) => item.textContent),
  error: row.querySelector(".error").textContent,
}));
"""
# Decodes each URL with the module's own decodeImage; returns base64 RGB bytes and the size.
DECODE_SCRIPT = """
const [urls, done] = arguments;
import("./capgen.mjs").then(async ({ decodeImage }) => {
  const out = [];
  for (const url of urls) {
    const blob = await (await fetch(url)).blob();
    const { data, width, height } = await decodeImage(blob);
    let text = "";
    for (let i = 0; i < data.length; i += 0x8000) text += String.fromCharCode(...data.subarray(i, i + 0x8000));
    out.push({ width, height, rgb: btoa(text) });
  }
  done(out);
}).catch((error) => done({ error: String(error) }));
"""


def until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {WAIT_S:.0f} s")
        time.sleep(0.25)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ort_dist()
    model = built_model("shapes")
    folder = tmp_path_factory.mktemp("site") / "site"
    # The split step (word gates computed in the page), as the default model's site ships it.
    export_web(folder, model=model, int8=True, word_gates=True)
    images = folder.parent / "images"
    images.mkdir()
    return folder


@pytest.fixture(scope="module")
def site_url(site: Path) -> Iterator[str]:
    with serve_folder(site.parent) as url:  # COOP/COEP, .mjs and .wasm types (static_site.py)
        yield url + "site/"


Browser = tuple[Any, str]
# Each test starts Chromium and loads a 25 MB model: `make test-fast` leaves them out.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    """One Chromium for the module's tests (each start, and each first load of the model in a
    fresh profile, cost seconds of CPU); a test that needs an empty Cache Storage empties it."""
    profile = tmp_path_factory.mktemp("chromium") / "profile"
    with chromium_session(profile, WAIT_S) as (client, session):
        client.post(f"{session}/timeouts", json={"script": int(WAIT_S * 1000)})
        yield client, session


def _open(browser: Browser, url: str) -> None:
    client, session = browser
    assert client.post(f"{session}/url", json={"url": url}).status_code == 200


def _script(browser: Browser, script: str, *args: Any, asynchronous: bool = False) -> Any:
    client, session = browser
    kind = "async" if asynchronous else "sync"
    answer = client.post(f"{session}/execute/{kind}", json={"script": script, "args": list(args)})
    assert answer.status_code == 200, answer.text
    return answer.json()["value"]


def _element(browser: Browser, css: str) -> str:
    client, session = browser
    answer = client.post(f"{session}/element", json={"using": "css selector", "value": css})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["value"][ELEMENT])


def _type(browser: Browser, css: str, text: str) -> None:
    client, session = browser
    element = _element(browser, css)
    assert client.post(f"{session}/element/{element}/clear", json={}).status_code == 200
    answer = client.post(f"{session}/element/{element}/value", json={"text": text})
    assert answer.status_code == 200, answer.text


def _pick(browser: Browser, files: list[Path]) -> None:
    client, session = browser
    text = "\n".join(str(file) for file in files)
    answer = client.post(
        f"{session}/element/{_element(browser, '#file')}/value", json={"text": text}
    )
    assert answer.status_code == 200, answer.text


def _ready(browser: Browser) -> dict[str, Any]:
    """The page once its model is loaded (or failed to load)."""
    status: dict[str, Any] = {}

    def loaded() -> bool:
        status.update(
            _script(
                browser,
                "return {state: document.body.dataset.state || '', cached: document.body.dataset.fromCache,"
                " isolated: globalThis.crossOriginIsolated, model: document.getElementById('model').textContent};",
            )
        )
        return status["state"] in ("ready", "failed")

    until(loaded, "the page to load its model")
    assert status["state"] == "ready", status["model"]
    return status


def _cli(files: list[Path], model: Path, home: Path, *options: str) -> list[dict[str, Any]]:
    """`capgen caption --json --int8` with a private CAPGEN_HOME (its verification stamps go there).

    Through tests/capgen_cli.py: in this process, with the command's own argv, environment and
    streams (a child process, as before, under CAPGEN_TEST_SUBPROCESS=1), so the check pays no
    interpreter start and no second import of onnxruntime and capgen."""
    done = capgen(
        "caption", "--model", str(model), "--json", "--int8", *options, *map(str, files),
        env={**os.environ, "CAPGEN_HOME": str(home)}, timeout=1800,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    return [json.loads(line) for line in done.stdout.decode().splitlines() if line.strip()]


def test_the_exported_page_captions_as_the_cli_does(
    site_url: str, browser: Browser, tmp_path: Path
) -> None:
    files = EXAMPLE_SCENES + EXAMPLE_PHOTOS[:1]
    _open(browser, site_url)
    status = _ready(browser)
    assert status["isolated"] is True  # the COOP/COEP headers took: threads are available
    _type(browser, "#nbest", "2")
    _pick(browser, files)
    rows: list[dict[str, Any]] = []

    def settled() -> bool:
        rows[:] = _script(browser, ROWS_SCRIPT)
        return len(rows) == len(files) and all(row["state"] != "pending" for row in rows)

    until(settled, f"{len(files)} captions")
    expected = _cli(
        files, built_model("shapes"), tmp_path / "home", "--beam-size", "3", "--n-best", "2"
    )
    by_name = {Path(record["path"]).name: record for record in expected}
    for row in rows:
        record = by_name[row["name"]]
        assert row["state"] == "done", row
        assert (row["caption"], row["tokens"]) == (record["caption"], record["tokens"])
        assert row["alternatives"] == [alt["caption"] for alt in record.get("alternatives", [])]


# Empties the origin's Cache Storage (run on a page of the site's origin that loads no model).
CLEAR_CACHES_SCRIPT = """
const done = arguments[arguments.length - 1];
caches.keys().then((keys) => Promise.all(keys.map((key) => caches.delete(key))))
  .then(async () => done((await caches.keys()).length), (error) => done(String(error)));
"""


def test_a_second_visit_downloads_no_model_file(
    site_url: str, site: Path, browser: Browser
) -> None:
    # As a fresh profile: the browser is the module's, so earlier visits filled Cache Storage.
    _open(browser, site_url + "capgen-site.json")
    assert _script(browser, CLEAR_CACHES_SCRIPT, asynchronous=True) == 0
    _open(browser, site_url)
    first = _ready(browser)
    assert first["cached"] == ""  # nothing in Cache Storage: everything was downloaded
    _open(browser, site_url + "?again")
    second = _ready(browser)
    record = json.loads((site / "capgen-site.json").read_text())
    assert sorted(second["cached"].split()) == sorted(record["model"]["files"])


def _pillow_rgb(path: Path) -> np.ndarray:
    return np.asarray(to_rgb(load_image(path)))


def _browser_rgb(browser: Browser, site_url: str, urls: list[str]) -> list[np.ndarray]:
    """`urls` decoded by the page's module (decodeImage), in the site's page with its model loaded
    (the page this module's browser shows already, if an earlier test left it there)."""
    here = _script(browser, "return [location.href, document.body?.dataset.state || ''];")
    if not (here[0].startswith(site_url) and here[1] == "ready"):
        _open(browser, site_url)
    _ready(browser)
    decoded = _script(browser, DECODE_SCRIPT, urls, asynchronous=True)
    assert isinstance(decoded, list), decoded
    return [
        np.frombuffer(base64.b64decode(item["rgb"]), dtype=np.uint8).reshape(
            item["height"], item["width"], 3
        )
        for item in decoded
    ]


def _test_images(site: Path) -> list[Path]:
    """PNGs: RGB, RGBA with every alpha, grey, palette with transparency; a JPEG with EXIF rotation."""
    folder = site.parent / "images"
    rng = np.random.default_rng(3)
    made = []
    rgba = rng.integers(0, 256, (37, 53, 4), dtype=np.uint8)
    rgba[0, :, 3] = 0
    rgba[1, :, 3] = 255
    for name, image in (
        ("rgb.png", Image.fromarray(rgba[..., :3].copy())),
        ("rgba.png", Image.fromarray(rgba, "RGBA")),
        ("grey.png", Image.fromarray(rgba[..., 0].copy(), "L")),
    ):
        path = folder / name
        if not path.exists():
            image.save(path)
        made.append(path)
    rotated = folder / "rotated.jpg"
    if not rotated.exists():
        exif = Image.Exif()
        exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to show
        Image.open(EXAMPLE_SCENES[0]).save(rotated, exif=exif, quality=95)
    made.append(rotated)
    return made


def test_browser_decoding_gives_pillows_pixels(site_url: str, site: Path, browser: Browser) -> None:
    lossless = _test_images(site)
    urls = [f"../images/{path.name}" for path in lossless]
    for path, got in zip(lossless, _browser_rgb(browser, site_url, urls), strict=True):
        want = _pillow_rgb(path)
        assert got.shape == want.shape, path.name  # for rotated.jpg: EXIF orientation applied
        assert np.array_equal(got, want), f"{path.name}: the browser's pixels are not Pillow's"


def test_example_jpegs_decode_to_pillows_pixels(
    site_url: str, site: Path, browser: Browser
) -> None:
    """Chromium's JPEG decoder and the libjpeg-turbo in Pillow's wheels give the same bytes here.

    Not guaranteed by any standard (IDCT and chroma upsampling may differ
    between decoders), so a failure names how far apart they are.
    """
    jpegs = EXAMPLE_PHOTOS + EXAMPLE_SCENES
    folder = site.parent / "images"
    for path in jpegs:
        copy = folder / path.name
        if not copy.exists():
            copy.write_bytes(path.read_bytes())
    decoded = _browser_rgb(browser, site_url, [f"../images/{path.name}" for path in jpegs])
    report = []
    for path, got in zip(jpegs, decoded, strict=True):
        want = _pillow_rgb(path)
        assert got.shape == want.shape, path.name
        difference = np.abs(got.astype(np.int16) - want.astype(np.int16))
        if difference.any():
            report.append(
                f"{path.name}: max |diff| {difference.max()}, {np.mean(difference > 0):.2%} of bytes"
            )
    assert report == [], f"JPEG decoding differs from Pillow's: {report}"

"""The page at / in headless Chromium: images and folders, options, the key field, the mark, docs.

Chromium is driven through chromedriver's WebDriver HTTP API with httpx (no
extra Python package). Debian's `chromium` and `chromium-driver` provide
/usr/bin/chromium and /usr/bin/chromedriver; `.ci/run` installs them, and
without them these tests skip saying so. Each caption the page shows is
compared with what the API answers for the same file and options, so the
page cannot drift from the API unnoticed.

The screenshot is written to build/test-artifacts/serve-page.png; with
CAPGEN_UPDATE_SCREENSHOT=1 it is also copied to docs/serve-page.png (the
README's), and CAPGEN_SCREENSHOT_MODEL=FOLDER serves that model instead of
the tiny test one, so the README can show real captions:

    CAPGEN_UPDATE_SCREENSHOT=1 CAPGEN_SCREENSHOT_MODEL=~/.cache/capgen/models/default \\
        .venv/bin/python -m pytest tests/serve/test_serve_page.py -k several
"""

from __future__ import annotations

import base64
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip(
    "fastapi",
    reason="the serve extra is not installed: pip install 'capgen[serve]' (make install adds it)",
)
pytest.importorskip("httpx", reason="httpx (dev extra) is not installed")

import httpx
from chromium_session import chromium_session
from serve_helpers import WAIT_S, Server, start_server, until

REPO = Path(__file__).resolve().parents[2]
SHAPES = REPO / "examples" / "shapes"
PHOTOS = sorted((REPO / "examples").glob("*.jpg"))[:3]
# The README's screenshot shows a real model on the example photos; the tests' own runs
# use the tiny model on small scenes.
EXAMPLES = (
    PHOTOS
    if os.environ.get("CAPGEN_SCREENSHOT_MODEL")
    else [SHAPES / "scene-1.jpg", SHAPES / "scene-2.jpg", SHAPES / "scene-3.jpg"]
)
ARTIFACT = REPO / "build" / "test-artifacts" / "serve-page.png"
README_SCREENSHOT = REPO / "docs" / "serve-page.png"
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C WebDriver element key
ENTER = "\ue007"  # WebDriver's Enter key
KEY = "s3cret-key"
MARK = "[max length reached]"
# The tiny model ends this image's caption (an end token) at the default options: the one
# case where "finished" is true, so the mark's absence can be tested too.
GREY = (120, 120, 120)
# Every row of the page as data: what is shown, not what the DOM holds hidden.
ROWS_SCRIPT = """
const shown = (node) => node.getClientRects().length > 0;
return Array.from(document.querySelectorAll("#results .row"), (row) => ({
  state: row.dataset.state,
  name: row.querySelector(".name").textContent,
  caption: row.querySelector(".caption").textContent,
  mark: shown(row.querySelector(".mark")) ? row.querySelector(".mark").textContent : "",
  score: row.querySelector(".line .score").textContent,
  alternatives: Array.from(row.querySelectorAll(".alternative"), (item) => [
    item.querySelector(".alt-caption").textContent, item.querySelector(".score").textContent]),
  error: row.querySelector(".error").textContent,
  thumbnail: row.querySelector(".thumb").naturalWidth > 0,
}));
"""

Browser = tuple[httpx.Client, str]
# One Chromium and one plain server for the module (each test navigates afresh; the
# plain server's state is only read as differences); conftest.py keeps them on one worker.


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    """(a client of chromedriver, the session path) for one headless Chromium."""
    with chromium_session(tmp_path_factory.mktemp("chromium") / "profile", WAIT_S) as session:
        yield session


@pytest.fixture()
def browser(chromium: Browser) -> Iterator[Browser]:
    """The module's Chromium, left on a blank page at the window's own size after each test."""
    yield chromium
    client, session = chromium
    client.post(f"{session}/goog/cdp/execute", json={"cmd": "Emulation.clearDeviceMetricsOverride", "params": {}})  # fmt: skip
    _open(chromium, "about:blank")


@pytest.fixture(scope="module")
def server(serve_model: Path, serve_home: Path) -> Iterator[Server]:
    yield from start_server(serve_model, serve_home)


@pytest.fixture()
def keyed_server(serve_model: Path, serve_home: Path) -> Iterator[Server]:
    yield from start_server(serve_model, serve_home, "--api-key", KEY)


@pytest.fixture()
def screenshot_server(serve_home: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    """The tiny model (the module's server), or CAPGEN_SCREENSHOT_MODEL's (a real one, for
    the README's screenshot)."""
    chosen = os.environ.get("CAPGEN_SCREENSHOT_MODEL")
    if chosen:
        yield from start_server(Path(chosen).expanduser(), serve_home)
    else:
        yield request.getfixturevalue("server")


# --- WebDriver, one call each -------------------------------------------------------------


def _open(browser: Browser, url: str) -> None:
    client, session = browser
    assert client.post(f"{session}/url", json={"url": url}).status_code == 200


def _element(browser: Browser, css: str) -> str:
    client, session = browser
    answer = client.post(f"{session}/element", json={"using": "css selector", "value": css})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["value"][ELEMENT])


def _text(browser: Browser, css: str) -> str:
    client, session = browser
    return str(client.get(f"{session}/element/{_element(browser, css)}/text").json()["value"])


def _displayed(browser: Browser, css: str) -> bool:
    client, session = browser
    return bool(client.get(f"{session}/element/{_element(browser, css)}/displayed").json()["value"])


def _type(browser: Browser, css: str, text: str) -> None:
    """Replace an input's value with `text` (as keystrokes, so the page sees real input)."""
    client, session = browser
    element = _element(browser, css)
    assert client.post(f"{session}/element/{element}/clear", json={}).status_code == 200
    if text:
        answer = client.post(f"{session}/element/{element}/value", json={"text": text})
        assert answer.status_code == 200, answer.text


def _click(browser: Browser, css: str) -> None:
    client, session = browser
    answer = client.post(f"{session}/element/{_element(browser, css)}/click", json={})
    assert answer.status_code == 200, answer.text


def _pick(browser: Browser, files: list[Path]) -> None:
    """Choose several files in the page's picker at once (WebDriver: one path per line)."""
    client, session = browser
    text = "\n".join(str(file) for file in files)
    answer = client.post(
        f"{session}/element/{_element(browser, '#file')}/value", json={"text": text}
    )
    assert answer.status_code == 200, answer.text


def _script(browser: Browser, script: str) -> Any:
    client, session = browser
    answer = client.post(f"{session}/execute/sync", json={"script": script, "args": []})
    assert answer.status_code == 200, answer.text
    return answer.json()["value"]


def _rows(browser: Browser, count: int) -> list[dict[str, Any]]:
    """The page's rows once there are `count` and none is still waiting for its caption."""
    found: list[dict[str, Any]] = []

    def settled() -> bool:
        found[:] = _script(browser, ROWS_SCRIPT)
        return len(found) == count and all(
            row["state"] != "pending" and row["thumbnail"] for row in found
        )

    until(settled, f"{count} caption rows")
    return found


def _model_line(browser: Browser) -> str:
    until(lambda: _text(browser, "#model").startswith("Model: "), "the model's name")
    return _text(browser, "#model")


# --- the API's answer for the same files ---------------------------------------------------


def _api(
    server: Server, files: list[Path], key: str | None = None, **options: int
) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with server.client(headers=headers) as api:
        answer = api.post(
            "/v1/captions",
            params=options,
            files=[("files", (file.name, file.read_bytes(), "image/*")) for file in files],
        )
    assert answer.status_code == 200, answer.text
    return list(answer.json()["results"])


def _score(value: float) -> str:
    return f"log p {value:.3f}"


def _assert_rows_match(rows: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    """Each row shows its record: caption, score, the mark iff unfinished, every alternative."""
    assert [row["name"] for row in rows] == [record["path"] for record in expected]
    for row, record in zip(rows, expected, strict=True):
        assert row["state"] == "done" and row["error"] == "", row
        assert row["caption"] == record["caption"]
        assert row["score"] == _score(record["log_probability"])
        assert row["mark"] == ("" if record["finished"] else MARK)
        assert row["alternatives"] == [
            [alt["caption"], _score(alt["log_probability"])]
            for alt in record.get("alternatives", [])
        ]


def _screenshot(browser: Browser) -> None:
    """The whole page to the artifact, and to docs/ when asked.

    Headless Chromium's window is no taller than its virtual screen, so the
    viewport is set to the page's height through chromedriver's CDP endpoint.
    """
    client, session = browser
    height = int(_script(browser, "return document.documentElement.scrollHeight;"))
    metrics = {"width": 900, "height": min(height, 3000), "deviceScaleFactor": 1, "mobile": False}
    answer = client.post(
        f"{session}/goog/cdp/execute",
        json={"cmd": "Emulation.setDeviceMetricsOverride", "params": metrics},
    )
    assert answer.status_code == 200, answer.text
    shot = client.get(f"{session}/screenshot").json()["value"]
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    ARTIFACT.write_bytes(base64.b64decode(shot))
    assert ARTIFACT.read_bytes().startswith(b"\x89PNG")
    if os.environ.get("CAPGEN_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(ARTIFACT, README_SCREENSHOT)


# --- the tests -----------------------------------------------------------------------------


def test_several_images_then_options_show_alternatives(
    browser: Browser, screenshot_server: Server
) -> None:
    server = screenshot_server
    _open(browser, f"{server.url}/")
    with server.client() as api:
        model = api.get("/v1/model").json()
    assert _model_line(browser).startswith(f"Model: {model['name']}")
    # The tiny model is no demonstration (its note stays hidden); a demonstration model shows it.
    assert _displayed(browser, "#demo") is bool(model["demonstration"])
    # A server without a key: no key field.
    assert not _displayed(browser, "#keyline")
    bounds = _script(browser, 'return [document.getElementById("beam").max, document.getElementById("maxlen").max];')  # fmt: skip
    assert bounds == [str(model["batching"]["max_beam"]), str(model["max_length"])]

    _pick(browser, EXAMPLES)
    rows = _rows(browser, len(EXAMPLES))
    _assert_rows_match(rows, _api(server, EXAMPLES))
    assert all(row["alternatives"] == [] for row in rows)  # n-best 1: the caption alone

    _type(browser, "#beam", "4")
    _type(browser, "#nbest", "3")
    _click(browser, "#again")
    until(lambda: any(row["alternatives"] for row in _script(browser, ROWS_SCRIPT)), "alternatives")
    rows = _rows(browser, len(EXAMPLES))
    expected = _api(server, EXAMPLES, beam_size=4, n_best=3)
    assert all(len(record["alternatives"]) == 2 for record in expected)
    _assert_rows_match(rows, expected)
    assert _text(browser, "#status") == f"{len(EXAMPLES)} image(s) captioned."
    _screenshot(browser)


def test_max_length_mark_and_option_bounds(
    browser: Browser, server: Server, tmp_path: Path
) -> None:
    from PIL import Image

    grey = tmp_path / "grey.png"
    Image.new("RGB", (40, 30), GREY).save(grey)
    files = [grey, EXAMPLES[0]]
    whole = _api(server, files)
    assert [record["finished"] for record in whole] == [True, False]  # the tiny model's behaviour
    _open(browser, f"{server.url}/")
    _model_line(browser)
    _pick(browser, files)
    rows = _rows(browser, 2)
    _assert_rows_match(rows, whole)
    assert [row["mark"] for row in rows] == ["", MARK]

    _type(browser, "#maxlen", "1")
    _click(browser, "#again")
    until(lambda: _script(browser, ROWS_SCRIPT)[0]["mark"] == MARK, "the grey image's mark")
    rows = _rows(browser, 2)
    cut = _api(server, files, max_length=1)
    _assert_rows_match(rows, cut)
    assert [row["mark"] for row in rows] == [MARK, MARK]
    assert all(len(row["caption"].split()) == 1 for row in rows)

    # Over the model's max_length: refused on the page, before any request, saying the bound.
    requests_before = server.metric("capgen_requests_total", route="/v1/captions", status="200")
    _type(browser, "#maxlen", "9")
    _click(browser, "#again")
    until(lambda: _text(browser, "#error") != "", "the bound's message")
    assert _text(browser, "#error") == "Max length must be a whole number from 1 to 8."
    assert _script(browser, ROWS_SCRIPT) == rows  # the earlier captions stay
    after = server.metric("capgen_requests_total", route="/v1/captions", status="200")
    assert after == requests_before


def test_key_field_only_when_the_server_needs_one(browser: Browser, keyed_server: Server) -> None:
    server = keyed_server
    _open(browser, f"{server.url}/")
    until(lambda: _displayed(browser, "#keyline"), "the key field")
    assert "needs an API key" in _text(browser, "#model")
    _type(browser, "#key", KEY + ENTER)
    with server.client(headers={"Authorization": f"Bearer {KEY}"}) as api:
        name = api.get("/v1/model").json()["name"]
    assert _model_line(browser).startswith(f"Model: {name}")
    _pick(browser, EXAMPLES[:2])
    _assert_rows_match(_rows(browser, 2), _api(server, EXAMPLES[:2], key=KEY))
    # Never stored: nothing in the browser's storage holds it.
    stored = _script(browser, "return JSON.stringify([localStorage, sessionStorage]) + document.cookie;")  # fmt: skip
    assert KEY not in stored


def test_api_docs_work_offline(browser: Browser, server: Server) -> None:
    with server.client() as api:
        pages = {path: api.get(path) for path in ("/docs", "/redoc")}
        for path, page in pages.items():
            assert page.status_code == 200, path
            assert not re.search(r"(https?:)?//[a-z0-9]", page.text, re.IGNORECASE), path
            assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
            assert assets, path
            for asset in assets:  # every script, style and icon comes from this server
                assert asset.startswith("/"), asset
                assert api.get(asset).status_code == 200, asset
    # Swagger UI renders the API from /openapi.json in a browser that reaches nothing else.
    _open(browser, f"{server.url}/docs")
    until(
        lambda: _script(browser, 'return document.querySelectorAll(".opblock").length;') > 0,
        "Swagger UI to list the operations",
    )
    assert "/v1/captions" in _text(browser, ".swagger-ui")


def test_a_picked_folder_gives_a_row_per_image(
    browser: Browser, server: Server, tmp_path: Path
) -> None:
    folder = tmp_path / "album"
    (folder / "more").mkdir(parents=True)
    shutil.copyfile(EXAMPLES[1], folder / "b.jpg")
    shutil.copyfile(EXAMPLES[0], folder / "more" / "a.jpg")
    (folder / "notes.txt").write_text("not an image")
    _open(browser, f"{server.url}/")
    _model_line(browser)
    client, session = browser
    answer = client.post(
        f"{session}/element/{_element(browser, '#folder')}/value", json={"text": str(folder)}
    )
    assert answer.status_code == 200, answer.text
    rows = _rows(browser, 2)
    # In name order, each named by its path in the folder; the text file skipped.
    assert [row["name"] for row in rows] == ["album/b.jpg", "album/more/a.jpg"]
    expected = _api(server, [folder / "b.jpg", folder / "more" / "a.jpg"])
    assert [row["caption"] for row in rows] == [record["caption"] for record in expected]
    assert _text(browser, "#status") == (
        "2 image(s) captioned. Skipped 1 file(s) that are not images."
    )

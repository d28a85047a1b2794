"""The page at / in headless Chromium: pick an example image, see its caption, keep a screenshot.

Chromium is driven through chromedriver's WebDriver HTTP API with httpx (no
extra Python package). Debian's `chromium` and `chromium-driver` provide
/usr/bin/chromium and /usr/bin/chromedriver; `.ci/run` installs them, and
without them this test skips saying so. The screenshot is written to
build/test-artifacts/serve-page.png.
"""

from __future__ import annotations

import base64
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip(
    "fastapi",
    reason="the serve extra is not installed: pip install 'capgen[serve]' (make install adds it)",
)
pytest.importorskip("httpx", reason="httpx (dev extra) is not installed")

import httpx
from serve_helpers import WAIT_S, Server, start_server, until

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "shapes" / "scene-1.jpg"
ARTIFACT = REPO / "build" / "test-artifacts" / "serve-page.png"
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C WebDriver element key
# Flags known to work here (root, closed network): no sandbox, no background connections.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=900,900",
]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture()
def browser(tmp_path: Path) -> Iterator[tuple[httpx.Client, str]]:
    """(a client of chromedriver, the session path) for one headless Chromium."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(
            f"{CHROMIUM} or {CHROMEDRIVER} missing: apt-get install -y chromium chromium-driver "
            "(.ci/run installs them)"
        )
    port = _free_port()
    driver = subprocess.Popen(
        [str(CHROMEDRIVER), f"--port={port}", "--allowed-ips=127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=WAIT_S)
    try:
        until(lambda: _driver_up(client), "chromedriver to start")
        options = {
            "binary": str(CHROMIUM),
            "args": [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"],
        }
        answer = client.post(
            "/session", json={"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": options}}}
        )  # fmt: skip
        assert answer.status_code == 200, answer.text
        session = f"/session/{answer.json()['value']['sessionId']}"
        yield client, session
        client.delete(session)
    finally:
        client.close()
        driver.terminate()
        driver.wait(timeout=WAIT_S)


def _driver_up(client: httpx.Client) -> bool:
    try:
        return client.get("/status").status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture()
def server(serve_model: Path, serve_home: Path) -> Iterator[Server]:
    yield from start_server(serve_model, serve_home)


def _element(client: httpx.Client, session: str, css: str) -> str:
    answer = client.post(f"{session}/element", json={"using": "css selector", "value": css})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["value"][ELEMENT])


def _text(client: httpx.Client, session: str, element: str) -> str:
    return str(client.get(f"{session}/element/{element}/text").json()["value"])


def test_pick_an_example_image_and_see_its_caption(
    browser: tuple[httpx.Client, str], server: Server
) -> None:
    client, session = browser
    with server.client() as api:
        expected = api.post(
            "/v1/captions", content=EXAMPLE.read_bytes(), headers={"Content-Type": "image/jpeg"}
        ).json()["results"][0]["caption"]
    assert client.post(f"{session}/url", json={"url": f"{server.url}/"}).status_code == 200
    picker = _element(client, session, "#file")
    caption = _element(client, session, "#caption")
    error = _element(client, session, "#error")
    answer = client.post(f"{session}/element/{picker}/value", json={"text": str(EXAMPLE)})
    assert answer.status_code == 200, answer.text
    until(
        lambda: (
            _text(client, session, caption) not in ("", "captioning…")
            or _text(client, session, error)
        ),
        "the page to show a caption",
    )
    assert _text(client, session, error) == ""
    assert _text(client, session, caption) == expected
    with server.client() as api:
        model = api.get("/v1/model").json()
    assert _text(client, session, _element(client, session, "#model")).startswith(
        f"Model: {model['name']}"
    )
    # The tiny test model is no demonstration: the shapes note stays hidden.
    assert _text(client, session, _element(client, session, "#demo")) == ""
    shot = client.get(f"{session}/screenshot").json()["value"]
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    ARTIFACT.write_bytes(base64.b64decode(shot))
    assert ARTIFACT.read_bytes().startswith(b"\x89PNG")

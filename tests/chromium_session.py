"""One headless Chromium, driven through chromedriver's WebDriver HTTP API with httpx.

Shared by the browser tests (tests/serve/test_serve_page.py, tests/web/test_web_site.py);
skips, saying why, when Chromium or chromedriver is not installed.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx", reason="httpx (dev extra) is not installed")

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Flags known to work here (root, closed network): no sandbox, no background connections.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=900,900",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _driver_up(client: httpx.Client) -> bool:
    try:
        return client.get("/status").status_code == 200
    except httpx.TransportError:
        return False


@contextmanager
def chromium_session(profile: Path, wait_s: float) -> Iterator[tuple[httpx.Client, str]]:
    """(a client of chromedriver, the session path) for one headless Chromium using `profile`."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(
            f"{CHROMIUM} or {CHROMEDRIVER} missing: apt-get install -y chromium chromium-driver "
            "(.ci/run installs them)"
        )
    port = free_port()
    driver = subprocess.Popen(
        [str(CHROMEDRIVER), f"--port={port}", "--allowed-ips=127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=wait_s)
    try:
        deadline = time.monotonic() + wait_s
        while not _driver_up(client):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"gave up waiting for chromedriver to start after {wait_s:.0f} s"
                )
            time.sleep(0.25)
        options = {"binary": str(CHROMIUM), "args": [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]}
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
        driver.wait(timeout=wait_s)

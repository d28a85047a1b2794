"""One headless Chromium, driven through chromedriver's WebDriver HTTP API with httpx.

No Selenium: a WebDriver session is a handful of HTTP requests. Used by the
bench's web section (web_bench.py) and, through tests/chromium_session.py
(which turns `missing()` into a skip), by the browser tests.
"""

from __future__ import annotations

import importlib.util
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from capgen.benchmarks import quiet
from capgen.benchmarks.static_site import free_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Flags known to work here (root, closed network): no sandbox, no background connections.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=900,900",
]  # fmt: skip
INSTALL = "apt-get install -y chromium chromium-driver (.ci/run installs them)"


def missing() -> str | None:
    """Why no Chromium session can start here (None: it can)."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        return f"{CHROMIUM} or {CHROMEDRIVER} missing: {INSTALL}"
    if importlib.util.find_spec("httpx") is None:
        return "httpx (dev extra) is not installed: pip install 'capgen[dev]'"
    return None


def _driver_up(client: Any) -> bool:
    import httpx

    try:
        return bool(client.get("/status").status_code == 200)
    except httpx.TransportError:
        return False


@contextmanager
def chromium_session(profile: Path, wait_s: float) -> Iterator[tuple[Any, str]]:
    """(an httpx client of chromedriver, the session path) for one headless Chromium using `profile`.

    RuntimeError when Chromium or chromedriver is missing or does not start within `wait_s`.
    """
    import httpx

    reason = missing()
    if reason is not None:
        raise RuntimeError(reason)
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
                raise RuntimeError(
                    f"gave up waiting for chromedriver to start after {wait_s:.0f} s"
                )
            time.sleep(0.25)
        options = {"binary": str(CHROMIUM), "args": [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]}
        answer = client.post(
            "/session", json={"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": options}}}
        )  # fmt: skip
        if answer.status_code != 200:
            raise RuntimeError(f"chromedriver refused a session: {answer.text}")
        session = f"/session/{answer.json()['value']['sessionId']}"
        try:
            yield client, session
        finally:
            browser_cpu = _tree_seconds(driver.pid)
            before = _reaped_seconds()
            with suppress(httpx.HTTPError):  # Chromium quits
                client.delete(session)
    finally:
        client.close()
        driver.terminate()
        driver.wait(timeout=wait_s)
    # chromedriver does not wait for Chromium's processes: their CPU time never comes back
    # to this process, so the bench's quietness record (quiet.py) is told it was ours.
    quiet.credit_own_seconds(browser_cpu - (_reaped_seconds() - before))


def _tree_seconds(pid: int) -> float:
    """CPU-seconds of process `pid` and its descendants so far (their reaped children included)."""
    if importlib.util.find_spec("psutil") is None:
        return 0.0  # the bench and dev extras have it; without it nothing is credited
    return quiet.tree_seconds(pid)


def _reaped_seconds() -> float:
    """CPU-seconds of this process's children that have ended and been waited for."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def open_url(client: Any, session: str, url: str) -> None:
    answer = client.post(f"{session}/url", json={"url": url})
    if answer.status_code != 200:
        raise RuntimeError(f"Chromium could not open {url}: {answer.text}")


def execute(client: Any, session: str, script: str, *args: Any, asynchronous: bool = False) -> Any:
    """The value of `script` run in the page (asynchronous: it ends by calling its last argument)."""
    kind = "async" if asynchronous else "sync"
    answer = client.post(f"{session}/execute/{kind}", json={"script": script, "args": list(args)})
    if answer.status_code != 200:
        raise RuntimeError(f"the script failed in Chromium: {answer.text[:500]}")
    return answer.json()["value"]

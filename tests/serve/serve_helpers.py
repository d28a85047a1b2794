"""Starting the real `capgen serve` console script on a free loopback port, and reading /metrics.

A module of its own (conftest names clash across test folders). Every wait
is bounded: a server that does not come up, drain or answer fails the test
instead of hanging it.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

TESTS = Path(__file__).resolve().parents[1]
CONSOLE_SCRIPT = TESTS.parent / ".venv" / "bin" / "capgen"
STARTED = re.compile(r"capgen: serving .* on (http://[^\s,]+)")
WAIT_S = 60.0  # an upper bound for anything to happen, never an expectation of speed


@dataclass
class Server:
    process: subprocess.Popen[str]
    url: str
    lines: list[str] = field(default_factory=list)

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=WAIT_S, **kwargs)  # type: ignore[arg-type]

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        return host, int(port)

    def metrics(
        self, headers: dict[str, str] | None = None
    ) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """{(sample name, sorted labels): value} from /metrics."""
        text = httpx.get(f"{self.url}/metrics", headers=headers, timeout=WAIT_S).text
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0.0)

    def wait_for_metric(self, name: str, value: float, **labels: str) -> None:
        until(lambda: self.metric(name, **labels) == value, f"{name}{labels} == {value}")

    def terminate(self) -> int:
        """SIGTERM, then the exit code (bounded wait)."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=WAIT_S)


def until(condition: object, what: str) -> None:
    """Poll `condition()` until true; fail (not hang) after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def start_server(
    model: Path, home: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[Server]:
    """`capgen serve --model MODEL --port 0 ARGS`; yields once /readyz is 200; stops it afterwards."""
    if not CONSOLE_SCRIPT.exists():
        raise AssertionError(f"console script {CONSOLE_SCRIPT} missing (make install creates it)")
    process = subprocess.Popen(
        [str(CONSOLE_SCRIPT), "serve", "--model", str(model), "--port", "0", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "CAPGEN_HOME": str(home), **(env or {})},
    )
    lines: list[str] = []
    first: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line.rstrip("\n"))
            first.put(line)
        first.put("")

    threading.Thread(target=read, daemon=True).start()
    try:
        url = None
        deadline = time.monotonic() + WAIT_S
        while url is None and time.monotonic() < deadline:
            line = first.get(timeout=WAIT_S)
            if not line:
                raise AssertionError(f"capgen serve exited: {lines}")
            found = STARTED.search(line)
            url = found.group(1) if found else None
        assert url is not None, lines
        server = Server(process, url, lines)
        until(lambda: _ready(url), "/readyz to answer 200")
        yield server
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=WAIT_S)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=WAIT_S).status_code == 200
    except httpx.TransportError:
        return False


def raw_request(server: Server, head: str, body: bytes = b"") -> socket.socket:
    """A socket that has sent `head` (request line + headers, no blank line) and `body`."""
    sock = socket.create_connection(server.address, timeout=WAIT_S)
    sock.sendall(head.encode("latin-1") + b"\r\n\r\n" + body)
    return sock


def read_response(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (requests here say Connection: close)."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)

"""A folder served on 127.0.0.1 as the static hosts `capgen export web`'s `_headers` is for.

Every answer carries COOP/COEP (cross-origin isolation: SharedArrayBuffer, so
onnxruntime-web's threads), and `.mjs` / `.wasm` go out with the MIME types
browsers insist on for modules and streaming WebAssembly compilation. Used by
the bench's web section (web_bench.py) and tests/web/test_web_site.py.
"""

from __future__ import annotations

import functools
import http.server
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on now (for a server this process does not bind)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class IsolatedHandler(http.server.SimpleHTTPRequestHandler):
    """A static host like the ones _headers is written for: COOP/COEP on every answer."""

    # An instance variable in typeshed, so not a ClassVar here (mypy refuses the override).
    extensions_map: dict[str, str] = {  # noqa: RUF012
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".mjs": "text/javascript",
        ".wasm": "application/wasm",
    }

    def end_headers(self) -> None:
        for name, value in ISOLATION_HEADERS.items():
            self.send_header(name, value)
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serve_folder(folder: Path) -> Iterator[str]:
    """`folder` served on 127.0.0.1 (a free port) from a thread; yields its URL, ending in /."""
    handler = functools.partial(IsolatedHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)  # a free port
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()

"""What every request passes first: its id, the API key, the body limit, draining, one log line.

A plain ASGI middleware (not Starlette's BaseHTTPMiddleware) so the body
limit acts on the stream itself: a declared Content-Length over the limit is
refused before a byte is read, and a chunked body is refused (413) the moment
it passes the limit, not after it has all arrived.

It is also the last word on errors: whatever escapes the app before an
answer started is answered here with the JSON body (500 `internal_error`,
507 `insufficient_storage` for a full disk, 499 for a client that left),
never Starlette's or uvicorn's text/plain, and logged in one line.
"""

from __future__ import annotations

import errno
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from capgen.serve.errors import ApiError, one_line, service_unavailable
from capgen.serve.metrics import Metrics

CAPTIONS_PATH = "/v1/captions"
REQUEST_ID_HEADER = "x-request-id"
# Open without a key: the probes, the page (it asks for the key itself) and the API description.
# The API's description is public like the page: /openapi.json, and the offline docs
# that render it (their assets live under /static-offline-docs/).
PUBLIC_PATHS = frozenset(
    {"/", "/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
)
PUBLIC_PREFIXES = ("/static-offline-docs/",)
ROUTES = frozenset({*PUBLIC_PATHS, CAPTIONS_PATH, "/v1/model", "/metrics"})
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")

access_log = logging.getLogger("capgen.serve.access")


class BodyTooLarge(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            413, "body_too_large", f"the request body is over the limit of {limit} bytes"
        )


@dataclass
class ServiceState:
    """Shared by the middleware and the endpoints of one app."""

    api_key: str | None
    max_body_bytes: int
    metrics: Metrics
    draining: bool = False
    in_flight: int = 0
    # Called when the last caption request in flight has finished (memory.Trimmer.request).
    on_idle: Callable[[], None] | None = None


async def send_error(send: Send, error: ApiError, request_id: str) -> None:
    body = json.dumps(error.body()).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (REQUEST_ID_HEADER.encode(), request_id.encode()),
        *((k.lower().encode(), v.encode()) for k, v in error.headers.items()),
    ]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def authorized(scope: Scope, api_key: str) -> bool:
    """The request carries `Authorization: Bearer <api_key>`."""
    given = _header(scope, b"authorization") or ""
    scheme, _, token = given.partition(" ")
    # compare_digest on bytes: constant time in the token's content.
    return scheme.lower() == "bearer" and hmac.compare_digest(
        token.strip().encode("latin-1"), api_key.encode("ascii")
    )


class ServiceMiddleware:
    def __init__(self, app: ASGIApp, state: ServiceState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given_id = _header(scope, REQUEST_ID_HEADER.encode())
        request_id = (
            given_id if given_id and _CLIENT_REQUEST_ID.fullmatch(given_id) else uuid.uuid4().hex
        )
        request_state: dict[str, Any] = scope.setdefault("state", {})
        request_state.update(request_id=request_id, images=0, started=started)
        answer: dict[str, Any] = {"status": 500}
        send = self._closing_when_draining(send)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
                answer["started"] = True
                message["headers"] = [
                    *message.get("headers", []),
                    (REQUEST_ID_HEADER.encode(), request_id.encode()),
                ]
            await send(message)

        path = scope["path"]
        counted = path == CAPTIONS_PATH
        if counted:
            self.state.in_flight += 1
            self.state.metrics.in_flight.inc()
        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                answer["status"] = refusal.status
                self.state.metrics.errors.labels(status=refusal.status, code=refusal.code).inc()
                await send_error(send, refusal, request_id)
                return
            try:
                await self.app(scope, self._limited(receive), send_with_id)
            except Exception as error:
                if answer.get("started"):
                    raise  # half an answer is out: uvicorn closes the connection
                failure = self._failure(error, request_id)
                answer["status"] = failure.status
                self.state.metrics.errors.labels(status=failure.status, code=failure.code).inc()
                await send_error(send, failure, request_id)
        finally:
            if counted:
                self.state.in_flight -= 1
                self.state.metrics.in_flight.dec()
                if self.state.in_flight == 0 and self.state.on_idle is not None:
                    self.state.on_idle()
            self._account(scope, request_state, answer["status"], started)

    def _closing_when_draining(self, send: Send) -> Send:
        """`send` that adds `Connection: close` to an answer started during a drain.

        A client that sent on a keep-alive connection during the drain gets
        its answer (503 `draining` for captions) and a closed connection, so
        it opens its next one elsewhere instead of finding this one reset.
        """

        async def closing(message: Message) -> None:
            if message["type"] == "http.response.start" and self.state.draining:
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"connection" for name, _ in headers):
                    headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            await send(message)

        return closing

    @staticmethod
    def _failure(error: Exception, request_id: str) -> ApiError:
        """The JSON answer for an exception no handler took (one log line for a real fault)."""
        if isinstance(error, ClientDisconnect):
            return ApiError(499, "client_closed_request", "the client disconnected")
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return ApiError(507, "insufficient_storage", "no disk space left for this request")
        access_log.error(
            json.dumps(
                {
                    "event": "internal_error",
                    "id": request_id,
                    "error": one_line(f"{type(error).__name__}: {error}"),
                }
            )
        )
        return ApiError(500, "internal_error", "the server failed to answer this request")

    def _refusal(self, scope: Scope) -> ApiError | None:
        """The answer for a request refused before the app sees it, if it is."""
        path = scope["path"]
        key = self.state.api_key
        public = path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)
        if key is not None and not public and not authorized(scope, key):
            return ApiError(
                401,
                "unauthorized",
                "this server needs an API key: send Authorization: Bearer <key>",
                {"WWW-Authenticate": "Bearer"},
            )
        if path == CAPTIONS_PATH and self.state.draining:
            return service_unavailable("draining", "the server is shutting down; retry elsewhere")
        declared = _header(scope, b"content-length")
        limit = self.state.max_body_bytes
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            return BodyTooLarge(limit)
        return None

    def _limited(self, receive: Receive) -> Receive:
        """`receive` that raises BodyTooLarge as soon as the body passes the limit."""
        limit = self.state.max_body_bytes
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        return limited

    def _account(
        self, scope: Scope, request_state: dict[str, Any], status: int, started: float
    ) -> None:
        elapsed = time.perf_counter() - started
        path = scope["path"]
        route = path if path in ROUTES else "other"
        metrics = self.state.metrics
        metrics.requests.labels(route=route, status=status).inc()
        metrics.request_seconds.labels(route=route).observe(elapsed)
        access_log.info(
            json.dumps(
                {
                    "event": "request",
                    "id": request_state["request_id"],
                    "method": scope.get("method", ""),
                    "path": path,
                    "images": request_state.get("images", 0),
                    "status": status,
                    "ms": round(elapsed * 1000.0, 3),
                }
            )
        )

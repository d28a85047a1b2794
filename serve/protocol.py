"""The HTTP/1.1 connection handling under the app: uvicorn's h11 protocol, with limits.

uvicorn's default parser (httptools when installed) takes a request head of
any size, and no uvicorn parser times out a head that never finishes, so one
slow client can hold a connection (and a file descriptor) forever, and a
150 MB header stalls the event loop. Here:

- the protocol is h11, whose incomplete-event limit (`MAX_HEAD_BYTES`, set
  through uvicorn's `h11_max_incomplete_event_size`) refuses a huge head;
- every request head must be complete within `--head-timeout-s`
  (`HEAD_TIMEOUT_S` unless set; `protocol_class`) of the connection opening
  or of the previous answer, or the connection is closed (slowloris); idle keep-alive connections close after `KEEP_ALIVE_S`;
- what h11 refuses is answered with the service's JSON error body, not
  uvicorn's text/plain;
- when the server stops after a drain, a connection whose request may be on
  its way (accepted but nothing answered yet, or part of a head received)
  is not closed under it, which the client would see as a reset: its head
  gets `DRAIN_HEAD_GRACE_S`, it is answered (503 `draining` with
  `Connection: close`, middleware.py), and then closed. An idle keep-alive
  connection is closed at once, as HTTP/1.1 allows.

The class is handed to uvicorn through `Config(http=...)`, its documented
way to choose the protocol.
"""

from __future__ import annotations

import asyncio
import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from capgen.serve.settings import HEAD_TIMEOUT_S

DRAIN_HEAD_GRACE_S = 2.0  # at shutdown, for a request that may already be on its way
KEEP_ALIVE_S = 5
MAX_HEAD_BYTES = 16 * 1024
BAD_REQUEST = json.dumps(
    {
        "code": "bad_http_request",
        "message": f"malformed HTTP request, or a request head over {MAX_HEAD_BYTES} bytes",
    }
).encode()


class CapgenH11Protocol(H11Protocol):
    """h11 with a deadline for each request head and JSON for what h11 refuses."""

    head_timeout_s = HEAD_TIMEOUT_S  # --head-timeout-s: protocol_class() sets it
    _head_timer: asyncio.TimerHandle | None = None
    _answered = 0  # responses completed on this connection
    _stopping = False  # the server is shutting down: close after the next answer

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        self._answered += 1
        if self._stopping:  # the answer is written; nothing more on this connection
            self.transport.close()
        # Armed before uvicorn starts the next (pipelined) cycle, so a request
        # already under way is never mistaken for a late head.
        self._arm_head_timer()
        super().on_response_complete()

    def shutdown(self) -> None:
        """The server stops: answer a request that may be on its way instead of resetting it."""
        idle = self.cycle is None or self.cycle.response_complete
        on_its_way = self._answered == 0 or bool(self.conn.trailing_data[0])
        if idle and on_its_way and not self.transport.is_closing():
            self._stopping = True
            self._cancel_head_timer()
            self._head_timer = self.loop.call_later(DRAIN_HEAD_GRACE_S, self._head_late, self.cycle)
            return
        self._stopping = True
        super().shutdown()

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_late, self.cycle)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self, cycle_when_armed: object) -> None:
        """No new request began since the timer was armed: close the connection."""
        self._head_timer = None
        if self.cycle is cycle_when_armed and not self.transport.is_closing():
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """h11 refused the request (malformed, or a head over the limit): JSON, then close."""
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(BAD_REQUEST)).encode()),
            (b"connection", b"close"),
        ]
        try:
            for event in (
                h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                h11.Data(data=BAD_REQUEST),
                h11.EndOfMessage(),
            ):
                self.transport.write(self.conn.send(event) or b"")
        except h11.LocalProtocolError:  # h11 cannot answer in this state: just close
            pass
        self.transport.close()


def protocol_class(head_timeout_s: float = HEAD_TIMEOUT_S) -> type[CapgenH11Protocol]:
    """The protocol with `--head-timeout-s`: uvicorn builds one per connection from a class."""
    if head_timeout_s == HEAD_TIMEOUT_S:
        return CapgenH11Protocol
    return type(
        "CapgenH11Protocol", (CapgenH11Protocol,), {"head_timeout_s": float(head_timeout_s)}
    )

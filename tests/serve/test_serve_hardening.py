"""Issue 24 (Hardening III), findings 16-23: `capgen serve` against one client taking it down.

The real console script on a free loopback port where the finding is about
what a client sees; the batcher, the decoding hook and the middleware
in-process where the finding is about work the model thread does (a tiny
model decodes too fast to catch a batch mid-way over HTTP). Every wait is
bounded by serve_helpers.WAIT_S; nothing asserts a speed.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip(
    "fastapi",
    reason="the serve extra is not installed: pip install 'capgen[serve]' (make install adds it)",
)
pytest.importorskip("httpx", reason="httpx (dev extra) is not installed")

import httpx
from serve_helpers import (
    CONSOLE_SCRIPT,
    WAIT_S,
    Server,
    raw_request,
    read_response,
    start_server,
    until,
)
from tiny_model import MAX_LENGTH

from capgen.runtime.captioner import Captioner
from capgen.runtime.decoding import DecodingOptions, DecodingStopped, stop_when
from capgen.runtime.errors import InputError
from capgen.serve.batcher import DeadlinePassed, MicroBatcher
from capgen.serve.metrics import Metrics
from capgen.serve.middleware import ServiceMiddleware, ServiceState
from capgen.serve.settings import ServeSettings

PNG = {"Content-Type": "image/png"}


def _server(model: Path, home: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    mark = request.node.get_closest_marker("server_args")
    yield from start_server(model, home, *(mark.args if mark else ()))


@pytest.fixture()
def server(serve_model: Path, serve_home: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    """A fresh server per test; extra options from the test's `server_args` mark."""
    yield from _server(serve_model, serve_home, request)


def run_serve(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CONSOLE_SCRIPT), "serve", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CAPGEN_HOME": str(home)},
    )


def _json_error(response: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, json.loads(body)


@pytest.fixture(scope="module")
def shared_server(serve_model: Path, serve_home: Path) -> Iterator[Server]:
    """One server (`--max-beam 4`) for the tests that neither stop it nor count on its totals."""
    yield from start_server(serve_model, serve_home, "--max-beam", "4")


# --- 16: options bounded by the model, work accounted by cost, abandoned work cancelled ---------


def test_options_are_bounded_by_the_model_and_max_beam(
    shared_server: Server, images: dict[str, bytes]
) -> None:
    with shared_server.client() as client:  # --max-beam 4
        longer = client.post(
            f"/v1/captions?max_length={MAX_LENGTH + 1}", content=images["red"], headers=PNG
        )
        wider = client.post("/v1/captions?beam_size=5", content=images["red"], headers=PNG)
        at_the_bounds = client.post(
            f"/v1/captions?max_length={MAX_LENGTH}&beam_size=4", content=images["red"], headers=PNG
        )
        summary = client.get("/v1/model").json()
    assert (longer.status_code, longer.json()["code"]) == (422, "bad_option")
    assert (
        f"from 1 to {MAX_LENGTH} (this model's max_length), got {MAX_LENGTH + 1}"
        in longer.json()["message"]
    )
    assert (wider.status_code, wider.json()["code"]) == (422, "bad_option")
    assert "from 1 to 4 (this server's --max-beam), got 5" in wider.json()["message"]
    assert at_the_bounds.status_code == 200, at_the_bounds.text
    assert summary["batching"]["max_beam"] == 4


@pytest.mark.server_args("--max-wait-ms", "10000", "--max-queue", "4", "--max-beam", "12")
def test_the_queue_is_bounded_by_cost_not_by_images(
    server: Server, images: dict[str, bytes]
) -> None:
    """One image at beam 12 costs 4 default images (beam 3): the queue of 4 is then full."""
    answers: list[httpx.Response] = []

    def heavy() -> None:
        with server.client() as client:
            answers.append(
                client.post("/v1/captions?beam_size=12", content=images["red"], headers=PNG)
            )

    thread = threading.Thread(target=heavy)
    thread.start()
    server.wait_for_metric("capgen_queue_depth", 1)
    two_heavy = [("f", (f"{i}.png", images["red"], "image/png")) for i in range(2)]
    with server.client() as client:
        light = client.post("/v1/captions", content=images["green"], headers=PNG)
        too_much = client.post("/v1/captions?beam_size=12", files=two_heavy)
    assert (light.status_code, light.json()["code"]) == (503, "queue_full"), light.text
    assert int(light.headers["retry-after"]) >= 1
    assert (too_much.status_code, too_much.json()["code"]) == (422, "bad_option")
    assert "more than this server queues (--max-queue 4)" in too_much.json()["message"]
    assert server.terminate() == 0  # the drain runs the queued image
    thread.join(timeout=WAIT_S)
    assert answers[0].status_code == 200


def _batcher(runner: Callable[..., list[Any]], **kwargs: Any) -> MicroBatcher:
    settings: dict[str, Any] = {"max_batch": 8, "max_wait_s": 0.0, "max_queue": 64, **kwargs}
    return MicroBatcher(runner, metrics=Metrics(), **settings)


def _stoppable_runner(
    started: threading.Event, stopped: threading.Event
) -> Callable[..., list[Any]]:
    """A batch that 'decodes' until told to stop (at most WAIT_S), like the decoder's loop."""

    def run(
        images: list[Any], options: DecodingOptions, should_stop: Callable[[], bool]
    ) -> list[Any]:
        started.set()
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            if should_stop():
                stopped.set()
                raise DecodingStopped("stopped")
            time.sleep(0.005)
        return [None] * len(images)

    return run


def test_a_running_batch_stops_once_every_request_of_it_left() -> None:
    started, stopped = threading.Event(), threading.Event()

    async def scenario() -> None:
        batcher = _batcher(_stoppable_runner(started, stopped))
        batcher.start()
        futures = batcher.submit(["a", "b"], DecodingOptions())
        await asyncio.to_thread(started.wait, WAIT_S)
        futures[0].cancel()  # one client left: the other still waits, the batch goes on
        await asyncio.sleep(0.05)
        assert not stopped.is_set()
        futures[1].cancel()  # the last one left: the batch stops between two steps
        assert await asyncio.to_thread(stopped.wait, WAIT_S)
        await batcher.close()

    asyncio.run(scenario())
    assert started.is_set() and stopped.is_set()


def test_closing_the_batcher_stops_the_running_batch() -> None:
    """SIGTERM's shutdown does not wait for work whose answers nobody can take any more."""
    started, stopped = threading.Event(), threading.Event()

    async def scenario() -> None:
        batcher = _batcher(_stoppable_runner(started, stopped))
        batcher.start()
        batcher.submit(["a"], DecodingOptions())
        await asyncio.to_thread(started.wait, WAIT_S)
        await asyncio.wait_for(batcher.close(), WAIT_S)

    asyncio.run(scenario())
    assert stopped.is_set()


def test_the_decoding_hook_stops_the_search_and_changes_nothing_else(
    serve_model: Path, images: dict[str, bytes]
) -> None:
    from capgen.serve.app import Service

    captioner = Captioner(serve_model, threads=1)
    plain = captioner.caption_batch([images["red"]], beam_size=2)
    calls: list[int] = []

    def never() -> bool:
        calls.append(1)
        return False

    with stop_when(never):
        watched = captioner.caption_batch([images["red"]], beam_size=2)
    assert calls and [r.tokens for r in watched] == [r.tokens for r in plain]  # type: ignore[union-attr]
    settings = ServeSettings(model=serve_model)
    service = Service(lambda: captioner, settings, ServiceState(None, 1 << 20, Metrics()))
    service.captioner = captioner
    with pytest.raises(DecodingStopped):
        service.run_batch([images["red"]], DecodingOptions(), lambda: True)


# --- 22: Retry-After from the measured wait; work past its deadline is not captioned ------------


def test_retry_after_is_the_measured_queue_wait() -> None:
    async def scenario() -> int:
        batcher = _batcher(lambda images, options, stop: [None] * len(images), max_queue=4)
        batcher.observe_batch(seconds=5.0, cost=1.0)  # 5 s per default image, as measured
        batcher.submit(["a", "b", "c"], DecodingOptions())  # not started: no collector task
        with pytest.raises(Exception) as refused:
            batcher.submit(["d", "e"], DecodingOptions())
        assert refused.value.status == 503  # type: ignore[attr-defined]
        return int(refused.value.headers["Retry-After"])  # type: ignore[attr-defined]

    assert asyncio.run(scenario()) == 15


def test_a_job_past_its_deadline_is_not_captioned() -> None:
    ran: list[list[Any]] = []

    async def scenario() -> BaseException | None:
        batcher = _batcher(lambda images, options, stop: ran.append(images) or [None] * len(images))
        batcher.start()
        (future,) = batcher.submit(["late"], DecodingOptions(), deadline=time.perf_counter() - 1)
        await asyncio.wait([future], timeout=WAIT_S)
        await batcher.close()
        return future.exception()

    assert isinstance(asyncio.run(scenario()), DeadlinePassed)
    assert ran == []


# --- 20: the contract: forms, 405, errors below the app ----------------------------------------


def _form(parts: list[bytes], boundary: str = "XyZ") -> tuple[bytes, dict[str, str]]:
    body = b"".join(b"--" + boundary.encode() + b"\r\n" + part + b"\r\n" for part in parts)
    body += b"--" + boundary.encode() + b"--\r\n"
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def _file_part(name: str, data: bytes) -> bytes:
    return (
        f'Content-Disposition: form-data; name="f"; filename="{name}"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode() + data


@pytest.mark.parametrize("count", [65, 66, 10_000])
def test_too_many_files_is_422_too_many_images_with_the_real_limit(
    shared_server: Server, images: dict[str, bytes], count: int
) -> None:
    body, headers = _form([_file_part(f"{i}.png", b"x") for i in range(count)])
    with shared_server.client() as client:
        answer = client.post("/v1/captions", content=body, headers=headers)
    assert answer.status_code == 422, answer.text
    assert answer.json() == {
        "code": "too_many_images",
        "message": "more than 64 images in one request",
    }


@pytest.mark.parametrize(
    "parts",
    [
        [b"Content-Disposition: form-data\r\n\r\nno name"],  # a nameless part
        [f'Content-Disposition: form-data; name="n{i}"\r\n\r\n1'.encode() for i in range(10_000)],
    ],
    ids=["nameless", "10000-fields"],
)
def test_a_form_starlette_refuses_is_422_bad_form(
    shared_server: Server, parts: list[bytes]
) -> None:
    body, headers = _form(parts)
    with shared_server.client() as client:
        answer = client.post("/v1/captions", content=body, headers=headers)
    assert (answer.status_code, answer.json()["code"]) == (422, "bad_form"), answer.text
    assert answer.json()["message"].startswith("malformed multipart form: ")


def test_a_broken_form_is_422_bad_form(shared_server: Server) -> None:
    with shared_server.client() as client:
        answer = client.post(
            "/v1/captions",
            content=b"this is not a multipart body",
            headers={"Content-Type": "multipart/form-data"},  # no boundary
        )
    assert (answer.status_code, answer.json()["code"]) == (422, "bad_form"), answer.text


def test_405_names_the_allowed_methods(shared_server: Server) -> None:
    with shared_server.client() as client:
        answer = client.get("/v1/captions")
    assert answer.status_code == 405
    assert answer.json()["code"] == "method_not_allowed"
    assert "POST" in answer.headers["allow"]


def test_a_request_uvicorn_refuses_gets_the_json_error_body(shared_server: Server) -> None:
    sock = raw_request(shared_server, "GET / HTTP/1.1\r\nHost: x\r\nBad Header Line")
    status, headers, body = _json_error(read_response(sock))
    sock.close()
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert body["code"] == "bad_http_request"


def _asgi_call(app: Any, method: str = "GET", path: str = "/v1/model") -> httpx.Response:
    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            return await client.request(method, path)

    return asyncio.run(call())


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), 507, "insufficient_storage"),
        (RuntimeError("a bug"), 500, "internal_error"),
    ],
)
def test_an_exception_below_the_handlers_is_the_json_error_body(
    error: Exception, status: int, code: str
) -> None:
    async def failing(scope: Any, receive: Any, send: Any) -> None:
        raise error

    metrics = Metrics()
    app = ServiceMiddleware(failing, ServiceState(None, 1 << 20, metrics))
    answer = _asgi_call(app)
    assert answer.status_code == status
    assert answer.headers["content-type"] == "application/json"
    assert answer.json()["code"] == code


# --- 19: a client that leaves mid-upload is a 499, in one line ----------------------------------


def test_a_client_leaving_mid_upload_is_one_499_line_not_a_500(shared_server: Server) -> None:
    before = len(shared_server.lines)
    for _ in range(3):
        sock = raw_request(
            shared_server,
            "POST /v1/captions HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            "Content-Length: 1000000",
            b"\x89PNG" + b"\0" * 4000,
        )
        time.sleep(0.05)
        sock.close()
    until(
        lambda: (
            shared_server.metric("capgen_requests_total", route="/v1/captions", status="499") >= 3
        ),
        "three 499s",
    )
    assert shared_server.metric("capgen_requests_total", route="/v1/captions", status="500") == 0
    new = shared_server.lines[before:]
    assert not any("Traceback" in line or "never retrieved" in line for line in new), new
    assert sum('"status": 499' in line for line in new) == 3, new


@pytest.mark.server_args("--max-wait-ms", "10000", "--timeout-s", "0.3")
def test_a_504_leaves_no_unretrieved_future(server: Server, images: dict[str, bytes]) -> None:
    with server.client() as client:
        answers = [
            client.post("/v1/captions", content=images["red"], headers=PNG) for _ in range(3)
        ]
    assert [a.status_code for a in answers] == [504] * 3
    server.wait_for_metric("capgen_skipped_images_total", 3)
    assert server.terminate() == 0
    assert not any("never retrieved" in line or "Traceback" in line for line in server.lines)


# --- 23: no public bind without a key ------------------------------------------------------------


def test_a_public_host_without_a_key_is_refused_in_one_line(
    serve_model: Path, tmp_path: Path
) -> None:
    done = run_serve("--model", str(serve_model), "--host", "0.0.0.0", home=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert "--insecure-public" in done.stderr and "--api-key" in done.stderr
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        ServeSettings(host=host)  # loopback: no key needed
    ServeSettings(host="0.0.0.0", api_key="k")
    ServeSettings(host="0.0.0.0", insecure_public=True)
    with pytest.raises(Exception, match="--insecure-public"):
        ServeSettings(host="example.org")


@pytest.mark.server_args("--api-key", "k")
def test_metrics_model_and_readyz_details_need_the_key(server: Server) -> None:
    with server.client() as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/v1/model").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer k"}).status_code == 200
        # The API's description stays public (a browser opening /docs sends no key).
        docs = client.get("/docs")
        assert docs.status_code == 200 and "swagger" in docs.text.lower()
        assets = [part.split('"')[0] for part in docs.text.split('src="')[1:]]
        assert assets and all(client.get(a).status_code == 200 for a in assets)


def test_readyz_hides_the_load_error_from_callers_without_the_key(tmp_path: Path) -> None:
    from capgen.serve.app import create_app

    def broken() -> Captioner:
        raise RuntimeError(f"cannot read {tmp_path}/secret/model")

    app = create_app(broken, ServeSettings(api_key="k"))

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        service = app.state.service
        await service.load()  # fails: the factory raises
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            open_answer = await client.get("/readyz")
            keyed = await client.get("/readyz", headers={"Authorization": "Bearer k"})
        service.batcher._executor.shutdown(wait=True)
        return open_answer, keyed

    open_answer, keyed = asyncio.run(scenario())
    assert open_answer.status_code == keyed.status_code == 503
    assert str(tmp_path) not in open_answer.text
    assert open_answer.json()["code"] == "model_failed"
    assert str(tmp_path) in keyed.text


# --- 17/18: connections and memory ----------------------------------------------------------------


def test_a_huge_request_head_is_refused_with_json(shared_server: Server) -> None:
    """A head over h11's 16 KiB limit: 400 with the JSON body, never an answer from the app."""
    sock = raw_request(shared_server, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + "a" * 200_000)
    try:
        response = read_response(sock)
    except ConnectionResetError:  # the server closed with our bytes unread: refused all the same
        response = b""
    finally:
        sock.close()
    assert b" 200 " not in response[:20], response[:200]
    if response:
        status, headers, body = _json_error(response)
        assert status == 400 and body["code"] == "bad_http_request"
        assert headers["content-type"] == "application/json"


@pytest.mark.server_args("--head-timeout-s", "1")
def test_a_request_head_that_never_ends_is_closed(server: Server) -> None:
    """Slowloris: half a head, then silence; the server closes it after --head-timeout-s.

    The default (10 s) is checked below without waiting it out; here the same
    timer runs with 1 s, set through the documented option.
    """
    sock = socket.create_connection(server.address, timeout=WAIT_S)
    sent = time.monotonic()
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    try:
        assert sock.recv(65536) == b""  # closed by the server, not by our timeout
        assert time.monotonic() - sent >= 0.9  # by the head timer, not at once
    finally:
        sock.close()


def test_the_head_timeout_is_10_s_unless_set_and_must_be_positive() -> None:
    from capgen.serve.protocol import HEAD_TIMEOUT_S, CapgenH11Protocol, protocol_class

    assert ServeSettings().head_timeout_s == HEAD_TIMEOUT_S == 10.0  # what docs/serve.md says
    assert protocol_class(ServeSettings().head_timeout_s) is CapgenH11Protocol
    assert CapgenH11Protocol.head_timeout_s == 10.0
    short = protocol_class(ServeSettings(head_timeout_s=1.5).head_timeout_s)
    assert issubclass(short, CapgenH11Protocol) and short.head_timeout_s == 1.5
    for bad in (0, -1, float("nan")):
        with pytest.raises(InputError, match="--head-timeout-s must be a number more than 0"):
            ServeSettings(head_timeout_s=bad)


@pytest.mark.server_args("--max-uploads", "1")
def test_bodies_read_at_once_are_bounded(server: Server, images: dict[str, bytes]) -> None:
    slow = raw_request(
        server,
        "POST /v1/captions HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 100000",
        b"\x89PNG",
    )
    try:
        server.wait_for_metric("capgen_uploads_in_progress", 1)
        with server.client() as client:
            busy = client.post("/v1/captions", content=images["red"], headers=PNG)
        assert (busy.status_code, busy.json()["code"]) == (503, "busy"), busy.text
        assert int(busy.headers["retry-after"]) >= 1
    finally:
        slow.close()
    server.wait_for_metric("capgen_uploads_in_progress", 0)
    with server.client() as client:
        assert client.post("/v1/captions", content=images["red"], headers=PNG).status_code == 200


# --- docs/serve.md's error table is what the code returns -----------------------------------


def test_the_docs_error_table_matches_the_codes_the_service_returns() -> None:
    import re

    root = Path(__file__).resolve().parents[2]
    page = (root / "docs" / "serve.md").read_text()
    section = page[page.index("## Batching and refusals") :]
    section = section[: section.index("\n## ", 10)]
    rows = [line for line in section.splitlines() if re.match(r"\| [0-9]{3}", line)]
    documented = {code for row in rows for code in re.findall(r"`([a-z_]+)`", row.split("|")[2])}
    source = "\n".join(path.read_text() for path in (root / "serve").glob("*.py"))
    returned = set(re.findall(r'ApiError\(\s*[0-9]{3},\s*"([a-z_]+)"', source))
    returned |= set(re.findall(r'service_unavailable\(\s*"([a-z_]+)"', source))
    returned |= set(re.findall(r'"code": "([a-z_]+)"', source))
    returned |= {"not_found", "method_not_allowed"}  # app.HTTP_CODES
    returned |= {"body_too_large"}  # middleware.BodyTooLarge
    assert documented == returned


# --- 21: a worker whose model fails to load leaves the rotation -------------------------------


def test_a_worker_whose_model_failed_leaves_and_a_lone_server_stays() -> None:
    import uvicorn

    from capgen.serve.server import DrainingServer

    class Failed:
        load_error = "ModelError: /srv/models/x: broken"
        state = ServiceState(None, 1, Metrics())

    def tick(server: DrainingServer) -> bool:
        asyncio.run(server.on_tick(1))
        return server.should_exit

    config = uvicorn.Config(app=None)  # type: ignore[arg-type]
    assert tick(DrainingServer(config, lambda: Failed(), exit_if_model_fails=True))  # type: ignore[arg-type,return-value]
    assert not tick(DrainingServer(config, lambda: Failed()))  # type: ignore[arg-type,return-value]

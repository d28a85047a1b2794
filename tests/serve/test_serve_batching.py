"""Micro-batching, the queue limit, clients that leave, and the timeout, on the real server.

Each server waits long for a batch to fill (--max-wait-ms 10000), so what
is queued stays queued until the test acts: nothing depends on speed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip(
    "fastapi",
    reason="the serve extra is not installed: pip install 'capgen[serve]' (make install adds it)",
)
pytest.importorskip("httpx", reason="httpx (dev extra) is not installed")

import httpx
from serve_helpers import Server, raw_request, start_server, until

PNG = {"Content-Type": "image/png"}


@pytest.fixture()
def patient_server(
    serve_model: Path, serve_home: Path, request: pytest.FixtureRequest
) -> Iterator[Server]:
    """A server whose batches wait long to fill; extra options from the test's `server_args` mark."""
    mark = request.node.get_closest_marker("server_args")
    args = list(mark.args) if mark else []
    yield from start_server(serve_model, serve_home, "--max-wait-ms", "10000", *args)


@pytest.mark.server_args("--max-batch", "4")
def test_concurrent_requests_form_one_batch_per_option_set(
    patient_server: Server, images: dict[str, bytes]
) -> None:
    """8 requests at once, 4 greedy and 4 beam 2, become exactly two batches of 4."""

    def post(index: int) -> dict[str, object]:
        beam = 1 if index % 2 else 2
        with patient_server.client() as client:
            answer = client.post(
                f"/v1/captions?beam_size={beam}", content=images["red"], headers=PNG
            )
        assert answer.status_code == 200, answer.text
        return {"beam": beam, **answer.json()["results"][0]}

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, range(8)))
    # two batches of 4 (the warm-up runs outside the batcher and is not counted)
    assert patient_server.metric("capgen_batch_size_count") == 2
    assert patient_server.metric("capgen_batch_size_sum") == 8
    assert patient_server.metric("capgen_batch_size_bucket", le="3.0") == 0
    for beam in (1, 2):  # each option set got its own captions, the same for every request
        assert len({a["caption"] for a in answers if a["beam"] == beam}) == 1


@pytest.mark.server_args("--max-batch", "8")
def test_eight_concurrent_requests_share_a_batch(
    patient_server: Server, images: dict[str, bytes]
) -> None:
    def post(_: int) -> int:
        with patient_server.client() as client:
            return client.post("/v1/captions", content=images["green"], headers=PNG).status_code

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(post, range(8))) == [200] * 8
    assert patient_server.metric("capgen_batch_size_bucket", le="6.0") == 0
    assert patient_server.metric("capgen_batch_size_sum") == 8


@pytest.mark.server_args("--max-queue", "2")
def test_a_full_queue_is_503_with_retry_after_and_sigterm_runs_what_waits(
    patient_server: Server, images: dict[str, bytes]
) -> None:
    first: list[httpx.Response] = []
    two = [
        ("f", ("a.png", images["red"], "image/png")),
        ("f", ("b.png", images["blue"], "image/png")),
    ]

    def waiting() -> None:
        with patient_server.client() as client:
            first.append(client.post("/v1/captions", files=two))

    thread = threading.Thread(target=waiting)
    thread.start()
    patient_server.wait_for_metric("capgen_queue_depth", 2)
    with patient_server.client() as client:
        full = client.post("/v1/captions", content=images["green"], headers=PNG)
        three = client.post(
            "/v1/captions", files=[*two, ("f", ("c.png", images["green"], "image/png"))]
        )
    assert full.status_code == 503 and full.json()["code"] == "queue_full"
    assert full.headers["retry-after"] == "1"
    assert (three.status_code, three.json()["code"]) == (422, "too_many_images")
    assert patient_server.terminate() == 0  # the drain runs the queued batch at once
    thread.join(timeout=60)
    assert first[0].status_code == 200 and len(first[0].json()["results"]) == 2


def test_a_client_that_leaves_while_queued_costs_nothing(
    patient_server: Server, images: dict[str, bytes]
) -> None:
    body = images["red"]
    sock = raw_request(
        patient_server,
        f"POST /v1/captions HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {len(body)}",
        body,
    )
    patient_server.wait_for_metric("capgen_queue_depth", 1)
    sock.close()
    patient_server.wait_for_metric("capgen_skipped_images_total", 1)
    assert patient_server.metric("capgen_queue_depth") == 0
    assert patient_server.metric("capgen_batch_size_count") == 0  # no batch ran for it
    until(lambda: any('"status": 499' in line for line in patient_server.lines), "the 499 log line")


@pytest.mark.server_args("--timeout-s", "0.2")
def test_work_past_the_timeout_is_504(patient_server: Server, images: dict[str, bytes]) -> None:
    with patient_server.client() as client:
        answer = client.post("/v1/captions", content=images["red"], headers=PNG)
    assert answer.status_code == 504
    assert answer.json() == {
        "code": "timeout",
        "message": "the request was not done within --timeout-s 0.2 s",
    }
    patient_server.wait_for_metric("capgen_skipped_images_total", 1)  # its image left the queue
    assert patient_server.metric("capgen_queue_depth") == 0

"""Every endpoint of the real `capgen serve`, and every refusal of a bad request.

One server (the console script in a subprocess, tiny model, free loopback
port) answers all the tests of this module.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip(
    "fastapi",
    reason="the serve extra is not installed: pip install 'capgen[serve]' (make install adds it)",
)
pytest.importorskip("httpx", reason="httpx (dev extra) is not installed")

from serve_helpers import CONSOLE_SCRIPT, Server, raw_request, read_response, start_server, until

PNG = {"Content-Type": "image/png"}
SUCCESS_KEYS = {"path", "caption", "log_probability", "finished", "tokens", "timings"}


@pytest.fixture(scope="module")
def server(serve_model: Path, serve_home: Path) -> Iterator[Server]:
    yield from start_server(serve_model, serve_home, "--max-body-mb", "1")


def cli_json(model: Path, home: Path, path: Path, *args: str) -> dict[str, object]:
    done = subprocess.run(
        [str(CONSOLE_SCRIPT), "caption", "--model", str(model), "--json", str(path), *args],
        capture_output=True, text=True, timeout=120, env={"CAPGEN_HOME": str(home), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    return json.loads(done.stdout.splitlines()[0])


def test_health_ready_and_model_summary(server: Server) -> None:
    with server.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").json() == {"ready": True}
        model = client.get("/v1/model").json()
    assert model["name"] == "tiny" and model["vocabulary_size"] == 13
    assert model["int8_available"] is False and model["encoder"]["height"] == 32
    assert {"capgen", "onnxruntime", "model_format"} <= set(model["versions"])


def test_raw_body_answer_has_the_fields_of_caption_json(
    server: Server, serve_model: Path, serve_home: Path, images: dict[str, bytes], tmp_path: Path
) -> None:
    photo = tmp_path / "red.png"
    photo.write_bytes(images["red"])
    expected = cli_json(serve_model, serve_home, photo, "--beam-size", "2", "--n-best", "2")
    with server.client() as client:
        answer = client.post(
            "/v1/captions?beam_size=2&n_best=2",
            content=images["red"],
            headers={"Content-Type": "image/png"},
        )
    assert answer.status_code == 200, answer.text
    (record,) = answer.json()["results"]
    assert set(record) == set(expected) == SUCCESS_KEYS | {"alternatives"}
    for key in ("caption", "tokens", "log_probability", "finished", "alternatives"):
        assert record[key] == expected[key], key
    assert set(record["timings"]) == set(expected["timings"])  # type: ignore[arg-type]


def test_multipart_images_in_order_and_a_bad_one_fails_alone(
    server: Server, images: dict[str, bytes]
) -> None:
    files = [
        ("files", ("blue.png", images["blue"], "image/png")),
        ("files", ("page.png", images["html"], "image/png")),
        ("files", ("green.png", images["green"], "image/png")),
    ]
    with server.client() as client:
        several = client.post("/v1/captions", files=files, data={"beam_size": "1"}).json()[
            "results"
        ]
        alone = [
            client.post("/v1/captions?beam_size=1", content=images[name], headers={"Content-Type": "image/png"}).json()["results"][0]
            for name in ("blue", "green")
        ]  # fmt: skip
    assert [r["path"] for r in several] == ["blue.png", "page.png", "green.png"]
    assert several[1] == {"path": "page.png", "error": several[1]["error"]}
    assert "not an image" in several[1]["error"]
    assert [several[0]["caption"], several[2]["caption"]] == [a["caption"] for a in alone]


def test_not_an_image_is_422_with_the_cli_reason(
    server: Server, serve_model: Path, serve_home: Path, images: dict[str, bytes], tmp_path: Path
) -> None:
    page = tmp_path / "page.png"
    page.write_bytes(images["html"])
    done = subprocess.run(
        [str(CONSOLE_SCRIPT), "caption", "--model", str(serve_model), str(page)],
        capture_output=True, text=True, timeout=120, env={"CAPGEN_HOME": str(serve_home), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    cli_reason = done.stderr.strip().rsplit(f"{page}: ", 1)[1]
    with server.client() as client:
        answer = client.post(
            "/v1/captions", content=images["html"], headers={"Content-Type": "image/png"}
        )
    assert answer.status_code == 422
    assert answer.json() == {"code": "bad_image", "message": cli_reason}


@pytest.mark.parametrize(
    ("query", "form", "code", "fragment"),
    [
        (
            "beam_size=abc",
            {},
            "bad_option",
            "beam_size must be an integer from 1 to 100, got 'abc'",
        ),
        ("beam_size=0", {}, "bad_option", "beam_size must be an integer from 1 to 100"),
        ("", {"n_best": "4"}, "bad_option", "n_best must be between 1 and beam_size (3)"),
        ("max_length=5000", {}, "bad_option", "max_length must be an integer from 1 to"),
        ("beam_size=1", {"beam_size": "2"}, "bad_option", "beam_size given twice"),
        ("url=http://127.0.0.1/x.jpg", {}, "unknown_option", "unknown option 'url'"),
        ("", {"colour": "red"}, "unknown_option", "unknown option 'colour'"),
    ],
)
def test_bad_options_are_422(
    server: Server,
    images: dict[str, bytes],
    query: str,
    form: dict[str, str],
    code: str,
    fragment: str,
) -> None:
    with server.client() as client:
        answer = client.post(
            f"/v1/captions?{query}",
            files={"files": ("a.png", images["red"], "image/png")},
            data=form,
        )
    assert answer.status_code == 422, answer.text
    assert answer.json()["code"] == code
    assert fragment in answer.json()["message"]


def test_wrong_kinds_of_body(server: Server, images: dict[str, bytes]) -> None:
    with server.client() as client:
        text = client.post(
            "/v1/captions",
            content=b"http://127.0.0.1/a.jpg",
            headers={"Content-Type": "text/plain"},
        )
        empty = client.post("/v1/captions", content=b"", headers={"Content-Type": "image/jpeg"})
        no_file = client.post("/v1/captions", files={"beam_size": (None, "1")})
        missing = client.get("/v1/nothing")
    assert (text.status_code, text.json()["code"]) == (415, "unsupported_media_type")
    assert (empty.status_code, empty.json()["code"]) == (422, "no_image")
    assert (no_file.status_code, no_file.json()["code"]) == (422, "no_image")
    assert (missing.status_code, missing.json()["code"]) == (404, "not_found")
    for answer in (text, empty, no_file, missing):
        assert "\n" not in answer.json()["message"]


def test_declared_body_over_the_limit_is_413_before_reading(server: Server) -> None:
    sock = raw_request(
        server,
        "POST /v1/captions HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        f"Content-Length: {2 * 1024 * 1024}\r\nConnection: close",
    )  # not a byte of the body is sent: the answer must not wait for it
    with sock:
        answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"code":"body_too_large"' in answer.replace(b" ", b"")


def test_streamed_body_is_refused_once_past_the_limit(server: Server) -> None:
    """A chunked body with no length: the 413 arrives while we are still sending."""
    sock = raw_request(
        server,
        "POST /v1/captions HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close",
    )
    chunk = b"\0" * 65536
    sent = 0
    with sock:
        sock.settimeout(5)
        try:
            while sent < 64 * 1024 * 1024:  # far past the 1 MB limit; the server stops us first
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except OSError:  # the server answered and closed while we were sending
            pass
        sock.settimeout(60)
        answer = read_response(sock)
    assert sent < 64 * 1024 * 1024
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_request_id_is_echoed_and_logged_once(server: Server, images: dict[str, bytes]) -> None:
    with server.client() as client:
        answer = client.post(
            "/v1/captions",
            files=[("f", ("a.png", images["red"], "image/png")), ("f", ("b.png", images["green"], "image/png"))],
            headers={"X-Request-ID": "test-id-42"},
        )  # fmt: skip
        generated = client.get("/healthz").headers["x-request-id"]
    assert answer.headers["x-request-id"] == "test-id-42"
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    # The lines reach the test through a reader thread: wait for both requests' lines
    # (the later request's too, so a duplicate of the first would have arrived as well).
    until(
        lambda: all(any(f'"{rid}"' in line for line in server.lines) for rid in ("test-id-42", generated)),
        "both requests' log lines",
    )  # fmt: skip
    logged = [json.loads(line) for line in server.lines if '"test-id-42"' in line]
    assert len(logged) == 1
    assert logged[0]["images"] == 2 and logged[0]["status"] == 200 and logged[0]["ms"] > 0


def test_metrics_page_and_openapi(server: Server) -> None:
    with server.client() as client:
        metrics = client.get("/metrics").text
        page = client.get("/")
        api = client.get("/openapi.json").json()
    for name in (
        "capgen_requests_total", "capgen_errors_total", "capgen_batch_size_bucket", "capgen_queue_depth",
        'capgen_stage_seconds_count{stage="queue"}', 'capgen_stage_seconds_count{stage="preprocess"}',
        'capgen_stage_seconds_count{stage="encode"}', 'capgen_stage_seconds_count{stage="decode"}',
    ):  # fmt: skip
        assert name in metrics, name
    assert 'capgen_errors_total{code="bad_option",status="422"}' in metrics
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert (
        "<script src" not in page.text
        and "http://" not in page.text
        and "https://" not in page.text
    )
    assert 'type="file"' in page.text
    body = api["paths"]["/v1/captions"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "image/*"} <= set(body)
    assert {"/v1/model", "/healthz", "/readyz", "/metrics", "/"} <= set(api["paths"])


def test_cors_is_off_by_default(server: Server, images: dict[str, bytes]) -> None:
    origin = {"Origin": "http://elsewhere.test"}
    with server.client() as client:
        answer = client.post("/v1/captions", content=images["red"], headers={**PNG, **origin})
        preflight = client.options(
            "/v1/captions", headers={**origin, "Access-Control-Request-Method": "POST"}
        )
    assert answer.status_code == 200
    assert "access-control-allow-origin" not in answer.headers
    assert "access-control-allow-origin" not in preflight.headers

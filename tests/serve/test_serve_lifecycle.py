"""The drain on SIGTERM, the API key, and `capgen serve`'s one-line errors, on the console script."""

from __future__ import annotations

import os
import subprocess
import sys
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
ORIGIN = "http://app.test:8080"


@pytest.fixture(scope="module")
def keyed_server(serve_model: Path, serve_home: Path) -> Iterator[Server]:
    """`--api-key k --cors-origin ORIGIN`, on the default host: the tests using it only read it."""
    yield from start_server(serve_model, serve_home, "--cors-origin", ORIGIN, "--api-key", "k")


def test_sigterm_drains_then_exits_0(
    serve_model: Path, serve_home: Path, images: dict[str, bytes]
) -> None:
    """A request in flight (its body half sent) finishes; meanwhile readyz is 503 and new work 503."""
    for server in start_server(serve_model, serve_home):
        body = images["red"]
        half = len(body) // 2
        sock = raw_request(
            server,
            "POST /v1/captions HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close",
            body[:half],
        )
        server.wait_for_metric("capgen_in_flight_requests", 1)
        server.process.send_signal(15)
        with server.client() as client:
            until(lambda: client.get("/readyz").status_code == 503, "/readyz to turn 503")
            assert client.get("/readyz").json()["code"] == "draining"
            refused = client.post("/v1/captions", content=body, headers=PNG)
            assert client.get("/healthz").status_code == 200
        assert (refused.status_code, refused.json()["code"]) == (503, "draining")
        assert "retry-after" in refused.headers
        with sock:
            sock.sendall(body[half:])
            answer = read_response(sock)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        assert b'"caption"' in answer
        assert server.process.wait(timeout=60) == 0
        assert any("capgen: draining" in line for line in server.lines)
        assert not any("Traceback" in line for line in server.lines), server.lines


def test_api_key_from_the_environment_is_required(
    serve_model: Path, serve_home: Path, images: dict[str, bytes]
) -> None:
    for server in start_server(serve_model, serve_home, env={"CAPGEN_API_KEY": "s3cret-key"}):
        with server.client() as client:
            none = client.post("/v1/captions", content=images["red"], headers=PNG)
            wrong = client.post(
                "/v1/captions",
                content=images["red"],
                headers={**PNG, "Authorization": "Bearer s3cret-kez"},
            )
            basic = client.get("/v1/model", headers={"Authorization": "Basic s3cret-key"})
            metrics = client.get("/metrics")
            right = client.post(
                "/v1/captions",
                content=images["red"],
                headers={**PNG, "Authorization": "Bearer s3cret-key"},
            )
            model = client.get("/v1/model", headers={"Authorization": "Bearer s3cret-key"})
            open_paths = [
                client.get(path).status_code
                for path in ("/healthz", "/readyz", "/", "/openapi.json")
            ]
        for refused in (none, wrong, basic, metrics):
            assert refused.status_code == 401, refused.text
            assert refused.json()["code"] == "unauthorized"
            assert refused.headers["www-authenticate"] == "Bearer"
        assert right.status_code == 200 and model.status_code == 200
        assert open_paths == [200, 200, 200, 200]
        assert not any("s3cret" in line for line in server.lines)  # the key is never logged


def test_api_key_option_and_loopback_default(keyed_server: Server) -> None:
    server = keyed_server  # started with --api-key k and no --host
    assert server.address[0] == "127.0.0.1"
    with server.client() as client:
        assert client.get("/v1/model").status_code == 401
        assert client.get("/v1/model", headers={"Authorization": "Bearer k"}).status_code == 200


def run_serve(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CONSOLE_SCRIPT), "serve", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CAPGEN_HOME": str(home)},
    )


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["--max-batch", "0"], 2, "--max-batch must be an integer from 1 to 64"),
        (["--max-batch", "65"], 2, "--max-batch must be an integer from 1 to 64"),
        (["--max-queue", "0"], 2, "--max-queue must be an integer from 1"),
        (["--max-body-mb", "0"], 2, "--max-body-mb must be a number more than 0"),
        (["--timeout-s", "nan"], 2, "--timeout-s must be a number more than 0"),
        (["--max-wait-ms", "-1"], 2, "--max-wait-ms must be a number from 0"),
        (["--port", "70000"], 2, "--port must be an integer from 0 to 65535"),
        (["--workers", "100000"], 2, "--workers must be an integer from 1 to"),
        (["--threads", "100000"], 2, "--threads must be an integer from 1"),
        (["--api-key", "has space"], 2, "--api-key must be printable ASCII"),
        (["--max-batch", "x"], 2, "(see --help)"),
        (["--model", "/nonexistent/model"], 3, "/nonexistent/model"),
    ],
)
def test_bad_options_are_one_line_errors(
    args: list[str], code: int, fragment: str, tmp_path: Path
) -> None:
    done = run_serve(*args, home=tmp_path)
    assert done.returncode == code, done.stderr
    assert done.stderr.startswith("capgen: error: ") and done.stderr.count("\n") == 1, done.stderr
    assert fragment in done.stderr


def test_a_port_in_use_is_one_line(keyed_server: Server, serve_model: Path, tmp_path: Path) -> None:
    done = run_serve(
        "--model", str(serve_model), "--port", str(keyed_server.address[1]), home=tmp_path
    )
    assert done.returncode == 2, done.stderr
    assert "capgen: error: cannot listen on 127.0.0.1:" in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr


def test_without_the_serve_extra_it_says_what_to_install(tmp_path: Path) -> None:
    """fastapi hidden from the interpreter (as on a runtime-only install): one line, exit 2."""
    program = (
        "import sys; sys.modules['fastapi'] = None; sys.argv = ['capgen', 'serve']; "
        "from capgen.cli import main; main()"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=120,
        env={**os.environ, "CAPGEN_HOME": str(tmp_path)},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        "capgen: error: capgen serve needs the serve extra (fastapi missing): pip install 'capgen[serve]'\n"
    )


def _cores() -> int:
    return len(os.sched_getaffinity(0))


def test_workers_times_threads_may_not_exceed_the_cores(tmp_path: Path) -> None:
    cores = _cores()
    done = run_serve("--workers", str(cores), "--threads", "2", home=tmp_path)
    assert done.returncode == 2, done.stderr
    assert f"--threads must be an integer from 1 to {max(1, cores // cores)}" in done.stderr


def test_workers_are_processes_with_their_own_model_and_each_drains(
    serve_model: Path, serve_home: Path, images: dict[str, bytes]
) -> None:
    if _cores() < 2:
        pytest.skip("--workers 2 needs 2 cores (workers x threads <= cores)")
    import psutil

    for server in start_server(serve_model, serve_home, "--workers", "2"):
        workers = [
            child
            for child in psutil.Process(server.process.pid).children()
            if "spawn_main" in " ".join(child.cmdline())
        ]
        assert len(workers) == 2
        # start_server saw one worker ready; a worker listens once its model is loaded, and
        # says so: wait for both (a worker still loading when SIGTERM comes has nothing to drain).
        until(
            lambda lines=server.lines: sum(line.endswith(" ready") for line in lines) == 2,
            "both workers to say they are ready",
        )
        with server.client() as client:
            answers = [
                client.post("/v1/captions", content=images["red"], headers=PNG) for _ in range(6)
            ]
        assert {a.status_code for a in answers} == {200}
        assert server.terminate() == 0
        # the lines are read by a thread: the last may come just after the exit
        until(
            lambda lines=server.lines: sum("capgen: draining" in line for line in lines) == 2,
            "both workers to drain",
        )
        assert not any("Traceback" in line for line in server.lines), server.lines


def test_int8_is_served_when_the_model_has_it_and_refused_when_not(
    serve_model: Path, serve_home: Path, tmp_path: Path
) -> None:
    from tiny_model import write_tiny_model

    missing = run_serve("--model", str(serve_model), "--int8", home=tmp_path)
    assert missing.returncode == 3, missing.stderr
    assert "this model has no INT8 encoder" in missing.stderr and missing.stderr.count("\n") == 1
    with_int8 = write_tiny_model(tmp_path / "int8-model", with_int8=True).folder
    for server in start_server(with_int8, serve_home, "--int8"):
        with server.client() as client:
            model = client.get("/v1/model").json()
        assert model["int8_available"] is True and model["int8_in_use"] is True


def test_cors_only_for_the_origins_asked_for(
    keyed_server: Server, images: dict[str, bytes]
) -> None:
    server = keyed_server  # --cors-origin ORIGIN --api-key k
    ask = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    with server.client() as client:
        allowed = client.options("/v1/captions", headers={"Origin": ORIGIN, **ask})
        other = client.options("/v1/captions", headers={"Origin": "http://evil.test", **ask})
        posted = client.post(
            "/v1/captions",
            content=images["red"],
            headers={**PNG, "Origin": ORIGIN, "Authorization": "Bearer k"},
        )
    assert allowed.status_code == 200  # a preflight carries no key, and needs none
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "access-control-allow-origin" not in other.headers
    assert posted.status_code == 200
    assert posted.headers["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in posted.headers["access-control-expose-headers"].lower()


def test_a_bad_cors_origin_is_one_line(tmp_path: Path) -> None:
    done = run_serve("--cors-origin", "*", home=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "--cors-origin must be an origin" in done.stderr

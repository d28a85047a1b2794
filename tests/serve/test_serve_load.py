"""benchmarks/serve_load.py --quick drives real `capgen serve` processes end to end.

The load generator starts the servers itself (loopback, a free port each);
here it runs on the tiny model and a few generated photos without the
TensorFlow baseline, and the test checks what it wrote: every server and
level, requests answered and none failed, the HTTP-overhead and soak
sections with RSS samples, quietness per section, and each goal reported.
No timing is asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip(
    "fastapi",
    reason="the serve extra is not installed: pip install 'capgen[serve]' (make install adds it)",
)
pytest.importorskip("httpx", reason="httpx (dev extra) is not installed")
pytest.importorskip("psutil", reason="psutil (bench extra) is not installed")

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "serve_load.py"
WAIT_S = 600  # an upper bound so a hang fails instead of blocking CI, not an expectation


@pytest.mark.slow
def test_quick_load_run_writes_every_section(
    serve_model: Path, serve_home: Path, images: dict[str, bytes], tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("red", "green", "blue"):
        (photos / f"{name}.png").write_bytes(images[name])
    out = tmp_path / "results"
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--model",
            str(serve_model),
            "--images",
            str(photos),
            "--no-baseline",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        env={**os.environ, "CAPGEN_HOME": str(serve_home)},
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "serve.json").read_text())
    assert results["quick"] is True
    servers = results["servers"]
    assert {"capgen FP32 batching on", "capgen FP32 batching off"} <= set(servers)
    assert "tutorial baseline" not in servers
    for name, server in servers.items():
        assert [level["clients"] for level in server["levels"]] == [1, 4], name
        for level in server["levels"]:
            assert level["ok"] > 0, (name, level)
            assert level["failed"] == 0 and level["unfinished"] == 0, (name, level)
            assert level["p50_ms"] <= level["p95_ms"] <= level["p99_ms"], (name, level)
            assert level["throughput_rps"] > 0
    overhead = results["http_overhead"]
    assert overhead["samples"] == 3 and overhead["in_process_median_ms"] > 0
    soak = results["soak"]
    assert soak["level"]["ok"] == 200 and soak["level"]["failed"] == 0
    assert len(soak["samples"]) >= 2 and soak["rss_start_mb"] > 0
    assert set(results["quietness"]) == {*servers, "HTTP overhead", "soak"}
    goals = {goal["goal"]: goal["met"] for goal in results["goals"]}
    assert len(goals) == 6
    # No baseline in this run: the speed-up goals say so rather than passing.
    assert [met for goal, met in goals.items() if "baseline" in goal] == [None, None]
    assert [met for goal, met in goals.items() if "soak" in goal] == [None]  # 200, not 10,000
    report = (out / "SERVE.md").read_text()
    assert "## Goals (issue 12)" in report and "| capgen FP32 batching on | 4 |" in report
    assert "not measured" in done.stdout
    assert (out / "serve_throughput.png").read_bytes().startswith(b"\x89PNG")

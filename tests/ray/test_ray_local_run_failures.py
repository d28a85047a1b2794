"""`capgen ray caption` against a real local Ray: a stale address file (tiny model).

The local Ray the command starts without --address runs inside a network
namespace of the test's own (netns_only), its temp dir (RAY_TMPDIR) a fresh
folder: the real /tmp/ray and other people's clusters are never touched.
(A corrupt node copy of a shipped model, which needs no Ray of its own, is
test_ray_cli.py's, on the cluster the other tests share.)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from capgen.cli_support.exit_codes import ExitCode
from capgen.ray.netns_cluster import netns_only, why_unavailable

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS / "runtime") not in sys.path:
    sys.path.append(str(TESTS / "runtime"))

from tiny_model import write_tiny_model  # noqa: E402

pytestmark = pytest.mark.slow

CAPGEN = str(Path(sys.executable).with_name("capgen"))


def _photo(folder: Path) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "a.png"
    Image.new("RGB", (40, 30), "green").save(path)
    return path


def _capgen_lines_only(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = stderr.strip().splitlines()
    assert lines and all(line.startswith("capgen: ") for line in lines), stderr[-3000:]


def test_a_stale_ray_address_file_does_not_hang_a_local_run(tmp_path: Path) -> None:
    reason = why_unavailable()
    if reason is not None:
        pytest.skip(reason)
    model = write_tiny_model(tmp_path / "model").folder
    photo = _photo(tmp_path / "photos")
    out = tmp_path / "out.jsonl"
    os.environ.pop("RAY_ADDRESS", None)  # only the stale file may name a cluster
    with netns_only(label="cgs", env={"RAY_AUTH_MODE": "disabled",
                                      "RAY_USAGE_STATS_ENABLED": "0"}) as space:  # fmt: skip
        space.env.update(RAY_TMPDIR=str(space.temp_dir), CAPGEN_HOME=str(tmp_path / "home"))
        # What an earlier `ray start` leaves: the address of a cluster long gone.
        (space.temp_dir / "ray").mkdir()
        (space.temp_dir / "ray" / "ray_current_cluster").write_text(f"{space.ip}:6390")
        done = space.run(
            [CAPGEN, "ray", "caption", str(photo), "-o", str(out), "-m", str(model),
             "--concurrency", "1", "-b", "1"],
            timeout=120,  # the old command waited silently until killed (123 s)
        )  # fmt: skip
    _capgen_lines_only(done.stderr)
    assert done.returncode == ExitCode.OK, done.stderr
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["path"] == str(photo) and "caption" in record

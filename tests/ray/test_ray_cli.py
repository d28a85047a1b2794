"""`capgen ray caption` on the real cluster: JSON Lines and Parquet, --resume as the local batch.

The console script runs inside the cluster's namespace; the images and the
output are on the one filesystem all nodes share here (what --shared-model
or shipped models and shared image storage stand for on a real cluster).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ray_images import write_bad_images, write_scenes

from capgen.cli_support.exit_codes import ExitCode
from capgen.ray.netns_cluster import NetnsCluster
from capgen.runtime.captioner import Captioner
from capgen.runtime.results import is_error_record, is_success_record

pytestmark = pytest.mark.slow


def _capgen_script() -> str:
    import sys

    return str(Path(sys.executable).with_name("capgen"))


def _run(cluster: NetnsCluster, *args: str) -> tuple[int, str]:
    done = cluster.run(
        [_capgen_script(), "ray", "caption", "--address", cluster.address, "--int8", "-b", "2",
         *args],
        timeout=300,
    )  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return done.returncode, done.stderr


def test_ray_caption_writes_json_lines_and_resumes(
    cluster: NetnsCluster, model_folder: Path, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    first = write_scenes(photos, 10, seed=31)
    (page, _) = write_bad_images(photos)
    page.rename(photos / "zz-page.jpg")
    (photos / "cut.png").unlink()
    out = tmp_path / "captions.jsonl"
    code, stderr = _run(cluster, str(photos), "-o", str(out), "-m", str(model_folder))
    assert code == ExitCode.SOME_FAILED, stderr
    assert stderr.strip().splitlines() == [
        line for line in stderr.strip().splitlines() if line.startswith("capgen: ")
    ]
    assert f"capgen: {photos / 'zz-page.jpg'}: " in stderr
    before = out.read_bytes()
    records = [json.loads(line) for line in before.splitlines()]
    assert len(records) == 11 and all(is_success_record(r) or is_error_record(r) for r in records)

    added = write_scenes(photos, 5, seed=32, start=10)
    code, stderr = _run(cluster, str(photos), "-o", str(out), "-m", str(model_folder), "--resume")
    assert code == ExitCode.SOME_FAILED, stderr
    after = out.read_bytes()
    assert after.startswith(before)  # what was written stays as it was
    new = [json.loads(line) for line in after[len(before) :].splitlines()]
    # Only the new images and the failed one again: nothing captioned twice.
    assert sorted(r["path"] for r in new) == sorted([*map(str, added), str(photos / "zz-page.jpg")])
    captioner = Captioner(model_folder, int8=True)
    good = [r for r in records + new if "error" not in r]
    assert sorted(r["path"] for r in good) == sorted(map(str, [*first, *added]))
    for record in good:
        expected = captioner.caption(record["path"], beam_size=2)
        assert record["caption"] == expected.text, record["path"]


def test_ray_caption_writes_parquet_parts_and_resumes(
    cluster: NetnsCluster, model_folder: Path, tmp_path: Path
) -> None:
    import pyarrow.parquet as pq

    photos = tmp_path / "photos"
    write_scenes(photos, 6, seed=33)
    out = tmp_path / "captions.parquet"
    code, stderr = _run(cluster, str(photos), "-o", str(out), "-m", str(model_folder))
    assert code == ExitCode.OK, stderr
    (part,) = out.iterdir()
    assert pq.read_table(part).num_rows == 6
    refused, stderr = _run(cluster, str(photos), "-o", str(out), "-m", str(model_folder))
    assert refused == ExitCode.USAGE and "--resume" in stderr, stderr
    write_scenes(photos, 2, seed=34, start=6)
    code, stderr = _run(cluster, str(photos), "-o", str(out), "-m", str(model_folder), "--resume")
    assert code == ExitCode.OK, stderr
    table = pq.read_table(out)
    paths = table.column("path").to_pylist()
    assert len(paths) == len(set(paths)) == 8

"""`capgen ray caption` on the real cluster: JSON Lines and Parquet, --resume as the local batch,
and a corrupt node copy of a shipped model (tiny model) as the local command's one line.

The console script runs inside the cluster's namespace; the images and the
output are on the one filesystem all nodes share here (what --shared-model
or shipped models and shared image storage stand for on a real cluster).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from ray_images import write_bad_images, write_scenes

from capgen.cli_support.exit_codes import ExitCode
from capgen.ray.netns_cluster import NetnsCluster
from capgen.runtime.results import is_error_record, is_success_record

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS / "runtime") not in sys.path:
    sys.path.append(str(TESTS / "runtime"))

from tiny_model import write_tiny_model  # noqa: E402

pytestmark = pytest.mark.slow


def _capgen_script() -> str:
    import sys

    return str(Path(sys.executable).with_name("capgen"))


def _run(
    cluster: NetnsCluster, *args: str, options: tuple[str, ...] = ("--int8", "-b", "2")
) -> tuple[int, str]:
    # One caption actor: what these tests check (output, --resume, exit codes, stderr) does
    # not depend on how many there are, and each actor is a Ray worker process (~1.5 s of
    # CPU to start, more with its model). Several actors are test_ray_data.py's subject.
    done = cluster.run(
        [_capgen_script(), "ray", "caption", "--address", cluster.address, *options,
         "--concurrency", "1", *args],
        timeout=300,
    )  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return done.returncode, done.stderr


def _copies(sources: list[Path], folder: Path, start: int) -> list[Path]:
    """The shared scenes under new names (their serial captions are computed once per session)."""
    folder.mkdir(parents=True, exist_ok=True)
    copies = [folder / f"photo{start + i:04d}.png" for i in range(len(sources))]
    for source, copy in zip(sources, copies, strict=True):
        shutil.copyfile(source, copy)
    return copies


def test_ray_caption_writes_json_lines_and_resumes(
    cluster: NetnsCluster,
    model_folder: Path,
    scenes: tuple[list[Path], list[Path]],
    serial_captions: Any,
    tmp_path: Path,
) -> None:
    photos = tmp_path / "photos"
    first = _copies(scenes[0][:10], photos, start=0)
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

    added = _copies(scenes[0][10:15], photos, start=10)
    code, stderr = _run(cluster, str(photos), "-o", str(out), "-m", str(model_folder), "--resume")
    assert code == ExitCode.SOME_FAILED, stderr
    after = out.read_bytes()
    assert after.startswith(before)  # what was written stays as it was
    new = [json.loads(line) for line in after[len(before) :].splitlines()]
    # Only the new images and the failed one again: nothing captioned twice.
    assert sorted(r["path"] for r in new) == sorted([*map(str, added), str(photos / "zz-page.jpg")])
    good = [r for r in records + new if "error" not in r]
    assert sorted(r["path"] for r in good) == sorted(map(str, [*first, *added]))
    serial = serial_captions([r["path"] for r in good], beam_size=2)
    for record in good:
        assert record["caption"] == serial[record["path"]].text, record["path"]


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


def test_a_corrupt_node_copy_is_the_local_one_line_and_exit_3(
    cluster: NetnsCluster, tmp_path: Path
) -> None:
    """The shipped model's copy on the node no longer matches: the actor's error, as capgen says it.

    The copy is planted in the cluster's actor home (CAPGEN_HOME of every node) and removed
    afterwards; it is the tiny model's, so the other tests' copies of the default model stay
    apart. This runs on the cluster the other tests use: a local Ray of its own cost about
    8 s of CPU to start and stop, and what is checked does not depend on where Ray runs.
    """
    from PIL import Image

    from capgen.ray.model_store import STORE_FOLDER, captioner_files, copy_folder_name, read_model
    from capgen.runtime.manifest import MANIFEST_FILE, load_manifest

    model = write_tiny_model(tmp_path / "model").folder
    # What the command ships (the files its FP32 captioners load), and so the copy it uses.
    names = captioner_files(load_manifest(model), int8=False, fast_decoder=False)
    _, digest, _ = read_model(model)
    store = Path(cluster.env["CAPGEN_HOME"]) / STORE_FOLDER
    copy = store / copy_folder_name(digest, names)
    copy.mkdir(parents=True)
    try:
        for name in [MANIFEST_FILE, *names]:
            (copy / name).write_bytes((model / name).read_bytes())
        (copy / "decoder_step.onnx").write_bytes(b"not the graph")
        photo = tmp_path / "photos" / "a.png"
        photo.parent.mkdir()
        Image.new("RGB", (40, 30), "green").save(photo)
        code, stderr = _run(
            cluster, str(photo), "-o", str(tmp_path / "out.jsonl"), "-m", str(model),
            options=("-b", "1"),
        )  # fmt: skip
    finally:
        for planted in store.glob(f"{digest}*"):
            shutil.rmtree(planted, ignore_errors=True)
    lines = stderr.strip().splitlines()
    assert lines and all(line.startswith("capgen: ") for line in lines), stderr[-3000:]
    assert code == ExitCode.MODEL, stderr
    assert "does not match its manifest" in stderr, stderr
    assert len(lines) == 1, stderr

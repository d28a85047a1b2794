"""caption_dataset on a real two-node cluster: every image once, the serial captions, errors as rows.

Each driver runs inside the cluster's namespace (`ip netns exec`) as its own
process and writes its rows as JSON; the comparison with a serial
`Captioner` run happens here, in the test process (conftest's
`serial_captions`: each image captioned once for every test).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from capgen.ray.model_store import captioner_files
from capgen.ray.netns_cluster import NetnsCluster
from capgen.runtime.decoding import DecodingResult
from capgen.runtime.manifest import MANIFEST_FILE, load_manifest

pytestmark = pytest.mark.slow

BEAM = 2
FAULT_IMAGES = 100

CAPTION_ALL = """
import json, sys
import ray
from capgen.ray import caption_dataset, ship_model

ray.init(log_to_driver=False)
ray.data.DataContext.get_current().enable_progress_bars = False
paths, model, out = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
images = ray.data.read_binary_files(paths, include_paths=True)
captions = caption_dataset(
    images, ship_model(model, int8=True, fast_decoder=False), concurrency=2,
    beam_size=__BEAM__, int8=True,
)
with open(out, "w") as handle:
    json.dump(captions.take_all(), handle)
""".replace("__BEAM__", str(BEAM))


@pytest.fixture(scope="module")
def serial(serial_captions: Any, scenes: tuple[list[Path], list[Path]]) -> dict[str, Any]:
    """The serial Captioner's outcome for every image, keyed by path."""
    return serial_captions([*scenes[0], *scenes[1]], beam_size=BEAM)


def assert_rows_match(rows: list[dict[str, Any]], expected: dict[str, Any]) -> None:
    counts = Counter(row["path"] for row in rows)
    assert set(counts) == set(expected), set(counts) ^ set(expected)
    assert set(counts.values()) == {1}, [p for p, n in counts.items() if n != 1]
    for row in rows:
        want = expected[row["path"]]
        if isinstance(want, DecodingResult):
            assert row["error"] is None, row
            assert (row["caption"], row["tokens"], row["finished"]) == (
                want.text,
                list(want.tokens),
                want.finished,
            ), row["path"]
            assert row["log_probability"] == pytest.approx(want.log_probability, abs=1e-3)
        else:
            assert row["caption"] is None and row["error"] == str(want), row


def test_200_images_each_captioned_once_as_serially(
    cluster: NetnsCluster,
    model_folder: Path,
    scenes: tuple[list[Path], list[Path]],
    serial: dict[str, Any],
    tmp_path: Path,
) -> None:
    good, bad = scenes
    paths = [*good, *bad]
    out = tmp_path / "rows.json"
    done = cluster.python(
        CAPTION_ALL, json.dumps([str(p) for p in paths]), str(model_folder), str(out)
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert_rows_match(rows, serial)
    assert sum(row["error"] is not None for row in rows) == len(bad)
    # The model reached the actors through the object store: each node wrote one verified copy,
    # of the files these actors load only (INT8 encoder, exact step), as shipped.
    (copy,) = (Path(cluster.env["CAPGEN_HOME"]) / "ray-models").iterdir()
    assert (copy / MANIFEST_FILE).read_bytes() == (model_folder / MANIFEST_FILE).read_bytes()
    assert sorted(p.name for p in copy.iterdir()) == sorted(
        [
            MANIFEST_FILE,
            *captioner_files(load_manifest(model_folder), int8=True, fast_decoder=False),
        ]
    )
    assert "encoder.onnx" not in {p.name for p in copy.iterdir()}


KILL_A_NODE = """
import json, os, signal, sys
import ray
from ray._private import state
from capgen.ray import caption_dataset, ship_model

ray.init(log_to_driver=False)
ray.data.DataContext.get_current().enable_progress_bars = False
paths, model, out = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
victim_port, raylets, kill_after = int(sys.argv[4]), json.loads(sys.argv[5]), int(sys.argv[6])
(victim,) = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeManagerPort"] == victim_port]
captions = caption_dataset(
    ray.data.read_binary_files(paths, include_paths=True),
    ship_model(model, int8=True, fast_decoder=False),
    concurrency=3, batch_size=4, beam_size=__BEAM__, int8=True,
)
rows, report = [], {}
for row in captions.iter_rows():
    rows.append(row)
    if len(rows) == kill_after:
        actors = state.actors().values()
        report["actors_on_victim"] = sum(
            a["Address"]["NodeID"] == victim and a["State"] == "ALIVE"
            and "CaptionBatches" in a["ActorClassName"] for a in actors
        )
        for pid in raylets:
            os.kill(pid, signal.SIGKILL)
        report["killed_after"] = len(rows)
report["victim_alive"] = [n["Alive"] for n in ray.nodes() if n["NodeID"] == victim]
with open(out, "w") as handle:
    json.dump({"rows": rows, **report}, handle)
""".replace("__BEAM__", str(BEAM))


def test_a_node_killed_mid_job_loses_no_image_and_repeats_none(
    cluster: NetnsCluster,
    model_folder: Path,
    scenes: tuple[list[Path], list[Path]],
    serial: dict[str, Any],
    tmp_path: Path,
) -> None:
    """How: a third node joins, the job spreads 3 actors over the nodes, and after 40 rows the
    driver SIGKILLs that node's raylet (its actors and object store die with it). Ray Data's actor
    pool defaults, which caption_dataset keeps (max_restarts=-1, max_task_retries=-1; actors
    placed with its default SPREAD strategy), restart the actor elsewhere and retry its batches;
    the reads whose blocks were lost are re-run from lineage. The job must still return every
    image exactly once, with the serial captions."""
    port = cluster.add_worker(2)
    raylets = cluster.raylet_pids(port)
    assert raylets, "the victim node's raylet was not found"
    paths = [*scenes[0][:FAULT_IMAGES], *scenes[1]]  # half of them: the test is about the kill
    out = tmp_path / "rows.json"
    done = cluster.python(
        KILL_A_NODE, json.dumps([str(p) for p in paths]), str(model_folder), str(out),
        str(port), json.dumps(raylets), "40",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["killed_after"] == 40 and report["actors_on_victim"] >= 1, report
    assert report["victim_alive"] == [False], report
    assert_rows_match(report["rows"], {str(p): serial[str(p)] for p in paths})

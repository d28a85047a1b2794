"""The Ray Serve deployment on the real cluster: capgen serve's answers, batched with @serve.batch.

The driver deploys the example config (ray_support/serve_config.yaml, one
replica, the shipped default model), sends 24 single-image requests at once
from 24 threads plus a few special ones, and reports the answers and the
replica's batch sizes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from capgen.ray.netns_cluster import NetnsCluster

pytestmark = pytest.mark.slow

CONFIG = Path(__file__).resolve().parents[2] / "ray_support" / "serve_config.yaml"
CONCURRENT = 24
BEAM = 2

DEPLOY_AND_ASK = """
import importlib, json, sys
from concurrent.futures import ThreadPoolExecutor
import httpx, ray, yaml
from ray import serve
from capgen.ray import ship_model

ray.init(log_to_driver=False)
config_file, model, paths, bad, out = sys.argv[1:6]
paths = json.loads(paths)
config = yaml.safe_load(open(config_file))
application = config["applications"][0]
module, _, name = application["import_path"].partition(":")
(deployment,) = application["deployments"]
serve.start(http_options={**config["http_options"], "location": config["proxy_location"]})
# The files of the config's int8 setting, both decoder steps (fast_decoder left open).
shipped = ship_model(model, int8=application["args"]["int8"])
args = {**application["args"], "model": shipped, "batch_wait_timeout_s": 0.05}
app = getattr(importlib.import_module(module), name)(args)
handle = serve.run(app, name=application["name"], route_prefix=application["route_prefix"])
base = f"http://{config['http_options']['host']}:{config['http_options']['port']}"

def ask(path):
    with open(path, "rb") as handle_:
        answer = httpx.post(f"{base}/v1/captions?beam_size=__BEAM__", content=handle_.read(),
                            headers={"Content-Type": "image/png"}, timeout=120)
    return answer.status_code, answer.json()

with ThreadPoolExecutor(len(paths)) as pool:
    answers = list(pool.map(ask, paths))
files = [("files", ("a.png", open(paths[0], "rb").read())), ("files", ("bad.jpg", open(bad, "rb").read()))]
mixed = httpx.post(f"{base}/v1/captions", files=files, data={"beam_size": "__BEAM__"}, timeout=120)
one_bad = httpx.post(f"{base}/v1/captions", content=open(bad, "rb").read(),
                     headers={"Content-Type": "image/jpeg"}, timeout=120)
bad_option = httpx.post(f"{base}/v1/captions?beam_size=0", content=b"x",
                        headers={"Content-Type": "image/png"}, timeout=120)
sizes = handle.batch_sizes.remote().result()
with open(out, "w") as f:
    json.dump({"answers": answers, "mixed": [mixed.status_code, mixed.json()],
               "one_bad": [one_bad.status_code, one_bad.json()],
               "bad_option": [bad_option.status_code, bad_option.json()], "sizes": sizes}, f)
serve.shutdown()
""".replace("__BEAM__", str(BEAM))


def _same(record: dict[str, Any], path: Path, expected: Any) -> None:
    assert record["path"] == "body" or record["path"] == path.name
    assert (record["caption"], record["tokens"]) == (expected.text, list(expected.tokens))
    assert set(record) == {"path", "caption", "log_probability", "finished", "tokens", "timings"}


def test_serve_batches_concurrent_requests_and_answers_like_capgen_serve(
    cluster: NetnsCluster,
    model_folder: Path,
    scenes: tuple[list[Path], list[Path]],
    serial_captions: Any,
    tmp_path: Path,
) -> None:
    good, (page, _) = scenes
    paths = good[:CONCURRENT]
    out = tmp_path / "serve.json"
    done = cluster.python(
        DEPLOY_AND_ASK, str(CONFIG), str(model_folder), json.dumps([str(p) for p in paths]),
        str(page), str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    serial = serial_captions(paths, beam_size=BEAM)  # test_ray_data.py's, when it ran first
    expected = [serial[str(p)] for p in paths]
    for path, want, (status, answer) in zip(paths, expected, report["answers"], strict=True):
        assert status == 200, answer
        (record,) = answer["results"]
        _same(record, path, want)
    status, mixed = report["mixed"]
    assert status == 200
    first, second = mixed["results"]
    _same(first, Path("a.png"), expected[0])
    assert second["path"] == "bad.jpg" and set(second) == {"path", "error"}
    assert report["one_bad"][0] == 422 and report["one_bad"][1]["code"] == "bad_image"
    assert report["bad_option"][0] == 422 and report["bad_option"][1]["code"] == "bad_option"
    # Batching happened: the one replica ran fewer batches than images, some of several.
    sizes = report["sizes"]
    assert sum(sizes) == CONCURRENT + 2 + 1, sizes  # + the form's two images + the bad one
    assert max(sizes) > 1, sizes

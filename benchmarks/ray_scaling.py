"""Ray scaling: images/s with 1 and 2 caption actors, and Ray's overhead against in-process caption_batch.

    sudo .venv/bin/python benchmarks/ray_scaling.py                 # 1,000 images, INT8 encoder
    .venv/bin/python benchmarks/ray_scaling.py --images 40 --out /tmp/ray-check   # a quick check

The same N generated scenes (models/scenes.py, JPEG files) are captioned
three ways with the same model, beam and batch size:
- in-process: one `Captioner` with 1 encoder thread, `caption_batch` over the files;
- Ray, 1 actor of 1 CPU (1 encoder thread): `caption_dataset` over
  `read_binary_files`, on a one-node cluster in a network namespace of its
  own (capgen.ray.netns_cluster; root), timed from submitting the job to the
  last row, after a warm-up job that loaded the model on the node;
- Ray, 2 actors of 1 CPU each.
Overhead per image = (Ray 1 actor − in-process) / N, and as a fraction of
the in-process time (goal ≤ 15 %); scaling efficiency = images/s with 2
actors / (2 × images/s with 1). On a machine with 2 cores, 2 actors use both.
Writes OUT.json and OUT.md (default benchmarks/results/ray_scaling). A full
run takes about 5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from capgen.benchmarks.quiet import measured_quietly
from capgen.benchmarks.results_folder import ResultsFolder
from capgen.runtime.errors import CapgenError

RESULTS = Path(__file__).resolve().parent / "results" / "ray_scaling"
WARMUP_IMAGES = 16
T = TypeVar("T")


def write_images(folder: Path, count: int) -> list[Path]:
    from capgen.models.scenes import render, sample_scene

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"scene{index:05d}.jpg"
        path.write_bytes(render(sample_scene(7, index), 7, index))
        paths.append(path)
    return paths


def in_process(model: Path, paths: list[Path], args: argparse.Namespace) -> dict[str, float]:
    from capgen.runtime.captioner import Captioner

    captioner = Captioner(model, threads=1, int8=args.int8)
    captioner.caption_batch(paths[:WARMUP_IMAGES], beam_size=args.beam_size)
    started, cpu = time.perf_counter(), time.process_time()
    captioner.caption_batch(paths, beam_size=args.beam_size, batch_size=args.batch_size)
    return {"seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu}


DRIVER = """
import json, sys, time
import ray
from capgen.ray import caption_dataset, ship_model

ray.init(log_to_driver=False)
ray.data.DataContext.get_current().enable_progress_bars = False
folder, model, int8, beam, batch, actors, warmup = sys.argv[1:8]
shipped = ship_model(model)

def job(paths, n):
    ds = ray.data.read_binary_files(paths, include_paths=True)
    captions = caption_dataset(ds, shipped, concurrency=n, num_cpus=1, int8=int8 == "1",
                               beam_size=int(beam), batch_size=int(batch))
    first, count = None, 0
    for _ in captions.iter_rows():
        count += 1
        if first is None:
            first = time.perf_counter()
    return count, first

import glob
paths = sorted(glob.glob(folder + "/*.jpg"))
job(paths[: int(warmup)], int(actors))  # the model lands on the node, workers import capgen
started = time.perf_counter()
rows, first = job(paths, int(actors))
print(json.dumps({"seconds": time.perf_counter() - started, "rows": rows,
                  "first_row_seconds": first - started}))
"""


def on_ray(
    cluster: Any, folder: Path, model: Path, actors: int, args: argparse.Namespace
) -> dict[str, float]:
    done = cluster.python(
        DRIVER, str(folder), str(model), "1" if args.int8 else "0", str(args.beam_size),
        str(args.batch_size), str(actors), str(WARMUP_IMAGES), timeout=1200,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"ray_scaling: the Ray job failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarise(
    count: int, local: dict[str, float], one: dict[str, float], two: dict[str, float]
) -> dict[str, Any]:
    rate = {
        name: count / arm["seconds"]
        for name, arm in (("in_process", local), ("ray_1", one), ("ray_2", two))
    }
    return {
        "images": count,
        "in_process_images_per_s": rate["in_process"],
        "ray_1_actor_images_per_s": rate["ray_1"],
        "ray_2_actors_images_per_s": rate["ray_2"],
        "scaling_efficiency": rate["ray_2"] / (2 * rate["ray_1"]),
        "ray_overhead_ms_per_image": (one["seconds"] - local["seconds"]) / count * 1000,
        "ray_overhead_fraction": one["seconds"] / local["seconds"] - 1,
        "overhead_goal": 0.15,
        # The job's fixed cost (actors start, load the model) is in the figures above;
        # this is the time until the first row came back, paid once per job.
        "ray_1_actor_first_row_s": one["first_row_seconds"],
    }


def markdown(summary: dict[str, Any], args: argparse.Namespace) -> str:
    return "\n".join([
        f"# Ray scaling ({summary['images']} images, {'INT8' if args.int8 else 'FP32'} encoder, "
        f"beam {args.beam_size}, batch {args.batch_size}, {os.cpu_count()} cores)",
        "",
        "| arm | images/s |",
        "|---|---|",
        f"| in-process caption_batch, 1 thread | {summary['in_process_images_per_s']:.2f} |",
        f"| Ray, 1 actor (1 CPU) | {summary['ray_1_actor_images_per_s']:.2f} |",
        f"| Ray, 2 actors (1 CPU each) | {summary['ray_2_actors_images_per_s']:.2f} |",
        "",
        f"Scaling efficiency 1 → 2 actors: {summary['scaling_efficiency']:.0%}. "
        f"Ray's overhead: {summary['ray_overhead_ms_per_image']:.1f} ms per image, "
        f"{summary['ray_overhead_fraction']:.1%} of in-process (goal ≤ 15%), the whole job "
        f"timed (its first row after {summary['ray_1_actor_first_row_s']:.1f} s: actors "
        "starting and loading the model).",
        "",
        *_quietness_lines(summary),
    ])  # fmt: skip


def _quietness_lines(summary: dict[str, Any]) -> list[str]:
    """How quiet the machine was per arm (the cluster's own processes count as ours)."""
    lines = ["| arm | other processes (cores) | load before | quiet |", "|---|---|---|---|"]
    for name, how in summary.get("quietness", {}).items():
        lines.append(f"| {name} | {how['other_cores']:.2f} | {how['load_average_before']:.2f} | "
                     f"{'yes' if how['quiet'] else 'NO'} |")  # fmt: skip
    if summary.get("noisy_sections"):
        lines = [
            "**NOISY RUN**: other processes ran during " + ", ".join(summary["noisy_sections"]),
            "",
            *lines,
        ]
    return [*lines, ""]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--model", type=Path, default=None, help="default: capgen setup's")
    parser.add_argument("--fp32", dest="int8", action="store_false", help="FP32 encoder (slower)")
    parser.add_argument("--beam-size", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS, help="writes OUT.json and OUT.md")
    args = parser.parse_args(argv)
    from capgen.ray.netns_cluster import netns_cluster, why_unavailable
    from capgen.runtime.captioner import resolve_model_dir

    reason = why_unavailable()
    if reason is not None:
        raise SystemExit(f"ray_scaling: {reason}")
    model, _ = resolve_model_dir(args.model)
    results_folder = ResultsFolder(args.out.parent)
    try:  # before the run, not five minutes into it
        results_folder.check([f"{args.out.name}.json", f"{args.out.name}.md"])
    except CapgenError as error:
        raise SystemExit(f"ray_scaling: {error}") from None
    quietness: dict[str, dict[str, Any]] = {}

    def quietly(
        name: str, section: Callable[[], T], ours: Callable[[], list[int]] | None = None
    ) -> T:
        value, how = measured_quietly(section, lambda line: print(line, file=sys.stderr), name,
                                      max_wait=300.0, retries=0, also_ours=ours)  # fmt: skip
        quietness[name] = how.as_dict()
        return value

    with tempfile.TemporaryDirectory(prefix="capgen-ray-bench-") as temp:
        folder = Path(temp) / "images"
        paths = write_images(folder, args.images)
        print(f"{len(paths)} images written", file=sys.stderr)
        local = quietly("in-process", lambda: in_process(model, paths, args))
        print(f"in-process: {local['seconds']:.1f} s", file=sys.stderr)
        # 4 logical CPUs: the 2 actors take 1 each and the read tasks still find one (an actor
        # pool that takes every CPU starves its reads and hangs).
        with netns_cluster(head_cpus=4, worker_cpus=(), label="cgb",
                           env={"CAPGEN_HOME": str(Path(temp) / "home")}) as cluster:  # fmt: skip
            ours = cluster.own_processes
            one = quietly("ray 1 actor", lambda: on_ray(cluster, folder, model, 1, args), ours)
            print(f"ray, 1 actor: {one['seconds']:.1f} s", file=sys.stderr)
            two = quietly("ray 2 actors", lambda: on_ray(cluster, folder, model, 2, args), ours)
            print(f"ray, 2 actors: {two['seconds']:.1f} s", file=sys.stderr)
    if one["rows"] != args.images or two["rows"] != args.images:
        raise SystemExit(f"ray_scaling: rows {one['rows']}/{two['rows']} for {args.images} images")
    summary = {**summarise(args.images, local, one, two), "quietness": quietness,
               "noisy_sections": [name for name, how in quietness.items() if not how["quiet"]]}  # fmt: skip
    results_folder.write_text(f"{args.out.name}.json", json.dumps({**summary, "arms": {"in_process": local, "ray_1": one, "ray_2": two}}, indent=2) + "\n")  # fmt: skip
    results_folder.write_text(f"{args.out.name}.md", markdown(summary, args))
    print(markdown(summary, args))


if __name__ == "__main__":
    main()

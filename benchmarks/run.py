"""`capgen bench`: capgen against the tutorial's Keras code, same models, photos, machine and run.

Every comparison alternates the two arms request by request (which arm goes
first alternates too), repeats, and reports medians with spread; a ratio is
baseline median ÷ capgen median from the same run. Sections:

1. cold start (fresh process, one photo, wall time and peak RSS);
2. warm end-to-end latency, greedy and beam 3, FP32 and INT8 encoders;
3. decoder alone, one 32-word caption;
4. encoder alone, batch 1 and 8;
5. throughput over a folder of photos;
6. peak memory (cold processes; warm workers too);
7. scaling with caption length (both arms) and beam size (capgen);
8. encoder GFLOP/s against the best onnxruntime reaches on this machine (its ceiling,
   FP32 and INT8: 1x1 Conv chains and MatMuls, 1 and all threads);
9. encoder kinds: each tutorial encoder (VGG16, ResNet50, InceptionV3, DenseNet201,
   Xception) alone, batch 1, FP32 and INT8;
10. peers: the Xception encoder on onnxruntime, OpenVINO and LiteRT against capgen's
   `--precision` modes (peers.py), then issue 25's goal rows (goals.py): warm latency
   against the tutorial under `auto` and INT8, and throughput on 1, 2, … cores;
plus the INT8 encoder's caption accuracy on the default model's test split;
11. web: the default model's exported site (INT8) in headless Chromium with 2 WASM
   threads (web_bench.py): cold model load, first caption, warm greedy and beam-3
   captions of the example photos with their stages, against the Python runtime's
   in the same run, and issue 27's goal row (warm greedy ≤ 0.5 s).
`capgen bench --section peers` runs section 10 alone and merges it into the
results folder's existing results.json (SECTIONS names them all).
The encoder section also times capgen with onnxruntime-openvino's
OpenVINOExecutionProvider (FP32 and INT8 encoders), in workers that run in a
venv built once by the README's recipe (benchmarks/provider_venv.py).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from capgen.benchmarks import fixtures
from capgen.benchmarks.ceiling import (
    FULL_KERNELS,
    QUICK_KERNELS,
    SMOKE_KERNELS,
    Kernel,
    measure_ceilings,
)
from capgen.benchmarks.efficiency import encoder_efficiency
from capgen.benchmarks.fixtures import BenchModel
from capgen.benchmarks.machine import machine_info
from capgen.benchmarks.processes import Worker, in_turn, run_cold
from capgen.benchmarks.quiet import measured_quietly
from capgen.benchmarks.stats import summarize

Echo = Callable[[str], None]
SETTLE_SECONDS = 0.02


@dataclass(frozen=True)
class Plan:
    """How much to measure; FULL for the committed results, QUICK for a smoke run."""

    repetitions: int = 5
    cold_repetitions: int = 3
    # One untimed cold run of each arm before the timed ones (see _cold_start); the smoke
    # test's numbers mean nothing, and the tutorial arm's untimed run costs ~10 s of CPU.
    cold_warmup: bool = True
    # One untimed greedy caption per warm worker before the timed requests (see _warm); the
    # smoke plan skips it too: the tutorial arm's is a whole 32-word caption, ~1.7 s of CPU.
    warm_warmup: bool = True
    beam_repetitions: int = 3
    latency_beams: tuple[int, ...] = (1, 3)
    throughput_photos: int = 64
    throughput_baseline_repetitions: int = 1
    throughput_capgen_repetitions: int = 2
    decoder_steps: int = 32
    scaling_lengths: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    beam_sizes: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8)
    encoder_batches: tuple[int, ...] = (1, 8)
    # The ceiling is the best of these kernels, each with 1 thread and one per core,
    # so it is a ceiling rather than one shape's speed (benchmarks/ceiling.py).
    ceiling_kernels: tuple[Kernel, ...] = FULL_KERNELS
    ceiling_repeats: int = 5
    # Before each section: wait up to this long for the other processes to fall
    # below quiet.QUIET_CORES; a section they disturbed is re-run this many times.
    quiet_max_wait: float = 300.0
    noisy_retries: int = 1
    int8: bool = True
    fast_decoder: bool = True
    int8_eval_scenes: int = 200
    include_default_model: bool = True
    # Encoder arms with onnxruntime-openvino's OpenVINOExecutionProvider (own venv).
    openvino: bool = True
    # Section "encoder kinds" (issue 17): batch-1 runs per kind and arm (FP32, INT8).
    encoder_kind_repetitions: int = 20
    # Section "peers" (issue 25): rounds over the photos, each arm once per photo per round.
    peer_rounds: int = 5
    peer_photos: int = 12
    # Its goal rows: warm latency repetitions against the tutorial; many cores (0: none).
    goal_latency_repetitions: int = 5
    goal_serve_requests: int = 192
    goal_batch_repetitions: int = 2
    # The decoder step on each engine (decoder_modes.py): fixed-length captions per arm (0: none).
    decoder_mode_repetitions: int = 12
    # Section "web" (issue 27): rounds over the example photos, per arm (0: none).
    web_repetitions: int = 5


FULL = Plan()
QUICK = Plan(
    repetitions=2,
    cold_repetitions=1,
    beam_repetitions=1,
    throughput_photos=8,
    throughput_capgen_repetitions=1,
    decoder_steps=8,
    scaling_lengths=(1, 4, 8),
    beam_sizes=(1, 3),
    ceiling_kernels=QUICK_KERNELS,
    int8_eval_scenes=20,
    quiet_max_wait=60.0,
    encoder_kind_repetitions=3,
    peer_rounds=1,
    goal_latency_repetitions=2,
    goal_serve_requests=64,
    goal_batch_repetitions=1,
    decoder_mode_repetitions=2,
    web_repetitions=2,
)
SECTIONS = ("tutorial", "ceiling", "encoder-kinds", "int8-accuracy", "peers", "web")


def _capgen_cli() -> str:
    beside = Path(sys.executable).with_name("capgen")
    return str(beside) if beside.is_file() else "capgen"


class _Session:
    """State shared by the sections of one run."""

    def __init__(self, plan: Plan, echo: Echo, logs: Path, provider_venv: bool = True) -> None:
        self.plan = plan
        self.echo = echo
        self.logs = logs
        from capgen.convert.weights import fetch_imagenet_weights

        self.weights = fetch_imagenet_weights()
        self.openvino_python: Path | None = None
        if plan.openvino and provider_venv:
            from capgen.benchmarks.provider_venv import openvino_bench_python

            self.openvino_python = openvino_bench_python(
                fixtures.bench_home() / "openvino-venv", echo
            )

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"


def _photos_for(model: BenchModel, count: int) -> list[Path]:
    """Photos like the ones a model was made for: Flickr8k photos, or scenes for the default model."""
    if model.colour:
        return fixtures.photo_folder(len(fixtures.flickr_photos()) + count)[-count:]
    return fixtures.flickr_photos()[:count]


def _cold_start(session: _Session, model: BenchModel) -> dict[str, Any]:
    plan = session.plan
    photo = str(_photos_for(model, 1)[0])
    repo = fixtures.REPO_ROOT
    baseline_cmd = [
        sys.executable,
        str(fixtures.TUTORIAL_SCRIPT),
        "-i",
        photo,
        "-m",
        str(model.keras_file),
        "-t",
        str(model.tokenizer),
        "--weights",
        str(session.weights),
    ]
    if model.colour:
        baseline_cmd.append("--colour")
    capgen_cmd = [
        _capgen_cli(),
        "caption",
        photo,
        "--model",
        str(model.model_dir),
        "--beam-size",
        "1",
    ]
    probe = [
        sys.executable,
        str(repo / "benchmarks" / "capgen_probe.py"),
        str(model.model_dir),
        photo,
    ]
    arms: dict[str, list[str]] = {"baseline": baseline_cmd, "capgen": capgen_cmd}
    if plan.int8:
        arms["capgen_int8"] = [*capgen_cmd, "--int8"]
    walls: dict[str, list[float]] = {name: [] for name in arms}
    rss: dict[str, list[float]] = {name: [] for name in arms}
    stages: dict[str, list[dict[str, float]]] = {"baseline": [], "capgen": []}
    # One untimed run of each arm first: otherwise only the first timed run pays
    # for a cold page cache and for capgen's first-load work (hashing the files
    # for their stamps, optimising the encoder into its cache), a one-off the
    # median of 3 hid only partly; every timed run now starts from the same state.
    if plan.cold_warmup:
        for name, command in arms.items():
            run_cold(list(command), session.log(f"cold-{model.name}-{name}-warmup"))
    for rep in range(plan.cold_repetitions):
        order = list(arms) if rep % 2 == 0 else list(reversed(arms))
        for name in order:
            command = list(arms[name])
            timings = session.logs / f"cold-{model.name}-{name}-{rep}.json"
            if name == "baseline":
                command += ["--timings", str(timings)]
            run = run_cold(command, session.log(f"cold-{model.name}-{name}"))
            walls[name].append(run.wall_seconds)
            rss[name].append(run.peak_rss_mb)
            if name == "baseline":
                stages["baseline"].append(_read_json(timings))
        timings = session.logs / f"cold-{model.name}-probe-{rep}.json"
        run_cold([*probe, str(timings)], session.log(f"cold-{model.name}-probe"))
        stages["capgen"].append(_read_json(timings))
    session.echo(
        f"  cold start: baseline {_median(walls['baseline']):.2f} s, capgen {_median(walls['capgen']):.2f} s"
    )
    return {
        "photo": photo,
        "wall_seconds": {name: summarize(values) for name, values in walls.items()},
        "peak_rss_mb": {name: summarize(values) for name, values in rss.items()},
        "stages": {name: _median_dict(values) for name, values in stages.items()},
        "commands": {
            "baseline": " ".join(baseline_cmd[1:4]) + " ...",
            "capgen": " ".join(capgen_cmd[1:2]) + " ...",
        },
    }


def _read_json(path: Path) -> dict[str, float]:
    import json

    return json.loads(path.read_text())


def _median(values: list[float]) -> float:
    return float(summarize(values)["median"])


def _median_dict(rows: list[dict[str, float]]) -> dict[str, float]:
    if not rows:
        return {}
    return {key: _median([row[key] for row in rows]) for key in rows[0]}


def _alternate(
    workers: dict[str, Worker],
    repetitions: int,
    request: Callable[[int], tuple[str, dict[str, Any]]],
) -> dict[str, list[dict[str, Any]]]:
    """Send the same request to every worker, `repetitions` times, rotating who goes first."""
    answers: dict[str, list[dict[str, Any]]] = {name: [] for name in workers}
    names = list(workers)
    for rep in range(repetitions):
        op, arguments = request(rep)
        for name in in_turn(names, rep):
            # Let the previous arm's thread pools stop spinning before timing the next.
            time.sleep(SETTLE_SECONDS)
            answers[name].append(workers[name].request(op, **arguments))
    return answers


def _on_photos(
    photos: Sequence[str], op: str, **fixed: Any
) -> Callable[[int], tuple[str, dict[str, Any]]]:
    """`_alternate`'s request for repetition `rep`: `op` on the photos in turn, with `fixed`."""
    return lambda rep: (op, {"photo": photos[rep % len(photos)], **fixed})


def _seconds(answers: dict[str, list[dict[str, Any]]], key: str = "seconds") -> dict[str, Any]:
    return {name: summarize([a[key] for a in rows]) for name, rows in answers.items()}


def _openvino_workers(session: _Session, model: BenchModel) -> dict[str, Worker]:
    """capgen with OpenVINOExecutionProvider (FP32, and INT8 when planned) in the OpenVINO venv;
    an arm whose worker cannot start is reported and left out, the run goes on."""
    from capgen.benchmarks.provider_venv import OPENVINO_PROVIDER

    if session.openvino_python is None:
        return {}
    workers: dict[str, Worker] = {}
    for name, int8 in (("capgen_openvino", False), ("capgen_openvino_int8", True)):
        if int8 and not session.plan.int8:
            continue
        try:
            workers[name] = Worker(
                "capgen",
                model,
                session.log(f"worker-{name}-{model.name}"),
                int8=int8,
                provider=OPENVINO_PROVIDER,
                python=session.openvino_python,
            )
        except RuntimeError as error:
            session.echo(f"  {name} left out: {error}")
    return workers


def _warm(session: _Session, model: BenchModel, primary: bool) -> dict[str, Any]:
    plan = session.plan
    echo = session.echo
    workers: dict[str, Worker] = {}
    openvino: dict[str, Worker] = {}
    try:
        workers["baseline"] = Worker(
            "baseline", model, session.log(f"worker-baseline-{model.name}"), weights=session.weights
        )
        workers["capgen"] = Worker("capgen", model, session.log(f"worker-capgen-{model.name}"))
        if plan.int8:
            workers["capgen_int8"] = Worker(
                "capgen", model, session.log(f"worker-capgen-int8-{model.name}"), int8=True
            )
        if plan.int8 and plan.fast_decoder and fixtures.ensure_fast_decoder(model):
            # The fastest configuration capgen offers (both opt-in): INT8 encoder + fast decoder step.
            workers["capgen_int8_fast"] = Worker(
                "capgen",
                model,
                session.log(f"worker-capgen-fast-{model.name}"),
                int8=True,
                fast_decoder=True,
            )
        openvino = _openvino_workers(session, model)
        result: dict[str, Any] = {
            "setup": {name: w.ready["setup"] for name, w in {**workers, **openvino}.items()}
        }
        photos = [str(p) for p in _photos_for(model, max(plan.repetitions, 1))]
        if plan.warm_warmup:
            for worker in [*workers.values(), *openvino.values()]:
                worker.request("latency", photo=photos[0], beam=1)  # warm-up

        result["latency"] = {}
        for beam in plan.latency_beams:
            reps = plan.repetitions if beam == 1 else plan.beam_repetitions
            answers = _alternate(
                workers,
                reps,
                _on_photos(photos, "latency", beam=beam),
            )
            same = sum(
                a["text"] == b["text"]
                for a, b in zip(answers["baseline"], answers["capgen"], strict=True)
            )
            result["latency"][f"beam{beam}"] = {
                "seconds": _seconds(answers),
                "stages": {
                    name: _median_dict([a["stages"] for a in rows])
                    for name, rows in answers.items()
                },
                "same_caption_as_baseline": f"{same}/{reps}",
                "example": {name: rows[0]["text"] for name, rows in answers.items()},
            }
            echo(
                f"  warm latency beam {beam}: baseline {result['latency'][f'beam{beam}']['seconds']['baseline']['median']:.3f} s, "
                f"capgen {result['latency'][f'beam{beam}']['seconds']['capgen']['median'] * 1000:.1f} ms"
            )

        if not model.colour:
            steps = plan.decoder_steps
            answers = _alternate(
                workers,
                plan.repetitions,
                _on_photos(photos, "decode", steps=steps, beam=1),
            )
            result["decoder"] = {
                "steps": steps,
                "seconds": _seconds(answers),
                "words": {name: rows[0]["words"] for name, rows in answers.items()},
            }
            result["encoder"] = {}
            for batch in plan.encoder_batches:
                answers = _alternate(
                    {**workers, **openvino},
                    plan.repetitions,
                    _on_photos(photos, "encode", batch=batch),
                )
                result["encoder"][f"batch{batch}"] = {"seconds": _seconds(answers)}
            result["scaling_length"] = {}
            for length in plan.scaling_lengths:
                answers = _alternate(
                    workers,
                    max(plan.repetitions // 2, 1),
                    _on_photos(photos, "decode", steps=length, beam=1),
                )
                result["scaling_length"][str(length)] = _seconds(answers)
            capgen_only = {"capgen": workers["capgen"]}
            result["scaling_beam"] = {}
            for beam in plan.beam_sizes:
                answers = _alternate(
                    capgen_only,
                    plan.repetitions,
                    _on_photos(photos, "decode", steps=plan.decoder_steps, beam=beam),
                )
                result["scaling_beam"][str(beam)] = _seconds(answers)["capgen"]
            echo(
                f"  decoder {steps} words: baseline {result['decoder']['seconds']['baseline']['median']:.3f} s, "
                f"capgen {result['decoder']['seconds']['capgen']['median'] * 1000:.2f} ms"
            )
        else:
            result["encoder"] = {}
            capgen_arms = {name: w for name, w in workers.items() if name != "baseline"}
            capgen_arms.update(openvino)
            for batch in plan.encoder_batches:
                answers = _alternate(
                    capgen_arms,
                    plan.repetitions,
                    _on_photos(photos, "encode", batch=batch),
                )
                result["encoder"][f"batch{batch}"] = {"seconds": _seconds(answers)}

        if primary:
            folder = [str(p) for p in fixtures.photo_folder(plan.throughput_photos)]
            result["throughput"] = {"photos": len(folder), "images_per_second": {}}
            runs = {"baseline": plan.throughput_baseline_repetitions}
            # The fast arm shares the INT8 encoder, which is what throughput is made of.
            runs.update(
                {
                    name: plan.throughput_capgen_repetitions
                    for name in ("capgen", "capgen_int8")
                    if name in workers
                }
            )
            for name, reps in runs.items():
                rates = []
                for _ in range(reps):
                    answer = workers[name].request("throughput", photos=folder, beam=1)
                    rates.append(answer["count"] / answer["seconds"])
                result["throughput"]["images_per_second"][name] = summarize(rates)
            echo(
                f"  throughput: baseline {result['throughput']['images_per_second']['baseline']['median']:.2f} img/s, "
                f"capgen {result['throughput']['images_per_second']['capgen']['median']:.1f} img/s"
            )
        result["worker_rss_mb"] = {name: w.request("rss") for name, w in workers.items()}
        return result
    finally:
        for worker in [*workers.values(), *openvino.values()]:
            worker.close()


def _encoder_kinds(
    session: _Session, quietly: Callable[[str, Callable[[], Any]], Any]
) -> dict[str, Any]:
    """Each tutorial encoder's FP32 and INT8 latency (exports and quantizes once, then measures)."""
    from capgen.benchmarks import encoder_kinds

    session.echo("encoder kinds: vgg16, resnet50, inceptionv3, densenet201, xception")
    photos = fixtures.flickr_photos()
    prepared = encoder_kinds.prepare_kinds(
        fixtures.bench_home() / "encoder_kinds", photos, session.plan.int8, session.echo
    )
    return quietly(
        "encoder kinds",
        lambda: encoder_kinds.measure_kinds(
            prepared, photos[0], session.plan.encoder_kind_repetitions, session.echo
        ),
    )


def _peers_and_goals(
    session: _Session,
    quietly: Callable[[str, Callable[[], Any]], Any],
    model_dir: Path | None,
) -> dict[str, Any]:
    """Section "peers": the peers table, then what issue 25's goal rows need, then the rows."""
    from capgen.benchmarks import goals, peers
    from capgen.convert.quantize import calibration_pixels
    from capgen.runtime.captioner import resolve_model_dir

    plan, echo = session.plan, session.echo
    folder, _ = resolve_model_dir(model_dir)  # the installed default model unless told
    photos = fixtures.flickr_photos()[: plan.peer_photos]
    threads = len(os.sched_getaffinity(0))
    echo(
        f"peers: the encoder on other runtimes ({folder}, {len(photos)} photos, {threads} threads)"
    )
    started = time.monotonic()
    section: dict[str, Any] = {"run": {"date": machine_info()["date"], "model": str(folder)}}
    section["peers"] = quietly(
        "peers",
        lambda: peers.measure_peers(
            folder,
            photos,
            plan.peer_rounds,
            threads,
            session.logs / "peers",
            echo,
            session.weights,
            fixtures.bench_home() / "litert",
            lambda: calibration_pixels("xception"),
        ),
    )
    if plan.decoder_mode_repetitions > 0:
        from capgen.benchmarks.decoder_modes import measure_decoder_modes

        echo(f"decoder step on each engine ({plan.decoder_steps} words)")
        section["decoder"] = _or_error(
            echo,
            quietly,
            "decoder modes",
            lambda: measure_decoder_modes(
                folder, photos, plan.decoder_steps, plan.decoder_mode_repetitions, echo
            ),
        )
    if plan.goal_latency_repetitions > 0:
        tutorial = fixtures.prepare_tutorial7577(echo)
        if plan.int8:
            fixtures.ensure_int8(tutorial, echo)
        echo("goals: warm latency against the tutorial (auto and int8)")
        section["latency"] = _or_error(
            echo,
            quietly,
            "goals latency",
            lambda: goals.measure_latency(
                tutorial,
                session.weights,
                fixtures.flickr_photos(),
                plan.goal_latency_repetitions,
                session.logs,
                echo,
            ),
        )
    if plan.goal_batch_repetitions > 0:
        echo("goals: throughput on 1, 2, … cores (benchmarks/many_cores.py)")
        section["many_cores"] = _or_error(
            echo,
            quietly,
            "many cores",
            lambda: goals.many_cores(
                folder,
                photos,
                plan.goal_serve_requests,
                plan.goal_batch_repetitions,
                plan.goal_serve_requests > 0,
                session.logs,
            ),
        )
    section["seconds"] = round(time.monotonic() - started, 1)  # the whole section, waits included
    section["goals"] = goals.goal_rows(
        section["peers"], section.get("latency"), section.get("many_cores")
    )
    for line in goals.markdown(section["goals"], section.get("many_cores")):
        echo(line)
    return section


def _web(
    session: _Session,
    quietly: Callable[[str, Callable[[], Any]], Any],
    model_dir: Path | None,
) -> dict[str, Any]:
    """Section "web": the site in Chromium (web_bench.py), or why it was skipped or failed."""
    from capgen.benchmarks import web_bench

    plan, echo = session.plan, session.echo
    reason = web_bench.why_not(model_dir)
    if reason is not None:
        echo(f"web: skipped: {reason}")
        return {"skipped": reason}
    photos = web_bench.example_photos()
    echo(
        f"web: the default model's site (INT8) in headless Chromium, {web_bench.THREADS} threads, "
        f"{len(photos)} photos × {plan.web_repetitions}"
    )
    try:
        section = dict(
            quietly(
                "web",
                lambda: web_bench.measure_web(model_dir, photos, plan.web_repetitions, echo),
            )
        )
    except Exception as error:  # the other sections' results still get written
        echo(f"  web failed: {error}")
        return {"error": str(error)}
    goal = section["goal"]
    echo(
        f"  goal (issue 27): {goal['what']}: {goal['value']:.3f} {goal['target']}: "
        f"{'met' if goal['met'] else 'NOT met'}"
    )
    return section


def _or_error(
    echo: Echo, quietly: Callable[[str, Callable[[], Any]], Any], name: str, part: Callable[[], Any]
) -> dict[str, Any]:
    """A goal measurement's result, or {"error": why}: one failing part leaves the others' rows."""
    try:
        return dict(quietly(name, part))
    except Exception as error:
        echo(f"  {name} failed: {error}")
        return {"error": str(error)}


def _previous_results(output_dir: Path) -> dict[str, Any] | None:
    """The folder's results.json, to merge a section run into (None: none, or not readable)."""
    import json

    try:
        previous = json.loads((output_dir / "results.json").read_text())
    except (OSError, ValueError):
        return None
    return previous if isinstance(previous, dict) and "machine" in previous else None


def check_sections(sections: Sequence[str] | None) -> set[str]:
    """The sections to run (all when None); an unknown name is a one-line InputError."""
    from capgen.runtime.errors import InputError

    chosen = set(sections or SECTIONS)
    unknown = sorted(chosen - set(SECTIONS))
    if unknown:
        raise InputError(
            f"unknown bench section {', '.join(unknown)}; sections: {', '.join(SECTIONS)}"
        )
    return chosen


def run_benchmarks(
    output_dir: Path,
    quick: bool = False,
    echo: Echo = print,
    plan: Plan | None = None,
    sections: Sequence[str] | None = None,
    model_dir: Path | None = None,
) -> dict[str, Any]:
    """Run the sections (all by default), write results.json, RESULTS.md and the breakdown chart.

    With `sections`, only those run and their results replace the same keys of the
    folder's existing results.json (the rest stays as that run measured it).
    `model_dir`: the model the peers section measures (default: the installed default model).
    """
    from capgen.benchmarks.report import OUTPUT_FILES, write_outputs
    from capgen.benchmarks.results_folder import ResultsFolder

    plan = plan or (QUICK if quick else FULL)
    chosen = check_sections(sections)
    output_dir = Path(output_dir)
    ResultsFolder(output_dir).check(OUTPUT_FILES)  # before the run, not ten minutes into it
    machine = machine_info()
    previous = _previous_results(output_dir) if sections else None
    results: dict[str, Any] = previous or {
        "machine": machine,
        "plan": asdict(plan),
        "quick": quick,
        "models": {},
    }
    if previous is not None:
        results.setdefault("section_runs", {})
        for name in chosen:
            results["section_runs"][name] = {
                "machine": machine,
                "plan": asdict(plan),
                "quick": quick,
            }
    echo(f"load average at start: {machine['load_average_at_start']}")
    with tempfile.TemporaryDirectory(prefix="capgen-bench-") as scratch:
        session = _Session(plan, echo, Path(scratch), provider_venv="tutorial" in chosen)
        quietness: dict[str, dict[str, Any]] = dict(results.get("quietness") or {})

        def quietly(name: str, section: Callable[[], Any]) -> Any:
            result, how = measured_quietly(
                section, echo, name, plan.quiet_max_wait, plan.noisy_retries
            )
            quietness[name] = how.as_dict()
            return result

        if chosen & {"tutorial", "ceiling", "encoder-kinds", "int8-accuracy"}:
            _tutorial_sections(session, results, chosen, quietly)
        if "peers" in chosen and plan.peer_rounds > 0:
            try:
                results["peers"] = _peers_and_goals(session, quietly, model_dir)
            except Exception as error:  # the other sections' results still get written
                echo(f"  peers failed: {error}")
                results["peers"] = {"error": str(error)}
        if "web" in chosen and plan.web_repetitions > 0:
            results["web"] = _web(session, quietly, model_dir)
    results["quietness"] = quietness
    results["noisy_sections"] = [name for name, how in quietness.items() if not how["quiet"]]
    write_outputs(results, output_dir)
    echo(f"wrote {output_dir / 'results.json'}, RESULTS.md, latency_breakdown.png")
    return results


def _tutorial_sections(
    session: _Session,
    results: dict[str, Any],
    chosen: set[str],
    quietly: Callable[[str, Callable[[], Any]], Any],
) -> None:
    """Sections 1-9 and the INT8 accuracy: capgen against the tutorial on its two models."""
    plan, echo = session.plan, session.echo
    models = [fixtures.prepare_tutorial7577(echo)]
    default = fixtures.prepare_default(echo) if plan.include_default_model else None
    if default is not None:
        models.append(default)
    else:
        echo(
            "default model not found (models/photo/model_N.h5): benchmarking the 7,577-word decoder only"
        )
    if plan.int8:
        for model in models:
            fixtures.ensure_int8(model, echo)
    primary = models[-1]

    for model in models if "tutorial" in chosen else []:
        echo(f"model {model.name}: {model.note}")
        entry: dict[str, Any] = {"note": model.note, "primary": model is primary}
        try:
            entry["cold_start"] = quietly(
                f"{model.name} cold start", partial(_cold_start, session, model)
            )
            entry.update(
                quietly(
                    f"{model.name} warm",
                    partial(_warm, session, model, primary=model is primary),
                )
            )
        except Exception as error:  # one broken model must not lose the other's results
            echo(f"  {model.name} failed: {error}")
            entry = {"note": model.note, "primary": False, "error": str(error)}
        results["models"][model.name] = entry
    if "ceiling" in chosen:
        echo("ceiling (onnxruntime CPU provider: best FP32 and INT8 GFLOP/s over kernels, threads)")
        results["ceiling"] = quietly(
            "ceiling",
            lambda: measure_ceilings(
                plan.ceiling_kernels, plan.ceiling_repeats, results["machine"]["cpu_flags"]
            ),
        )
    if "ceiling" in results and models[0].name in results["models"]:
        results["encoder_efficiency"] = encoder_efficiency(
            results["models"][models[0].name], results["ceiling"]
        )
    if plan.encoder_kind_repetitions > 0 and "encoder-kinds" in chosen:
        results["encoder_kinds"] = _encoder_kinds(session, quietly)
    default_ok = default is not None and "error" not in results["models"].get(default.name, {})
    if plan.int8 and default_ok and plan.int8_eval_scenes > 0 and "int8-accuracy" in chosen:
        from capgen.benchmarks.int8_eval import evaluate_int8

        assert default is not None
        echo(f"INT8 vs FP32 captions on {plan.int8_eval_scenes} test-split scenes")
        results["int8_accuracy"] = evaluate_int8(default.model_dir, plan.int8_eval_scenes)


def smoke_plan() -> Plan:
    """The smallest plan that still runs every code path (tests)."""
    return replace(
        QUICK,
        repetitions=1,
        cold_warmup=False,
        warm_warmup=False,
        latency_beams=(1,),
        int8=False,
        fast_decoder=False,
        # One photo: each is a whole 32-word caption in the tutorial arm (~1.6 s of CPU).
        throughput_photos=1,
        decoder_steps=2,
        scaling_lengths=(1, 2),
        beam_sizes=(1, 2),
        encoder_batches=(1, 2),
        ceiling_kernels=SMOKE_KERNELS,
        ceiling_repeats=1,
        include_default_model=False,
        int8_eval_scenes=0,
        encoder_kind_repetitions=0,
        peer_rounds=0,  # its own smoke test: tests/benchmarks/test_peers_section.py
        web_repetitions=0,  # its own smoke test: tests/benchmarks/test_web_section.py
        quiet_max_wait=0.0,
        noisy_retries=0,
        openvino=False,
    )

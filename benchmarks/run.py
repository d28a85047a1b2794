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
plus the INT8 encoder's caption accuracy on the default model's test split.
The encoder section also times capgen with onnxruntime-openvino's
OpenVINOExecutionProvider (FP32 and INT8 encoders), in workers that run in a
venv built once by the README's recipe (benchmarks/provider_venv.py).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
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
from capgen.benchmarks.processes import Worker, run_cold
from capgen.benchmarks.quiet import measured_quietly
from capgen.benchmarks.stats import summarize

Echo = Callable[[str], None]
SETTLE_SECONDS = 0.02


@dataclass(frozen=True)
class Plan:
    """How much to measure; FULL for the committed results, QUICK for a smoke run."""

    repetitions: int = 5
    cold_repetitions: int = 3
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
)


def _capgen_cli() -> str:
    beside = Path(os.sys.executable).with_name("capgen")
    return str(beside) if beside.is_file() else "capgen"


class _Session:
    """State shared by the sections of one run."""

    def __init__(self, plan: Plan, echo: Echo, logs: Path) -> None:
        self.plan = plan
        self.echo = echo
        self.logs = logs
        from capgen.convert.weights import fetch_imagenet_weights

        self.weights = fetch_imagenet_weights()
        self.openvino_python: Path | None = None
        if plan.openvino:
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
        os.sys.executable,
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
        os.sys.executable,
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
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            # Let the previous arm's thread pools stop spinning before timing the next.
            time.sleep(SETTLE_SECONDS)
            answers[name].append(workers[name].request(op, **arguments))
    return answers


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
        warmup = {"op": "latency", "photo": photos[0], "beam": 1}
        for worker in [*workers.values(), *openvino.values()]:
            worker.request(**warmup)

        result["latency"] = {}
        for beam in plan.latency_beams:
            reps = plan.repetitions if beam == 1 else plan.beam_repetitions
            answers = _alternate(
                workers,
                reps,
                lambda rep, b=beam: ("latency", {"photo": photos[rep % len(photos)], "beam": b}),
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
                lambda rep: (
                    "decode",
                    {"photo": photos[rep % len(photos)], "steps": steps, "beam": 1},
                ),
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
                    lambda rep, n=batch: (
                        "encode",
                        {"photo": photos[rep % len(photos)], "batch": n},
                    ),
                )
                result["encoder"][f"batch{batch}"] = {"seconds": _seconds(answers)}
            result["scaling_length"] = {}
            for length in plan.scaling_lengths:
                answers = _alternate(
                    workers,
                    max(plan.repetitions // 2, 1),
                    lambda rep, n=length: (
                        "decode",
                        {"photo": photos[rep % len(photos)], "steps": n, "beam": 1},
                    ),
                )
                result["scaling_length"][str(length)] = _seconds(answers)
            capgen_only = {"capgen": workers["capgen"]}
            result["scaling_beam"] = {}
            for beam in plan.beam_sizes:
                answers = _alternate(
                    capgen_only,
                    plan.repetitions,
                    lambda rep, b=beam: (
                        "decode",
                        {
                            "photo": photos[rep % len(photos)],
                            "steps": plan.decoder_steps,
                            "beam": b,
                        },
                    ),
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
                    lambda rep, n=batch: (
                        "encode",
                        {"photo": photos[rep % len(photos)], "batch": n},
                    ),
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


def run_benchmarks(
    output_dir: Path, quick: bool = False, echo: Echo = print, plan: Plan | None = None
) -> dict[str, Any]:
    """Run every section, write results.json, RESULTS.md and the breakdown chart; return the results."""
    from capgen.benchmarks.report import OUTPUT_FILES, write_outputs
    from capgen.benchmarks.results_folder import ResultsFolder

    plan = plan or (QUICK if quick else FULL)
    output_dir = Path(output_dir)
    ResultsFolder(output_dir).check(OUTPUT_FILES)  # before the run, not ten minutes into it
    results: dict[str, Any] = {
        "machine": machine_info(),
        "plan": asdict(plan),
        "quick": quick,
        "models": {},
    }
    echo(f"load average at start: {results['machine']['load_average_at_start']}")
    with tempfile.TemporaryDirectory(prefix="capgen-bench-") as scratch:
        session = _Session(plan, echo, Path(scratch))
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
        quietness: dict[str, dict[str, Any]] = {}

        def quietly(name: str, section: Callable[[], Any]) -> Any:
            result, how = measured_quietly(
                section, echo, name, plan.quiet_max_wait, plan.noisy_retries
            )
            quietness[name] = how.as_dict()
            return result

        for model in models:
            echo(f"model {model.name}: {model.note}")
            entry: dict[str, Any] = {"note": model.note, "primary": model is primary}
            try:
                entry["cold_start"] = quietly(
                    f"{model.name} cold start", lambda m=model: _cold_start(session, m)
                )
                entry.update(
                    quietly(
                        f"{model.name} warm",
                        lambda m=model: _warm(session, m, primary=m is primary),
                    )
                )
            except Exception as error:  # one broken model must not lose the other's results
                echo(f"  {model.name} failed: {error}")
                entry = {"note": model.note, "primary": False, "error": str(error)}
            results["models"][model.name] = entry
        echo("ceiling (onnxruntime CPU provider: best FP32 and INT8 GFLOP/s over kernels, threads)")
        results["ceiling"] = quietly(
            "ceiling",
            lambda: measure_ceilings(
                plan.ceiling_kernels, plan.ceiling_repeats, results["machine"]["cpu_flags"]
            ),
        )
        results["encoder_efficiency"] = encoder_efficiency(
            results["models"][models[0].name], results["ceiling"]
        )
        if plan.encoder_kind_repetitions > 0:
            results["encoder_kinds"] = _encoder_kinds(session, quietly)
        default_ok = default is not None and "error" not in results["models"][default.name]
        if plan.int8 and default_ok and plan.int8_eval_scenes > 0:
            from capgen.benchmarks.int8_eval import evaluate_int8

            echo(f"INT8 vs FP32 captions on {plan.int8_eval_scenes} test-split scenes")
            results["int8_accuracy"] = evaluate_int8(default.model_dir, plan.int8_eval_scenes)
    results["quietness"] = quietness
    results["noisy_sections"] = [name for name, how in quietness.items() if not how["quiet"]]
    write_outputs(results, output_dir)
    echo(f"wrote {output_dir / 'results.json'}, RESULTS.md, latency_breakdown.png")
    return results


def smoke_plan() -> Plan:
    """The smallest plan that still runs every code path (tests)."""
    return replace(
        QUICK,
        repetitions=1,
        latency_beams=(1,),
        int8=False,
        fast_decoder=False,
        throughput_photos=2,
        decoder_steps=2,
        scaling_lengths=(1, 2),
        beam_sizes=(1, 2),
        encoder_batches=(1, 2),
        ceiling_kernels=SMOKE_KERNELS,
        ceiling_repeats=1,
        include_default_model=False,
        int8_eval_scenes=0,
        encoder_kind_repetitions=0,
        quiet_max_wait=0.0,
        noisy_retries=0,
        openvino=False,
    )

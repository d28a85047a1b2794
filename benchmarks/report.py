"""results.json, RESULTS.md and latency_breakdown.png from one run's results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from capgen.benchmarks.efficiency import NOT_A_CEILING
from capgen.benchmarks.efficiency import markdown as efficiency_markdown
from capgen.benchmarks.results_folder import ResultsFolder
from capgen.benchmarks.stats import ratio_range, speedup

STAGES = ("imports", "model_load", "preprocess", "encode", "decode")
# The part of a cold run's wall time no stage covers (starting the interpreter, exiting):
# stacked on the stages so that each bar ends at the run's measured median wall time.
REST = "process start and exit"
# name -> (what, comparison, target); "x" targets are speed-ups, "<=" are fractions.
TARGETS: dict[str, tuple[str, str, float]] = {
    "warm_latency_fp32": ("warm latency, one photo, greedy, FP32 encoder", ">=", 30.0),
    "warm_latency_int8": ("warm latency, one photo, greedy, INT8 encoder", ">=", 75.0),
    "warm_latency_int8_fast": (
        "warm latency, greedy, INT8 encoder + opt-in fast decoder step",
        ">=",
        75.0,
    ),
    "cold_start": ("cold start (fresh process, one photo)", ">=", 20.0),
    "decoder": ("decoder alone, one caption (32 words in a full run)", ">=", 500.0),
    "decoder_fast": ("decoder alone, one caption, opt-in fast step", ">=", 500.0),
    "peak_memory": ("peak memory of a cold process, capgen ÷ baseline", "<=", 0.2),
    "encoder_vs_ceiling": (
        "encoder GFLOP/s ÷ the FP32 ceiling's GFLOP/s (FP32, widest batch)",
        ">=",
        0.75,
    ),
    "int8_speedup": ("INT8 encoder speed-up over FP32 (batch 1)", ">=", 2.0),
    "int8_identical": ("captions identical to FP32 with INT8", ">=", 0.9),
    "int8_bleu4_loss": ("BLEU-4 lost with INT8", "<=", 0.02),
}


def _fmt_stats(stats: dict[str, Any], scale: float = 1.0, unit: str = "s", digits: int = 3) -> str:
    median = stats["median"] * scale
    return (
        f"{median:.{digits}f} {unit} (IQR {stats['q1'] * scale:.{digits}f}–{stats['q3'] * scale:.{digits}f}, "
        f"min–max {stats['min'] * scale:.{digits}f}–{stats['max'] * scale:.{digits}f}, n={stats['n']})"
    )


def headline_ratios(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target's measured value, per model where the metric is per model ("metric@model")."""
    found: dict[str, dict[str, Any]] = {}

    def add(
        key: str, value: float, spread: tuple[float, float] | None, where: str, flag: str = ""
    ) -> None:
        what, comparison, target = TARGETS[key]
        met = not flag and (value >= target if comparison == ">=" else value <= target)
        found[f"{key}@{where}"] = {
            "metric": key,
            "what": what,
            "value": value,
            "spread": spread,
            "target": f"{comparison} {target:g}",
            "met": bool(met),
            "where": where,
            "flag": flag,
        }

    def add_speedup(key: str, base: dict[str, Any], fast: dict[str, Any], where: str) -> None:
        add(key, speedup(base, fast), ratio_range(base, fast), where)

    for name, model in _measured(results).items():
        latency = model["latency"]["beam1"]["seconds"]
        add_speedup("warm_latency_fp32", latency["baseline"], latency["capgen"], name)
        if "capgen_int8" in latency:
            add_speedup("warm_latency_int8", latency["baseline"], latency["capgen_int8"], name)
        if "capgen_int8_fast" in latency:
            add_speedup(
                "warm_latency_int8_fast", latency["baseline"], latency["capgen_int8_fast"], name
            )
        cold = model["cold_start"]["wall_seconds"]
        add_speedup("cold_start", cold["baseline"], cold["capgen"], name)
        memory = model["cold_start"]["peak_rss_mb"]
        add("peak_memory", memory["capgen"]["median"] / memory["baseline"]["median"], None, name)
        if "decoder" in model:
            decoder = model["decoder"]["seconds"]
            where = f"{name}, {model['decoder']['steps']} words"
            add_speedup("decoder", decoder["baseline"], decoder["capgen"], where)
            if "capgen_int8_fast" in decoder:
                add_speedup("decoder_fast", decoder["baseline"], decoder["capgen_int8_fast"], where)
        encoder = model.get("encoder", {}).get("batch1", {}).get("seconds", {})
        if "capgen_int8" in encoder:
            add_speedup("int8_speedup", encoder["capgen"], encoder["capgen_int8"], name)
    efficiency = results.get("encoder_efficiency", {})
    widest = max(
        (k for k in efficiency if k.startswith("capgen_batch")),
        key=lambda k: int(k.removeprefix("capgen_batch")),
        default=None,
    )
    if widest and efficiency[widest]["share_of_ceiling"] is not None:
        entry = efficiency[widest]
        add(
            "encoder_vs_ceiling",
            entry["share_of_ceiling"],
            None,
            f"Xception FP32 {widest[7:]}",
            NOT_A_CEILING if entry["exceeds_ceiling"] else "",
        )
    accuracy = results.get("int8_accuracy")
    if accuracy:
        where = f"default, {accuracy['images']} test scenes"
        add("int8_identical", accuracy["identical_share"], None, where)
        add("int8_bleu4_loss", accuracy["fp32"]["bleu4"] - accuracy["int8"]["bleu4"], None, where)
    return found


def _stage_rows(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Cold-process stage times per (arm, model) for the chart."""
    rows: dict[str, dict[str, float]] = {}
    for name, model in _measured(results).items():
        baseline = dict(model["cold_start"]["stages"]["baseline"])
        # The tutorial's extract_features reads and scales the photo inside its
        # "encode" stage; the warm run timed those lines alone, so split them out.
        preprocess = min(
            model["latency"]["beam1"]["stages"]["baseline"].get("preprocess", 0.0),
            baseline.get("encode", 0.0),
        )
        baseline["preprocess"] = preprocess
        baseline["encode"] = baseline.get("encode", 0.0) - preprocess
        capgen = dict(model["cold_start"]["stages"]["capgen"])
        walls = model["cold_start"]["wall_seconds"]
        for arm, stages in (("baseline", baseline), ("capgen", capgen)):
            covered = sum(stages.get(stage, 0.0) for stage in STAGES)
            stages[REST] = max(float(walls[arm]["median"]) - covered, 0.0)
        rows[f"tutorial (Keras)\n{name}"] = baseline
        rows[f"capgen\n{name}"] = capgen
    return rows


def _chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _stage_rows(results)
    if not rows:  # a run of other sections only: nothing to break down
        figure = plt.figure(figsize=(6, 1.2))
        figure.text(0.5, 0.5, "no cold-start section in this run", ha="center", va="center")
        figure.savefig(path, dpi=110)
        plt.close(figure)
        return
    figure, (stacked, per_stage) = plt.subplots(1, 2, figsize=(13, 1.2 + 0.9 * len(rows)))
    stacked_stages = (*STAGES, REST)
    colours = dict(
        zip(
            stacked_stages,
            ["#8c8c8c", "#4c72b0", "#55a868", "#c44e52", "#dd8452", "#d9d9d9"],
            strict=True,
        )
    )
    labels = list(rows)
    for row_index, stages in enumerate(rows.values()):
        left = 0.0
        for stage in stacked_stages:
            value = stages.get(stage, 0.0)
            stacked.barh(
                row_index,
                value,
                left=left,
                color=colours[stage],
                label=stage.replace("_", " ") if row_index == 0 else None,
            )
            left += value
        stacked.text(left, row_index, f" {left:.2f} s", va="center", fontsize=9)
    stacked.set_yticks(range(len(labels)), labels, fontsize=8)
    stacked.invert_yaxis()
    stacked.set_xlabel("seconds")
    stacked.set_title("fresh process, one photo, greedy (stacked; ends at the median wall time)")
    stacked.legend(loc="lower right", fontsize=8)
    height = 0.8 / len(rows)
    palette = ["#c44e52", "#4c72b0", "#dd8452", "#55a868"]
    for row_index, (label, stages) in enumerate(rows.items()):
        values = [max(stages.get(stage, 0.0), 1e-5) for stage in STAGES]
        positions = [i - 0.4 + (row_index + 0.5) * height for i in range(len(STAGES))]
        per_stage.barh(
            positions,
            values,
            height=height,
            label=label.replace("\n", " · "),
            color=palette[row_index % len(palette)],
        )
    per_stage.set_yticks(range(len(STAGES)), [s.replace("_", " ") for s in STAGES])
    per_stage.invert_yaxis()
    per_stage.set_xscale("log")
    per_stage.set_xlabel("seconds (log scale)")
    per_stage.set_title("each stage")
    per_stage.legend(fontsize=7)
    figure.suptitle("Where the time goes: the tutorial's Keras code vs capgen")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _measured(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: model for name, model in results["models"].items() if "error" not in model}


def _quietness_lines(results: dict[str, Any]) -> list[str]:
    """How busy the other processes were during each section; a loud banner for a noisy run."""
    quietness = results.get("quietness") or {}
    if not quietness:
        return []
    noisy = results.get("noisy_sections") or []
    lines = [
        (
            f"- **NOISY RUN**: other processes used the CPU during {', '.join(noisy)}; "
            "those figures say as much about the neighbours as about capgen. Do not commit them."
            if noisy
            else "- quiet run: other processes stayed below the threshold in every section"
        ),
        "- other processes' CPU while each section ran (cores; load average before → after; "
        "waited; attempts):",
    ]
    for name, how in quietness.items():
        mark = "" if how["quiet"] else " **noisy**"
        lines.append(
            f"  - {name}: {how['other_cores']:.2f}{mark}; {how['load_average_before']:.2f} → "
            f"{how['load_average_after']:.2f}; {how['waited_seconds']:.0f} s; {how['attempts']}"
        )
    return lines


def _markdown(results: dict[str, Any]) -> str:
    machine = results["machine"]
    lines = [
        "# capgen vs the tutorial's Keras code",
        "",
        f"Run {machine['date']}{' (QUICK smoke run)' if results.get('quick') else ''}. "
        "Both arms ran in the same run on the same machine, alternating request by request; every "
        "figure is a median with its IQR and min–max; a speed-up is baseline median ÷ capgen median, "
        "with the range the IQRs allow in brackets. Regenerate with `capgen bench` (or `make bench`).",
        "",
        "## Machine",
        f"- CPU: {machine['cpu']}, {machine['logical_cores']} logical cores, {machine['memory_gib']} GiB; "
        f"flags: {', '.join(machine['cpu_flags'])}",
        f"- load average at start: {machine['load_average_at_start']} (the machine is shared)",
        *_quietness_lines(results),
        f"- Python {machine['python']}, {machine['platform']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()),
        f"- environment: {machine['env'] or 'no OPENBLAS/OMP overrides'}",
        "",
        "## What runs",
        "- **baseline**: `benchmarks/tutorial/main.py`, the tutorial's inference code line for line "
        "(Keras Xception `predict` on `Image.open(f).resize((299, 299))` scaled by `/127.5 - 1`, then per "
        "word `texts_to_sequences` → `pad_sequences` → `model.predict` → `argmax` → linear `word_for_id`). "
        "A Keras 2 `.h5` decoder is loaded with tf_keras (Keras 2, with tf_keras's Xception), a Keras 3 "
        "`.keras` decoder with Keras 3 (with Keras 3's Xception); tokenizer and `pad_sequences` come from "
        "tf_keras. Same ImageNet weights file as capgen's encoder. Beam search: the tutorial follow-ups' "
        "loop, one `predict` per hypothesis per word.",
        "- **capgen**: the public API (`Captioner(model_dir, int8=…)`, `.caption`, `.caption_batch`, "
        "`.features`, `.decode_features`) in a warm process; cold start is the real "
        "`capgen caption PHOTO --model DIR --beam-size 1` command; the stage breakdown comes from "
        "`benchmarks/capgen_probe.py`, the same work with a clock between stages.",
        "- Each arm runs in its own process (TensorFlow and onnxruntime never share one); peak RSS is the "
        "process's own high-water mark.",
        "",
        "## Targets",
        "| metric | measured | target | met | on |",
        "|---|---|---|---|---|",
    ]
    for entry in headline_ratios(results).values():
        spread = f" ({entry['spread'][0]:.3g}–{entry['spread'][1]:.3g})" if entry["spread"] else ""
        flag = f": **{entry['flag']}**" if entry.get("flag") else ""
        lines.append(
            f"| {entry['what']} | {entry['value']:.3g}{spread}{flag} | {entry['target']} | "
            f"{'yes' if entry['met'] else 'NO'} | {entry['where']} |"
        )
    for name, model in results["models"].items():
        lines += ["", f"## Model `{name}`", "", model["note"] + ".", ""]
        if "error" in model:
            lines.append(f"**Not measured: {model['error']}**")
            continue
        cold = model["cold_start"]
        lines.append(f"### Cold start (fresh process, one photo: `{Path(cold['photo']).name}`)")
        for arm, stats in cold["wall_seconds"].items():
            lines.append(
                f"- {arm}: {_fmt_stats(stats)}; peak RSS {_fmt_stats(cold['peak_rss_mb'][arm], unit='MB', digits=0)}"
            )
        for arm, stages in cold["stages"].items():
            lines.append(
                f"- {arm} stages: " + ", ".join(f"{k} {v:.3f} s" for k, v in stages.items())
            )
        for beam_key, entry in model["latency"].items():
            lines.append(f"### Warm latency, end to end, {beam_key.replace('beam', 'beam ')}")
            for arm, stats in entry["seconds"].items():
                lines.append(f"- {arm}: {_fmt_stats(stats, 1000, 'ms', 1)}")
            base = entry["seconds"]["baseline"]
            for arm in (a for a in entry["seconds"] if a != "baseline"):
                lines.append(
                    f"- speed-up {arm}: {speedup(base, entry['seconds'][arm]):.1f}x "
                    f"({ratio_range(base, entry['seconds'][arm])[0]:.1f}–{ratio_range(base, entry['seconds'][arm])[1]:.1f})"
                )
            lines.append(
                f"- same caption as the baseline (capgen FP32): {entry['same_caption_as_baseline']}"
            )
            for arm, stages in entry["stages"].items():
                lines.append(
                    f"- {arm} stages: "
                    + ", ".join(f"{k} {v * 1000:.2f} ms" for k, v in stages.items())
                )
        if "decoder" in model:
            entry = model["decoder"]
            lines.append(f"### Decoder alone, one caption of {entry['steps']} words")
            for arm, stats in entry["seconds"].items():
                lines.append(
                    f"- {arm}: {_fmt_stats(stats, 1000, 'ms', 2)} ({entry['words'][arm]} words)"
                )
            base = entry["seconds"]["baseline"]
            for arm in (a for a in entry["seconds"] if a != "baseline"):
                lines.append(f"- speed-up {arm}: {speedup(base, entry['seconds'][arm]):.0f}x")
        if model.get("encoder"):
            lines.append("### Encoder alone")
            for batch_key, entry in model["encoder"].items():
                batch = int(batch_key.removeprefix("batch"))
                for arm, stats in entry["seconds"].items():
                    lines.append(
                        f"- {batch_key} {arm}: {_fmt_stats(stats, 1000, 'ms', 1)} "
                        f"= {stats['median'] * 1000 / batch:.1f} ms per image"
                    )
        if "throughput" in model:
            entry = model["throughput"]
            lines.append(
                f"### Throughput, a folder of {entry['photos']} photos, greedy, both cores"
            )
            for arm, stats in entry["images_per_second"].items():
                lines.append(f"- {arm}: {_fmt_stats(stats, 1, 'images/s', 2)}")
            base = entry["images_per_second"]["baseline"]["median"]
            for arm, stats in entry["images_per_second"].items():
                if arm != "baseline":
                    lines.append(f"- {arm} ÷ baseline: {stats['median'] / base:.1f}x")
        lines.append("### Peak memory of the warm workers (after all requests)")
        for arm, rss in model["worker_rss_mb"].items():
            lines.append(f"- {arm}: peak {rss['peak_rss_mb']:.0f} MB, now {rss['rss_mb']:.0f} MB")
        if "scaling_length" in model:
            lines += [
                "### Decode time vs caption length (greedy)",
                "| words | baseline | capgen | ratio |",
                "|---|---|---|---|",
            ]
            for length, entry in model["scaling_length"].items():
                lines.append(
                    f"| {length} | {entry['baseline']['median'] * 1000:.1f} ms | "
                    f"{entry['capgen']['median'] * 1000:.2f} ms | {speedup(entry['baseline'], entry['capgen']):.0f}x |"
                )
        if "scaling_beam" in model:
            lines += [
                "### capgen decode time vs beam size (32-word captions)",
                "| beam | capgen |",
                "|---|---|",
            ]
            for beam, stats in model["scaling_beam"].items():
                lines.append(f"| {beam} | {_fmt_stats(stats, 1000, 'ms', 2)} |")
    lines += efficiency_markdown(results)
    lines += _peers_markdown(results)
    lines += _web_markdown(results)
    if results.get("encoder_kinds"):
        from capgen.benchmarks.encoder_kinds import markdown

        lines += markdown(results["encoder_kinds"])
    accuracy = results.get("int8_accuracy")
    if accuracy:
        lines += [
            "",
            f"## INT8 encoder accuracy ({accuracy['images']} test-split scenes, greedy)",
            f"- identical captions to FP32: {accuracy['identical_share'] * 100:.1f}%",
            f"- feature cosine INT8 vs FP32: min {accuracy['cosine']['min']:.4f}, median {accuracy['cosine']['median']:.4f}",
            "| metric | FP32 | INT8 | change |",
            "|---|---|---|---|",
        ]
        for metric in accuracy["fp32"]:
            fp32, int8 = accuracy["fp32"][metric], accuracy["int8"][metric]
            lines.append(f"| {metric} | {fp32:.4f} | {int8:.4f} | {int8 - fp32:+.4f} |")
        lines.append(f"- {accuracy.get('note', '')}")
    lines += ["", "![latency breakdown](latency_breakdown.png)", ""]
    return "\n".join(lines)


def _peers_markdown(results: dict[str, Any]) -> list[str]:
    """The peers table and issue 25's goal rows (section "peers"), with when they were run."""
    section = results.get("peers")
    if not section:
        return []
    if "error" in section:
        return ["", f"## Peers\n**Not measured: {section['error']}**"]
    from capgen.benchmarks import goals, peers

    run = (results.get("section_runs") or {}).get("peers")
    lines = peers.markdown(section["peers"])
    if run:  # merged into an earlier run's results: say when and where this one ran
        machine = run["machine"]
        lines.insert(
            2,
            f"Run {machine['date']} with `capgen bench --section peers` on {machine['cpu']}, "
            f"{machine['logical_cores']} logical cores, flags {', '.join(machine['cpu_flags'])} "
            "(the Machine section above is the earlier run's; load average at start "
            f"{machine['load_average_at_start']}; quietness: the peers, decoder modes, goals "
            "latency and many cores entries under Machine).",
        )
    if section.get("decoder") and "error" not in section["decoder"]:
        from capgen.benchmarks.decoder_modes import markdown as decoder_markdown

        lines += decoder_markdown(section["decoder"])
    return lines + goals.markdown(section["goals"], section.get("many_cores"))


def _web_markdown(results: dict[str, Any]) -> list[str]:
    """Section "web": the captions in Chromium, their stages, issue 27's goal row."""
    section = results.get("web")
    if not section:
        return []
    from capgen.benchmarks import web_bench

    lines = web_bench.markdown(section)
    run = (results.get("section_runs") or {}).get("web")
    if run and "browser" in section:  # merged into an earlier run's results: say when this one ran
        machine = run["machine"]
        lines.insert(
            2,
            f"Run {machine['date']} with `capgen bench --section web` on {machine['cpu']}, "
            f"{machine['logical_cores']} logical cores (load average at start "
            f"{machine['load_average_at_start']}; quietness: the web entry under Machine).",
        )
    return lines


OUTPUT_FILES = ("results.json", "RESULTS.md", "latency_breakdown.png")


def write_outputs(results: dict[str, Any], output_dir: Path) -> None:
    results["targets"] = headline_ratios(results)
    folder = ResultsFolder(output_dir)
    folder.write_text("results.json", json.dumps(results, indent=2) + "\n")
    folder.write_text("RESULTS.md", _markdown(results))
    folder.write_with("latency_breakdown.png", lambda path: _chart(results, path))

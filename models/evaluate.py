"""Score captions of the synthetic test split: caption metrics and colour-shape binding.

Caption metrics are pycocoevalcap's BLEU-1..4, ROUGE-L and CIDEr on the
tutorial-cleaned references. METEOR and SPICE are left out: both run a Java
program, and capgen needs no Java. Captions are already lowercase and free of
punctuation, so the Java PTB tokenizer is not needed either (whitespace split).

The question the default model exists to answer is whether it names each
object's colour *and* shape: for every scene we parse (colour, shape) pairs
out of the caption and compare them with the ground truth drawn by
`scenes.py`, micro-averaged precision and recall, overall and by the number of
groups in the scene, plus the share of correctly named groups whose count
("two", "three") is also right.

    python -m capgen.models.evaluate DATASET MODEL_FOLDER --out models/default
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from capgen.models.flickr8k import END_TOKEN, START_TOKEN, Flickr8kDataset, clean_caption
from capgen.models.scenes import COLOURS, NUMBER_WORDS, SHAPES, load_ground_truth

Pair = tuple[str, str]
_COUNT_WORDS = {word: number for number, word in NUMBER_WORDS.items() if number > 1}
_SHAPE_WORDS = {**{s: s for s in SHAPES}, **{s + "s": s for s in SHAPES}}
_LOOK_BACK = 3  # words between a count/colour and its shape ("two small blue circles")


def parse_pairs(caption: str) -> dict[Pair, int]:
    """(colour, shape) -> count named in a caption; count 1 unless 'two'/'three' precede it."""
    words = clean_caption(caption).split()
    found: dict[Pair, int] = {}
    for position, word in enumerate(words):
        shape = _SHAPE_WORDS.get(word)
        if shape is None:
            continue
        window = words[max(0, position - _LOOK_BACK) : position]
        colours = [w for w in window if w in COLOURS]
        if not colours:
            continue
        count = next((_COUNT_WORDS[w] for w in reversed(window) if w in _COUNT_WORDS), 1)
        found[(colours[-1], shape)] = count
    return found


def truth_pairs(scene: dict[str, Any]) -> dict[Pair, int]:
    return {(g["colour"], g["shape"]): len(g["objects"]) for g in scene["groups"]}


@dataclass
class _Tally:
    true_positives: int = 0
    predicted: int = 0
    actual: int = 0
    counts_right: int = 0
    scenes: int = 0

    def add(self, predicted: dict[Pair, int], actual: dict[Pair, int]) -> None:
        hits = predicted.keys() & actual.keys()
        self.true_positives += len(hits)
        self.predicted += len(predicted)
        self.actual += len(actual)
        self.counts_right += sum(predicted[p] == actual[p] for p in hits)
        self.scenes += 1

    def summary(self) -> dict[str, float | int]:
        return {
            "scenes": self.scenes,
            "precision": round(self.true_positives / max(self.predicted, 1), 4),
            "recall": round(self.true_positives / max(self.actual, 1), 4),
            "count_accuracy": round(self.counts_right / max(self.true_positives, 1), 4),
        }


def binding_scores(captions: dict[str, str], truth: dict[str, dict]) -> dict[str, dict]:
    """Precision/recall of (colour, shape) pairs: all scenes, by group count, single objects."""
    tallies: dict[str, _Tally] = {"all": _Tally(), "single_object": _Tally()}
    for name, caption in captions.items():
        scene = truth[name]
        predicted, actual = parse_pairs(caption), truth_pairs(scene)
        groups = len(scene["groups"])
        tallies["all"].add(predicted, actual)
        tallies.setdefault(f"{groups}_groups", _Tally()).add(predicted, actual)
        if groups == 1 and len(scene["groups"][0]["objects"]) == 1:
            tallies["single_object"].add(predicted, actual)
    return {key: tallies[key].summary() for key in sorted(tallies)}


def strip_tokens(description: str) -> str:
    """'<start> red circle <end>' -> 'red circle' (references for caption metrics)."""
    words = description.replace("<", " ").replace(">", " ").split()
    return " ".join(w for w in words if w not in (START_TOKEN, END_TOKEN))


def caption_scores(references: dict[str, list[str]], captions: dict[str, str]) -> dict[str, float]:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    names = sorted(captions)
    gts = {n: references[n] for n in names}
    res = {n: [captions[n] or "empty"] for n in names}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    scores = {f"BLEU-{i + 1}": round(float(b), 4) for i, b in enumerate(bleu)}
    scores["ROUGE-L"] = round(float(rouge), 4)
    scores["CIDEr"] = round(float(cider), 4)
    return scores


def evaluate_captions(dataset_root: Path, captions: dict[str, str]) -> dict[str, Any]:
    """All metrics for captions of (a subset of) the test split."""
    dataset = Flickr8kDataset(dataset_root)
    references = {
        n: [strip_tokens(d) for d in ds] for n, ds in dataset.descriptions("test").items()
    }
    return {
        "images": len(captions),
        "caption_metrics": caption_scores(references, captions),
        "colour_shape": binding_scores(captions, load_ground_truth(dataset_root)),
    }


def keras_greedy(
    model: Any, tokenizer: Any, features: np.ndarray, max_length: int, batch_size: int = 256
) -> list[str]:
    """The tutorial's greedy loop, batched over images: for quick checks before conversion."""
    index_word = tokenizer.index_word
    start = tokenizer.word_index[START_TOKEN]
    end = tokenizer.word_index[END_TOKEN]
    captions = []
    for offset in range(0, len(features), batch_size):
        photos = features[offset : offset + batch_size]
        sequences = [[start] for _ in photos]
        done = np.zeros(len(photos), bool)
        for _ in range(max_length):
            prefixes = np.zeros((len(photos), max_length), np.int32)
            for row, sequence in enumerate(sequences):
                tail = sequence[-max_length:]
                prefixes[row, max_length - len(tail) :] = tail
            chosen = np.argmax(model.predict_on_batch([photos, prefixes]), axis=1)
            for row, word in enumerate(chosen):
                if not done[row]:
                    sequences[row].append(int(word))
                    done[row] = word == end
            if done.all():
                break
        for sequence in sequences:
            words = [index_word.get(t, "") for t in sequence[1:] if t != end]
            captions.append(" ".join(w for w in words if w))
    return captions


def runtime_captions(
    model_dir: Path, image_paths: Sequence[Path], int8: bool = False, beam_size: int = 1
) -> list[str]:
    """Captions from a converted model folder via the runtime (the shipped path); greedy by default."""
    from capgen.runtime.captioner import Captioner

    captioner = Captioner(model_dir, int8=int8)
    results = captioner.caption_batch(list(image_paths), beam_size=beam_size, batch_size=16)
    return [r.text for r in results]  # type: ignore[union-attr]


def runtime_captions_from_cache(
    model_dir: Path, images_dir: Path, names: Sequence[str], beam_size: int = 1
) -> list[str] | None:
    """Captions by the runtime's decoder from features the folder's FP32 encoder already computed.

    The cache (`capgen.models.features`) is keyed by the encoder file's sha256,
    so it only applies to exactly this folder's encoder; None when it lacks an image.
    """
    from capgen.models.features import cache_path
    from capgen.runtime.captioner import Captioner
    from capgen.runtime.decoding import DecodingOptions

    captioner = Captioner(model_dir)
    path = cache_path(images_dir, captioner.manifest.path(captioner.manifest.encoder.file))
    if not path.is_file():
        return None
    with np.load(path) as stored:
        known = dict(zip(stored["names"].tolist(), stored["features"], strict=True))
    if not all(n in known for n in names):
        return None
    features = np.stack([known[n] for n in names])
    options = DecodingOptions(beam_size=beam_size)
    captions = []
    for start in range(0, len(names), 64):
        results = captioner.decode_features(features[start : start + 64], options)
        captions += [r.text for r in results]
    return captions


def _table(rows: dict[str, dict], keys: Sequence[str]) -> list[str]:
    lines = ["| subset | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(str(row[k]) for k in keys) + " |")
    return lines


def write_report(
    metrics: dict[str, Any], out_dir: Path, describe: Callable[[], list[str]] | None = None
) -> None:
    """metrics.json plus a human-readable EVALUATION.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    binding = metrics["colour_shape"]
    lines = [
        "# Default model: evaluation on the synthetic test split",
        "",
        f"{metrics['images']} test scenes, greedy decoding (beam 1) through the capgen runtime.",
        "METEOR and SPICE are not reported: both need Java.",
        *([f"Test features: {metrics['features']}."] if metrics.get("features") else []),
        "",
        "## Caption metrics (pycocoevalcap)",
        "",
        "| " + " | ".join(metrics["caption_metrics"]) + " |",
        "|---" * len(metrics["caption_metrics"]) + "|",
        "| " + " | ".join(str(v) for v in metrics["caption_metrics"].values()) + " |",
        "",
        "## Colour-shape binding",
        "",
        "A (colour, shape) pair counts as right when the caption names that colour",
        "on that shape; micro-averaged over scenes. `count_accuracy`: share of right",
        "pairs whose number (a / two / three) is also right.",
        "",
        *_table(binding, ["scenes", "precision", "recall", "count_accuracy"]),
        "",
    ]
    for variant, scores in metrics.get("variants", {}).items():
        lines += [
            f"## Variant: {variant}",
            "",
            "| " + " | ".join(scores["caption_metrics"]) + " |",
            "|---" * len(scores["caption_metrics"]) + "|",
            "| " + " | ".join(str(v) for v in scores["caption_metrics"].values()) + " |",
            "",
            *_table(scores["colour_shape"], ["scenes", "precision", "recall", "count_accuracy"]),
            "",
        ]
    if describe is not None:
        lines += describe()
    (out_dir / "EVALUATION.md").write_text("\n".join(lines) + "\n")


def _training_section(record_path: Path) -> list[str]:
    """A summary of training.json, when the report sits beside the trained model."""
    if not record_path.is_file():
        return []
    record = json.loads(record_path.read_text())
    lines = [
        "## Training",
        "",
        f"- encoder: `{record.get('encoder')}` ({record.get('feature_size')} features), "
        f"vocabulary {record.get('vocab_size')} ids, max_length {record.get('max_length')}",
        f"- {record.get('train_images')} train / {record.get('dev_images')} dev images, "
        f"{record.get('train_samples')} (photo, prefix) samples, batch {record.get('batch_size')}",
        f"- best dev loss at epoch {record.get('best_epoch')} of {record.get('epochs_run')}: "
        f"{min(record.get('val_loss', [float('nan')])):.4f}; {record.get('train_seconds')} s on 2 shared cores",
    ]
    if record.get("features_note"):
        lines.append(f"- features: {record['features_note']}")
    first = record.get("init_from")
    if first:
        lines.append(
            f"- continued (learning rate {record.get('learning_rate')}) from a first stage: "
            f"{first.get('train_images')} train images, best dev loss at epoch "
            f"{first.get('best_epoch')}: {min(first.get('val_loss', [float('nan')])):.4f}"
        )
    return [*lines, ""]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Evaluate a converted model folder on the scenes test split."
    )
    parser.add_argument("dataset", type=Path)
    parser.add_argument("model_dir", type=Path, help="a converted capgen model folder")
    parser.add_argument("--out", type=Path, help="write metrics.json and EVALUATION.md here")
    parser.add_argument("--captions", type=Path, help="also write every test caption here (JSON)")
    parser.add_argument(
        "--int8", action="store_true", help="also score the folder's INT8 encoder (greedy)"
    )
    parser.add_argument("--beam-size", type=int, help="also score beam search with this beam")
    parser.add_argument(
        "--cached-features",
        action="store_true",
        help="decode the FP32 features capgen.models.features cached for this folder's encoder "
        "(the decoder still runs in the runtime) instead of encoding the test images again",
    )
    args = parser.parse_args(argv)
    dataset = Flickr8kDataset(args.dataset)
    names = sorted(dataset.descriptions("test"))
    paths = [dataset.images_dir / n for n in names]
    cached = None
    if args.cached_features:
        cached = runtime_captions_from_cache(args.model_dir, dataset.images_dir, names)
        if cached is None:
            raise SystemExit("no cached features of every test image for this folder's encoder")
    texts = cached if cached is not None else runtime_captions(args.model_dir, paths)
    captions = dict(zip(names, texts, strict=True))
    metrics = evaluate_captions(args.dataset, captions)
    if cached is not None:
        metrics["features"] = (
            "computed once by the folder's FP32 encoder and cached by its sha256 "
            "(capgen.models.features); the runtime decodes them"
        )
    variants: dict[str, dict] = {}
    if args.int8:
        int8 = dict(zip(names, runtime_captions(args.model_dir, paths, int8=True), strict=True))
        variants["INT8 encoder, greedy"] = evaluate_captions(args.dataset, int8)
    if args.beam_size:
        beam = (
            runtime_captions_from_cache(args.model_dir, dataset.images_dir, names, args.beam_size)
            if cached is not None
            else None
        ) or runtime_captions(args.model_dir, paths, beam_size=args.beam_size)
        variants[f"FP32 encoder, beam {args.beam_size}"] = evaluate_captions(
            args.dataset, dict(zip(names, beam, strict=True))
        )
    if variants:
        metrics["variants"] = variants
    if args.captions:
        args.captions.write_text(json.dumps(captions, indent=1) + "\n")
    if args.out:
        write_report(metrics, args.out, lambda: _training_section(args.out / "training.json"))
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()

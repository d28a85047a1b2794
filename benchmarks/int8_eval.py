"""Does the INT8 encoder keep the captions? Measured on the default model's test split.

The test split is rebuilt from the scene generator (every scene is a pure
function of seed and index), so no dataset has to be shipped: the default
recipe generates `python -m capgen.models.scenes` with its defaults (seed 8,
3,000 train, 300 dev, 500 test), so the test scenes are indices 3,300 onwards;
none of them was used to train the model or calibrate the quantizer
(calibration uses kitchenware photos and scenes 0-15 of the train split).
Both encoders caption the same scenes greedily through the public API, and
`capgen.models.evaluate` scores both: BLEU, CIDEr and (colour, shape) precision/recall.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

TEST_SEED = 8
TEST_FIRST_INDEX = 3300  # after the recipe's 3,000 train and 300 dev scenes


def write_test_scenes(root: Path, count: int) -> list[Path]:
    """A Flickr8k-layout folder holding only the first `count` test-split scenes."""
    from capgen.models import scenes

    images = root / scenes.IMAGES_DIRNAME
    images.mkdir(parents=True)
    names, tokens, truth = [], [], {}
    for index in range(TEST_FIRST_INDEX, TEST_FIRST_INDEX + count):
        scene = scenes.sample_scene(TEST_SEED, index)
        (images / scene.name).write_bytes(scenes.render(scene, TEST_SEED, index))
        tokens += [
            f"{scene.name}#{k}\t{c}" for k, c in enumerate(scenes.captions(scene, TEST_SEED, index))
        ]
        truth[scene.name] = scene.ground_truth()
        names.append(scene.name)
    for split, filename in scenes.SPLIT_FILENAMES.items():
        (root / filename).write_text("\n".join(names) + "\n" if split == "test" else "")
    (root / scenes.TOKEN_FILENAME).write_text("\n".join(tokens) + "\n")
    (root / scenes.GROUND_TRUTH_FILENAME).write_text(
        json.dumps({"seed": TEST_SEED, "scenes": truth})
    )
    return [images / name for name in names]


def _summary(metrics: dict[str, Any]) -> dict[str, float]:
    captions = metrics["caption_metrics"]
    binding = metrics["colour_shape"]["all"]
    return {
        "bleu4": captions["BLEU-4"],
        "cider": captions["CIDEr"],
        "object_precision": binding["precision"],
        "object_recall": binding["recall"],
        "count_accuracy": binding["count_accuracy"],
    }


def evaluate_int8(model_dir: Path, count: int) -> dict[str, Any]:
    from capgen import Captioner
    from capgen.models.evaluate import evaluate_captions
    from capgen.models.evaluate_photo import encode

    with tempfile.TemporaryDirectory(prefix="capgen-int8-eval-") as scratch:
        root = Path(scratch)
        paths = write_test_scenes(root, count)
        fp32 = Captioner(model_dir)
        int8 = Captioner(model_dir, int8=True)
        texts = {
            name: [r.text for r in captioner.caption_batch(paths, beam_size=1)]  # type: ignore[union-attr]
            for name, captioner in (("fp32", fp32), ("int8", int8))
        }
        reference, quantized = encode(fp32, paths), encode(int8, paths)
        cosine = np.sum(reference * quantized, axis=1) / (
            np.linalg.norm(reference, axis=1) * np.linalg.norm(quantized, axis=1) + 1e-12
        )
        scores = {
            name: _summary(
                evaluate_captions(root, {p.name: t for p, t in zip(paths, captions, strict=True)})
            )
            for name, captions in texts.items()
        }
    identical = sum(a == b for a, b in zip(texts["fp32"], texts["int8"], strict=True))
    different = [
        {"image": p.name, "fp32": a, "int8": b}
        for p, a, b in zip(paths, texts["fp32"], texts["int8"], strict=True)
        if a != b
    ]
    return {
        "images": count,
        "identical_share": identical / count,
        "cosine": {"min": float(cosine.min()), "median": float(np.median(cosine))},
        "fp32": scores["fp32"],
        "int8": scores["int8"],
        "examples_that_differ": different[:5],
        "note": f"test-split scenes {TEST_FIRST_INDEX}–{TEST_FIRST_INDEX + count - 1} (seed {TEST_SEED}), "
        "greedy decoding, same decoder; only the encoder differs",
    }

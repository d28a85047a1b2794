"""capgen's greedy captions against the tutorial's own inference loop, token for token.

The tutorial side is `benchmarks/tutorial/main.py` itself, loaded from the
checkout and driven function by function: Keras Xception `predict` on
`Image.open(f).resize((299, 299))`, then one `model.predict` per word over
the pre-padded prefix, argmax, `word_for_id`. The capgen side is the
converted model folder run by the runtime with `beam_size=1`. Both start
from the same image file; neither shares a number with the other.

    python -m capgen.models.tutorial_parity MODEL_FOLDER model_N.h5 tokenizer.p \\
        --images DIR --names test-list.txt --limit 100 --out parity.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType

TUTORIAL_MAIN = Path(__file__).resolve().parents[1] / "benchmarks" / "tutorial" / "main.py"


@dataclass(frozen=True)
class ParityReport:
    images: int
    identical: int
    mismatches: list[dict[str, str]]

    @property
    def all_identical(self) -> bool:
        return self.identical == self.images


def load_tutorial() -> ModuleType:
    """The tutorial script as a module (it needs TensorFlow and tf_keras)."""
    if not TUTORIAL_MAIN.is_file():
        raise FileNotFoundError(f"{TUTORIAL_MAIN} is part of the capgen checkout, not the wheel")
    spec = importlib.util.spec_from_file_location("capgen_tutorial_main", TUTORIAL_MAIN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def tutorial_captions(
    model_file: Path, tokenizer_file: Path, weights: Path, images: Sequence[Path]
) -> list[str]:
    """The tutorial's raw output (`start ... end`) for each image."""
    tutorial = load_tutorial()
    model, tokenizer, xception = tutorial.load_everything(
        str(model_file), str(tokenizer_file), str(weights)
    )
    max_length = tutorial.model_max_length(model)
    captions = []
    for image in images:
        photo = tutorial.extract_features(str(image), xception)
        captions.append(tutorial.generate_desc(model, tokenizer, photo, max_length))
    return captions


def capgen_captions(model_dir: Path, images: Sequence[Path]) -> list[str]:
    """capgen's greedy captions in the tutorial's raw form (`start ... end`)."""
    from capgen.runtime.captioner import Captioner

    captioner = Captioner(model_dir)
    results = captioner.caption_batch(list(images), beam_size=1)
    return [result.raw for result in results]  # type: ignore[union-attr]


def compare(
    model_dir: Path, model_file: Path, tokenizer_file: Path, weights: Path, images: Sequence[Path]
) -> ParityReport:
    ours = capgen_captions(model_dir, images)
    theirs = tutorial_captions(model_file, tokenizer_file, weights, images)
    mismatches = [
        {"image": image.name, "capgen": a, "tutorial": b}
        for image, a, b in zip(images, ours, theirs, strict=True)
        if a.split() != b.split()
    ]
    return ParityReport(len(images), len(images) - len(mismatches), mismatches)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path, help="the converted capgen model folder")
    parser.add_argument("model", type=Path, help="the tutorial's model_N.h5")
    parser.add_argument("tokenizer", type=Path, help="the tutorial's tokenizer.p")
    parser.add_argument("--images", type=Path, required=True, help="folder of the images")
    parser.add_argument("--names", type=Path, required=True, help="a split list (one name a line)")
    parser.add_argument("--limit", type=int, default=100, help="the first N names of the list")
    parser.add_argument("--out", type=Path, help="write the report here as JSON")
    args = parser.parse_args(argv)
    from capgen.convert.weights import fetch_imagenet_weights
    from capgen.models.flickr8k import read_split

    names = read_split(args.names)[: args.limit]
    report = compare(
        args.model_dir,
        args.model,
        args.tokenizer,
        fetch_imagenet_weights(),
        [args.images / name for name in names],
    )
    text = json.dumps(asdict(report), indent=2) + "\n"
    if args.out:
        args.out.write_text(text)
    print(f"{report.identical} of {report.images} greedy captions identical to the tutorial's loop")


if __name__ == "__main__":
    main()

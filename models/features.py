"""Encoder features for a dataset, computed once with onnxruntime and cached.

The tutorial extracts features once and pickles them; we do the same, but
with the project's own encoder ONNX (exactly what the runtime will run) and a
cache keyed by the encoder file's sha256, so a changed encoder can never be
paired with stale features.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from capgen.convert.hashing import sha256_file
from capgen.runtime.atomic_write import atomic_writer

INPUT_SIZE = 299
BATCH_SIZE = 16


def load_image_uint8(path: Path) -> np.ndarray:
    """The runtime's own preprocessing (RGB, BICUBIC resize to 299x299, uint8 HWC),
    so training features are exactly what the runtime computes at caption time."""
    from capgen.runtime.preprocess import prepare

    return prepare(path, INPUT_SIZE, INPUT_SIZE)


def _batches(items: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


CHECKPOINT_EVERY = 512  # images between saves: an interrupted run loses at most this many


def cache_path(images_dir: Path, encoder_path: Path, cache_dir: Path | None = None) -> Path:
    """Where the features of `images_dir` under this exact encoder are kept.

    Beside the images unless `cache_dir` is given: a shared, read-only dataset
    (such as ../shared/data) must not be written into.
    """
    folder = images_dir.parent if cache_dir is None else cache_dir
    return folder / f"features-{sha256_file(encoder_path)[:16]}.npz"


def encoder_session(encoder_path: Path) -> Any:
    """An onnxruntime session of the encoder graph (CPU), made once per extraction run."""
    from capgen.runtime.session import plain_cpu_session

    return plain_cpu_session(encoder_path)


def extract_features(
    image_paths: Sequence[Path],
    encoder_path: Path,
    show_progress: bool = True,
    session: Any = None,
) -> np.ndarray:
    """Run the encoder ONNX over the images; float32 [N, F] (`session`: one already made)."""
    from tqdm import tqdm

    session = session or encoder_session(encoder_path)
    outputs = []
    batches = _batches(list(image_paths), BATCH_SIZE)
    total = -(-len(image_paths) // BATCH_SIZE)
    for batch in tqdm(batches, total=total, disable=not show_progress, desc="features"):
        images = np.stack([load_image_uint8(p) for p in batch])
        outputs.append(session.run(["features"], {"image": images})[0])
    return np.concatenate(outputs).astype(np.float32)


def cached_features(
    images_dir: Path,
    names: Sequence[str],
    encoder_path: Path,
    show_progress: bool = True,
    cache_dir: Path | None = None,
) -> dict[str, np.ndarray]:
    """Features by image name; computes only the names the cache lacks.

    The cache is saved every CHECKPOINT_EVERY images, so ten minutes of
    features for a whole dataset survive an interruption and resume where
    they stopped.
    """
    path = cache_path(images_dir, encoder_path, cache_dir)
    known: dict[str, np.ndarray] = {}
    if path.is_file():
        with np.load(path, allow_pickle=False) as stored:
            known = dict(zip(stored["names"].tolist(), stored["features"], strict=True))
    missing = [n for n in names if n not in known]
    session = encoder_session(encoder_path) if missing else None
    for start in range(0, len(missing), CHECKPOINT_EVERY):
        chunk = missing[start : start + CHECKPOINT_EVERY]
        paths = [images_dir / n for n in chunk]
        computed = extract_features(paths, encoder_path, show_progress, session)
        known.update(zip(chunk, computed, strict=True))
        all_names = sorted(known)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(path) as handle:
            np.savez(
                handle, names=np.array(all_names), features=np.stack([known[n] for n in all_names])
            )
    return {n: known[n] for n in names}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Cache encoder features for a Flickr8k-layout dataset."
    )
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--encoder", default="xception+colour", help="encoder kind or .onnx path")
    args = parser.parse_args(argv)
    from capgen.models.flickr8k import Flickr8kDataset

    dataset = Flickr8kDataset(args.dataset)
    encoder = resolve_encoder(args.encoder)
    names = sorted(dataset.images_with_captions())
    features = cached_features(dataset.images_dir, names, encoder)
    print(f"{len(features)} feature vectors in {cache_path(dataset.images_dir, encoder)}")


def resolve_encoder(kind_or_path: str) -> Path:
    """An encoder kind ('xception', 'xception+colour') or a path to an encoder ONNX."""
    if kind_or_path.endswith(".onnx"):
        return Path(kind_or_path)
    from capgen.convert.encoder import ensure_encoder

    return ensure_encoder(kind_or_path)


if __name__ == "__main__":
    main()

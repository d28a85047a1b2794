"""The Flickr8k loader on the real dataset files, and the tutorial's caption cleaning."""

from __future__ import annotations

from pathlib import Path

import pytest

from capgen.models.flickr8k import Flickr8kDataset, clean_caption, parse_token_file, wrap
from capgen.runtime.errors import InputError


@pytest.mark.parametrize(
    ("raw", "cleaned"),
    [
        (
            "A child in a pink dress is climbing up a set of stairs in an entry way .",
            "child in pink dress is climbing up set of stairs in an entry way",
        ),
        ("Two dogs play tug-of-war !", "two dogs play tug of war"),
        ("A man in 1990s clothes , holding a 'sign' .", "man in clothes holding sign"),
        ("I", ""),
    ],
)
def test_cleaning_matches_the_tutorial(raw: str, cleaned: str) -> None:
    assert clean_caption(raw) == cleaned


def test_wrap_gives_start_and_end_tokens_after_keras_filters() -> None:
    assert wrap("red circle") == "<start> red circle <end>"


def test_loader_reads_the_real_flickr8k_files(shared_data: Path) -> None:
    dataset = Flickr8kDataset(shared_data / "flickr8k")
    captions = dataset.raw_captions()
    assert len(captions) >= 8000
    assert all(len(c) == 5 for c in captions.values())
    assert len(dataset.split("train")) == 6000
    assert len(dataset.split("dev")) == 1000
    assert len(dataset.split("test")) == 1000
    # Only 12 photos are present: descriptions() keeps the images on disk.
    present = dataset.descriptions("test")
    assert len(present) == len(list(dataset.images_dir.glob("*.jpg")))
    for texts in present.values():
        assert len(texts) == 5
        for text in texts:
            words = text.split()
            assert words[0] == "<start>" and words[-1] == "<end>"
            assert all(w.isalpha() and w == w.lower() and len(w) > 1 for w in words[1:-1])
    assert len(dataset.descriptions("train", require_images=False)) == 6000


def test_missing_and_malformed_files_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="caption file not found"):
        Flickr8kDataset(tmp_path).raw_captions()
    bad = tmp_path / "Flickr8k.token.txt"
    bad.write_text("no tab on this line\n")
    with pytest.raises(InputError, match="expected"):
        parse_token_file(bad)
    with pytest.raises(InputError, match="unknown split"):
        Flickr8kDataset(tmp_path).split("validation")
    with pytest.raises(InputError, match="split list not found"):
        Flickr8kDataset(tmp_path).split("test")

"""Read a dataset in Flickr8k's layout and clean captions the tutorial's way.

The same code reads the real Flickr8k (token file, split lists, the misspelt
`Flicker8k_Dataset/` folder) and our synthetic scenes, so the recipe that
trains the default model is the recipe a tutorial user runs on Flickr8k.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

from capgen.models.scenes import IMAGES_DIRNAME, SPLIT_FILENAMES, TOKEN_FILENAME
from capgen.runtime.errors import InputError

START_TOKEN = "start"
END_TOKEN = "end"
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def clean_caption(caption: str) -> str:
    """The tutorial's cleaning: hyphens to spaces, lowercase, no punctuation,
    no one-letter words, no words containing anything but letters."""
    words = caption.replace("-", " ").split()
    words = [w.lower().translate(_PUNCTUATION) for w in words]
    return " ".join(w for w in words if len(w) > 1 and w.isalpha())


def wrap(cleaned: str) -> str:
    """The tutorial's training text: '<start> caption <end>' (the Keras Tokenizer's
    default filters strip the angle brackets, leaving the tokens `start` and `end`)."""
    return f"<{START_TOKEN}> {cleaned} <{END_TOKEN}>"


def parse_token_file(path: Path) -> dict[str, list[str]]:
    """`name.jpg#k<TAB>caption` lines -> image name -> raw captions in file order."""
    if not path.is_file():
        raise InputError(f"caption file not found: {path}")
    captions: dict[str, list[str]] = {}
    text = path.read_text(encoding="utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, caption = line.partition("\t")
        if not sep:
            raise InputError(f"{path}:{number}: expected 'image.jpg#N<TAB>caption'")
        name = key.split("#", 1)[0].strip()
        captions.setdefault(name, []).append(caption.strip())
    return captions


def read_split(path: Path) -> list[str]:
    """One image name per line (the Flickr_8k.*Images.txt files)."""
    if not path.is_file():
        raise InputError(f"split list not found: {path}")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


@dataclass(frozen=True)
class Flickr8kDataset:
    """A folder laid out like Flickr8k."""

    root: Path

    @property
    def images_dir(self) -> Path:
        return self.root / IMAGES_DIRNAME

    def raw_captions(self) -> dict[str, list[str]]:
        return parse_token_file(self.root / TOKEN_FILENAME)

    def images_with_captions(self) -> list[str]:
        return sorted(self.raw_captions())

    def split(self, name: str) -> list[str]:
        if name not in SPLIT_FILENAMES:
            raise InputError(f"unknown split {name!r}; choose one of {', '.join(SPLIT_FILENAMES)}")
        return read_split(self.root / SPLIT_FILENAMES[name])

    def descriptions(self, split: str, require_images: bool = True) -> dict[str, list[str]]:
        """Image name -> wrapped, cleaned captions for the split's images that have captions
        (and, when `require_images`, an image file on disk)."""
        captions = self.raw_captions()
        result: dict[str, list[str]] = {}
        for name in self.split(split):
            if name not in captions:
                continue
            if require_images and not (self.images_dir / name).is_file():
                continue
            result[name] = [wrap(clean_caption(c)) for c in captions[name]]
        return result

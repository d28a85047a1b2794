"""The README's example scenes (`examples/scene-*.jpg`) and what a right caption of each says.

The examples were chosen by layout before any model existed (see
models/README.md): they are scenes of the generator, seed 2027, so their
ground truth is the generator's own record and `python -m capgen.models.examples
DIR` rebuilds them byte for byte. A caption is right when it names every group,
left to right, with its count, colour and shape, and its size whenever it says one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from capgen.models.flickr8k import clean_caption
from capgen.models.scenes import COLOURS, NUMBER_WORDS, SHAPES, SIZE_WORDS, Scene, render
from capgen.models.scenes import sample_scene as _sample_scene

EXAMPLES_SEED = 2027
EXAMPLE_INDICES = (0, 1, 2, 11, 22)  # examples/scene-1.jpg .. scene-5.jpg

# (count, size or None, colour, shape) of one named group
NamedGroup = tuple[int, str | None, str, str]

_SIZES = {word: size for size, words in SIZE_WORDS.items() for word in words}
_COUNTS = {word: number for number, word in NUMBER_WORDS.items()}
_SHAPES = {**{s: s for s in SHAPES}, **{s + "s": s for s in SHAPES}}


def example_scenes() -> dict[str, tuple[Scene, int]]:
    """File name -> (scene, generator index) for every example."""
    return {
        f"scene-{number}.jpg": (_sample_scene(EXAMPLES_SEED, index), index)
        for number, index in enumerate(EXAMPLE_INDICES, start=1)
    }


def expected_groups(scene: Scene) -> list[NamedGroup]:
    return [(g.count, g.size, g.colour, g.shape) for g in scene.groups]


def named_groups(caption: str) -> list[NamedGroup]:
    """The groups a caption names, in order: a shape word and the words since the previous one.

    The tutorial's cleaning drops one-letter words, so a lone object ("a red
    star") arrives without its "a": no count word means one.
    """
    groups: list[NamedGroup] = []
    phrase: list[str] = []
    for word in clean_caption(caption).split():
        shape = _SHAPES.get(word)
        if shape is None:
            phrase.append(word)
            continue
        colours = [w for w in phrase if w in COLOURS]
        count = next((_COUNTS[w] for w in phrase if w in _COUNTS), 1)
        size = next((_SIZES[w] for w in phrase if w in _SIZES), None)
        groups.append((count, size, colours[-1] if colours else "", shape))
        phrase = []
    return groups


def caption_is_right(caption: str, scene: Scene) -> bool:
    """Every group named, in order, with its count, colour and shape (and size when said)."""
    named, wanted = named_groups(caption), expected_groups(scene)
    if len(named) != len(wanted):
        return False
    return all(
        (count, colour, shape) == (w_count, w_colour, w_shape) and size in (None, w_size)
        for (count, size, colour, shape), (w_count, w_size, w_colour, w_shape) in zip(
            named, wanted, strict=True
        )
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the README's example scenes.")
    parser.add_argument("output", type=Path, help="folder for scene-1.jpg .. scene-5.jpg")
    args = parser.parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    for name, (scene, index) in example_scenes().items():
        (args.output / name).write_bytes(render(scene, EXAMPLES_SEED, index))
        print(f"{name}: {scene.name}")


if __name__ == "__main__":
    main()

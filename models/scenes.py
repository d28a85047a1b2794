"""Synthetic scenes written exactly in Flickr8k's layout, so we can ship a trained model.

Flickr8k's licence does not let us ship a model trained on it with the
package, so the default model learns from drawings we generate here. They are
written the way Flickr8k is (the misspelt `Flicker8k_Dataset/` folder,
`Flickr8k.token.txt` with five captions per image, and the three split lists),
so one loader and one trainer serve both this set and the real Flickr8k.

Each scene holds 1-3 groups; a group is 1-3 equal objects (same colour,
shape and size), e.g. "two small blue circles". Within a scene every group
has its own colour: the encoder's colour features describe each colour's
pixels as one mask, and two differently shaped groups of the same colour would
blur into one mask description (documented in models/README.md). Objects never
overlap, so every object is fully visible and its count is well defined.
Groups are mentioned left to right in every caption, so the decoder learns one
order rather than guessing among permutations.

Everything is a pure function of (seed, image index): regenerating gives the
same bytes, and any single image can be rebuilt alone.
"""

from __future__ import annotations

import argparse
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from capgen.models.palette import PALETTE

IMAGES_DIRNAME = "Flicker8k_Dataset"  # the dataset's own spelling
TOKEN_FILENAME = "Flickr8k.token.txt"
SPLIT_FILENAMES = {
    "train": "Flickr_8k.trainImages.txt",
    "dev": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}
GROUND_TRUTH_FILENAME = "scenes.json"

COLOURS = PALETTE  # object colours; the encoder masks exactly these
SHAPES = ("circle", "square", "triangle", "star", "diamond")
BACKGROUNDS: dict[str, tuple[int, int]] = {
    "white": (225, 255),
    "black": (0, 35),
    "gray": (105, 160),
}
TEXTURES = ("plain", "noise", "gradient", "blotchy")
SIZES = ("small", "large")
COLOUR_JITTER = 18  # per channel, so the model learns colour regions, not exact values

NUMBER_WORDS = {1: "a", 2: "two", 3: "three"}
SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}


@dataclass(frozen=True)
class PlacedObject:
    cx: float
    cy: float
    radius: float
    rotation_degrees: float


@dataclass(frozen=True)
class Group:
    colour: str
    shape: str
    size: str
    objects: tuple[PlacedObject, ...]

    @property
    def count(self) -> int:
        return len(self.objects)

    @property
    def mean_x(self) -> float:
        return sum(o.cx for o in self.objects) / len(self.objects)


@dataclass(frozen=True)
class Scene:
    name: str
    width: int
    height: int
    background: str
    texture: str
    jpeg_quality: int
    groups: tuple[Group, ...] = field(default_factory=tuple)

    def ground_truth(self) -> dict:
        """What was drawn, for evaluation: JSON-ready."""
        record = asdict(self)
        record.pop("name")
        return record


def _object_radius(size: str, short_side: int, rng: np.random.Generator) -> float:
    low, high = (0.085, 0.115) if size == "small" else (0.15, 0.2)
    return float(rng.uniform(low, high) * short_side)


def _place(
    groups_spec: list[tuple[str, str, str, int]],
    width: int,
    height: int,
    rng: np.random.Generator,
) -> tuple[Group, ...] | None:
    """Rejection-sample non-overlapping positions; None when the canvas is too crowded."""
    placed: list[tuple[float, float, float]] = []
    groups: list[Group] = []
    short_side = min(width, height)
    for colour, shape, size, count in groups_spec:
        objects: list[PlacedObject] = []
        radius = _object_radius(size, short_side, rng)
        for _ in range(count):
            for _attempt in range(200):
                margin = radius * 1.25 + 2
                cx = float(rng.uniform(margin, width - margin))
                cy = float(rng.uniform(margin, height - margin))
                if all(math.hypot(cx - x, cy - y) > 1.3 * (radius + r) + 4 for x, y, r in placed):
                    break
            else:
                return None
            placed.append((cx, cy, radius))
            rotation = float(rng.uniform(-5, 5))
            objects.append(
                PlacedObject(round(cx, 2), round(cy, 2), round(radius, 2), round(rotation, 2))
            )
        groups.append(Group(colour, shape, size, tuple(objects)))
    return tuple(groups)


def sample_scene(seed: int, index: int) -> Scene:
    """The scene for (seed, index): independent of every other index."""
    rng = np.random.default_rng([seed, index])
    while True:
        width = int(rng.integers(240, 481))
        aspect = float(rng.uniform(0.75, 1.33))
        height = int(np.clip(round(width / aspect), 200, 520))
        n_groups = int(rng.integers(1, 4))
        colours = rng.choice(list(COLOURS), size=n_groups, replace=False)
        spec = []
        for colour in colours:
            shape = str(rng.choice(SHAPES))
            size = str(rng.choice(SIZES))
            count = int(rng.choice([1, 2, 3], p=[0.6, 0.25, 0.15]))
            spec.append((str(colour), shape, size, count))
        if sum(s[3] for s in spec) > 6:
            continue
        groups = _place(spec, width, height, rng)
        if groups is None:
            continue
        return Scene(
            name=f"scene_{seed}_{index:05d}.jpg",
            width=width,
            height=height,
            background=str(rng.choice(list(BACKGROUNDS))),
            texture=str(rng.choice(TEXTURES)),
            jpeg_quality=int(rng.integers(55, 96)),
            groups=tuple(sorted(groups, key=lambda g: g.mean_x)),
        )


def _background(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    low, high = BACKGROUNDS[scene.background]
    level = rng.uniform(low, high)
    shape = (scene.height, scene.width)
    canvas = np.full(shape, level, dtype=np.float32)
    if scene.texture == "noise":
        canvas += rng.normal(0, rng.uniform(6, 18), shape)
    elif scene.texture == "gradient":
        angle = rng.uniform(0, 2 * math.pi)
        ys, xs = np.mgrid[0 : scene.height, 0 : scene.width].astype(np.float32)
        ramp = (xs * math.cos(angle) + ys * math.sin(angle)) / max(shape)
        amplitude = rng.uniform(25, 55)
        canvas += (ramp - ramp.mean()) * amplitude * (1 if scene.background != "white" else -1)
    elif scene.texture == "blotchy":
        blotches = rng.normal(0, 30, (max(2, scene.height // 16), max(2, scene.width // 16)))
        small = Image.fromarray(np.clip(blotches + 128, 0, 255).astype(np.uint8))
        canvas += (
            np.asarray(
                small.resize((scene.width, scene.height), Image.Resampling.BICUBIC), np.float32
            )
            - 128
        )
    canvas = np.clip(canvas, 0, 255)
    return np.repeat(canvas[:, :, None], 3, axis=2)


def _polygon(obj: PlacedObject, shape: str) -> list[tuple[float, float]]:
    """Vertices of an upright shape, slightly rotated; sizes chosen so areas look alike."""
    if shape == "square":
        radii, angles = [obj.radius * 1.2] * 4, [45, 135, 225, 315]
    elif shape == "diamond":
        radii, angles = [obj.radius * 1.35, obj.radius * 0.95] * 2, [90, 180, 270, 0]
    elif shape == "triangle":
        radii, angles = [obj.radius * 1.3] * 3, [-90, 30, 150]
    elif shape == "star":
        radii = [obj.radius * 1.35, obj.radius * 0.58] * 5
        angles = [-90 + 36 * k for k in range(10)]
    else:
        raise ValueError(f"not a polygon shape: {shape}")
    turn = obj.rotation_degrees
    return [
        (
            obj.cx + r * math.cos(math.radians(a + turn)),
            obj.cy + r * math.sin(math.radians(a + turn)),
        )
        for r, a in zip(radii, angles, strict=True)
    ]


def render(scene: Scene, seed: int, index: int) -> bytes:
    """JPEG bytes of the scene; deterministic for (seed, index)."""
    rng = np.random.default_rng([seed, index, 1])
    image = Image.fromarray(_background(scene, rng).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for group in scene.groups:
        base = np.array(COLOURS[group.colour], dtype=np.int64)
        fill = tuple(
            int(v)
            for v in np.clip(base + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, 3), 0, 255)
        )
        for obj in group.objects:
            if group.shape == "circle":
                r = obj.radius
                draw.ellipse([obj.cx - r, obj.cy - r, obj.cx + r, obj.cy + r], fill=fill)
            else:
                draw.polygon(_polygon(obj, group.shape), fill=fill)
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.5))))
    if rng.random() < 0.3:
        pixels = np.asarray(image, np.float32) + rng.normal(
            0, rng.uniform(3, 10), (scene.height, scene.width, 3)
        )
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=scene.jpeg_quality)
    return buffer.getvalue()


def _group_phrase(group: Group, rng: np.random.Generator, with_size: bool) -> str:
    noun = group.shape + ("s" if group.count > 1 else "")
    words = [NUMBER_WORDS[group.count]]
    if with_size:
        words.append(str(rng.choice(SIZE_WORDS[group.size])))
    words += [group.colour, noun]
    return " ".join(words)


def _join(phrases: list[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


_TEMPLATES = (
    "{objects} on a {background} background",
    "there {verb} {objects}",
    "a picture of {objects}",
    "{objects} against a {background} backdrop",
    "an image showing {objects} on {background}",
)


def captions(scene: Scene, seed: int, index: int) -> list[str]:
    """Five differently worded captions; groups always left to right."""
    rng = np.random.default_rng([seed, index, 2])
    result = []
    for number, template in enumerate(_TEMPLATES):
        with_size = number % 2 == 0 or rng.random() < 0.5
        objects = _join([_group_phrase(g, rng, with_size) for g in scene.groups])
        verb = "is" if scene.groups[0].count == 1 else "are"
        text = template.format(objects=objects, background=scene.background, verb=verb)
        result.append(text[0].upper() + text[1:] + " .")
    return result


def split_indices(
    seed: int,
    counts: dict[str, int],
    extra_train: int = 0,
    extra_min_groups: int = 1,
    train_used: int | None = None,
) -> dict[str, list[int]]:
    """Scene indices per split: consecutive in `counts` order, then `extra_train` more
    training scenes of at least `extra_min_groups` groups, numbered after every split,
    so adding training data never changes which scenes the dev and test splits hold.
    `train_used` keeps only the first that many of the `counts["train"]` scenes
    (the rest keep their indices, unused)."""
    indices: dict[str, list[int]] = {}
    start = 0
    for split, count in counts.items():
        indices[split] = list(range(start, start + count))
        start += count
    extra = indices.setdefault("train", [])
    if train_used is not None:
        del extra[train_used:]
    goal = len(extra) + extra_train
    index = start
    while len(extra) < goal:
        if len(sample_scene(seed, index).groups) >= extra_min_groups:
            extra.append(index)
        index += 1
    return indices


def generate(
    output: Path,
    seed: int,
    counts: dict[str, int],
    extra_train: int = 0,
    extra_min_groups: int = 1,
    train_used: int | None = None,
) -> dict[str, Scene]:
    """Write a Flickr8k-layout dataset to `output`; return the scenes by image name."""
    images_dir = output / IMAGES_DIRNAME
    images_dir.mkdir(parents=True, exist_ok=True)
    scenes: dict[str, Scene] = {}
    token_lines: list[str] = []
    for split, numbers in split_indices(
        seed, counts, extra_train, extra_min_groups, train_used
    ).items():
        names = []
        for index in numbers:
            scene = sample_scene(seed, index)
            (images_dir / scene.name).write_bytes(render(scene, seed, index))
            token_lines += [
                f"{scene.name}#{k}\t{c}" for k, c in enumerate(captions(scene, seed, index))
            ]
            scenes[scene.name] = scene
            names.append(scene.name)
        (output / SPLIT_FILENAMES[split]).write_text("\n".join(names) + "\n")
    (output / TOKEN_FILENAME).write_text("\n".join(token_lines) + "\n")
    truth = {name: scene.ground_truth() for name, scene in scenes.items()}
    (output / GROUND_TRUTH_FILENAME).write_text(
        json.dumps({"seed": seed, "scenes": truth}, indent=1)
    )
    return scenes


def load_ground_truth(dataset: Path) -> dict[str, dict]:
    """The sidecar `scenes.json`: image name -> what was drawn."""
    return json.loads((dataset / GROUND_TRUTH_FILENAME).read_text())["scenes"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate synthetic scenes in Flickr8k's layout.")
    parser.add_argument("output", type=Path)
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--dev", type=int, default=300)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument(
        "--extra-train",
        type=int,
        default=0,
        help="more training scenes, numbered after the test split (dev and test stay the same)",
    )
    parser.add_argument(
        "--extra-min-groups",
        type=int,
        default=1,
        help="only scenes with at least this many groups among the extra training scenes",
    )
    parser.add_argument(
        "--train-used",
        type=int,
        help="use only the first N of the --train scenes (dev and test keep their scenes)",
    )
    args = parser.parse_args(argv)
    counts = {"train": args.train, "dev": args.dev, "test": args.test}
    scenes = generate(
        args.output, args.seed, counts, args.extra_train, args.extra_min_groups, args.train_used
    )
    print(f"wrote {len(scenes)} scenes to {args.output}")


if __name__ == "__main__":
    main()

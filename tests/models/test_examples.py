"""The example images: the shapes scenes get every group right, the photos get their recorded captions.

The shapes examples' ground truth is the scene generator's own record (seed
2027), so the first test pins the files to it and another drives the real
console script with the `shapes` model that `capgen setup --model all` built.
The README's main command (`make demo` = `capgen caption examples/`) runs the
default photo model; its captions are the ones the model card records.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from capgen.models import examples
from capgen.models.scenes import render
from capgen.models.setup_default import (
    PHOTO_MODEL,
    SHAPES_MODEL,
    BuiltInModel,
    built_from_sources,
)
from capgen.runtime.home import models_dir

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "shapes"
PHOTO_EXAMPLES = REPO / "examples"
CONSOLE_SCRIPT = REPO / ".venv" / "bin" / "capgen"


def test_examples_are_the_generator_scenes_the_readme_names() -> None:
    scenes = examples.example_scenes()
    assert sorted(scenes) == sorted(p.name for p in EXAMPLES.glob("*.jpg"))
    for name, (scene, index) in scenes.items():
        assert (EXAMPLES / name).read_bytes() == render(scene, examples.EXAMPLES_SEED, index), name


def test_scene_two_layout_is_the_one_the_issue_names() -> None:
    scene, _ = examples.example_scenes()["scene-2.jpg"]
    assert examples.expected_groups(scene) == [
        (2, "large", "red", "star"),
        (2, "small", "green", "star"),
        (1, "small", "orange", "triangle"),
    ]


@pytest.mark.parametrize(
    ("caption", "right"),
    [
        ("two large red stars two small green stars and small orange triangle on black", True),
        ("two red stars two green stars and orange triangle", True),  # sizes left out: fine
        ("two little red stars two small green triangles and large orange star", False),
        ("two large red stars and two small green stars", False),  # a group missing
        ("two small green stars two large red stars and small orange triangle", False),  # order
        ("two large red stars three small green stars and small orange triangle", False),
    ],
)
def test_caption_is_right_checks_count_size_colour_shape_and_order(
    caption: str, right: bool
) -> None:
    scene, _ = examples.example_scenes()["scene-2.jpg"]
    assert examples.caption_is_right(caption, scene) is right


def built_from_this_checkout(model: BuiltInModel) -> Path:
    """The model's folder in $CAPGEN_HOME, when it was built from this checkout's sources."""
    folder = built_from_sources(model)
    if folder is None:
        pytest.skip(
            f"no {model.name} model built from this checkout in {models_dir()} "
            "(make setup-all builds it; make test runs it first)"
        )
    return folder


def test_the_shapes_model_captions_every_scene_right() -> None:
    if not CONSOLE_SCRIPT.exists():
        pytest.skip(f"console script {CONSOLE_SCRIPT} not installed (make install creates it)")
    built_from_this_checkout(SHAPES_MODEL)
    done = subprocess.run(
        [str(CONSOLE_SCRIPT), "caption", "--model", "shapes", "examples/shapes/"],
        cwd=REPO,
        capture_output=True,
        timeout=300,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert done.returncode == 0, done.stderr.decode()
    captions = dict(line.split("\t", 1) for line in done.stdout.decode().splitlines())
    scenes = examples.example_scenes()
    assert sorted(Path(p).name for p in captions) == sorted(scenes)
    wrong = {
        path: caption
        for path, caption in captions.items()
        if not examples.caption_is_right(caption, scenes[Path(path).name][0])
    }
    assert not wrong, wrong


def test_the_readme_command_captions_the_photos_as_the_evaluation_recorded() -> None:
    """`make demo` = `capgen caption examples/`: the default photo model, beam 3, FP32.

    The example photos are four of the twelve full-size test photos that
    models/photo/EVALUATION.md captions, so their captions are on record there
    (metrics.json, "full_size"), made by the same runtime.
    """
    if not CONSOLE_SCRIPT.exists():
        pytest.skip(f"console script {CONSOLE_SCRIPT} not installed (make install creates it)")
    built_from_this_checkout(PHOTO_MODEL)
    record = json.loads((PHOTO_MODEL.sources / "metrics.json").read_text())
    recorded = {row["image"]: row["full size"] for row in record["full_size"]["captions"]}
    photos = sorted(p.name for p in PHOTO_EXAMPLES.glob("*.jpg"))
    assert len(photos) == 4 and set(photos) <= set(recorded)
    done = subprocess.run(
        [str(CONSOLE_SCRIPT), "caption", "examples/"],
        cwd=REPO,
        capture_output=True,
        timeout=300,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert done.returncode == 0, done.stderr.decode()
    assert b"demonstration" not in done.stderr  # the photo model is no demonstration
    captions = {
        Path(path).name: caption
        for path, caption in (line.split("\t", 1) for line in done.stdout.decode().splitlines())
    }
    assert captions == {name: recorded[name] for name in photos}

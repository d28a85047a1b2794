"""The README's main command (`make demo` = `capgen caption examples/`) gets every example right.

The examples' ground truth is the scene generator's own record (seed 2027),
so the first test pins the files to it and the second drives the real
console script with the default model that `make setup` built.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from capgen.convert.hashing import sha256_file
from capgen.models import examples
from capgen.models.scenes import render
from capgen.models.setup_default import DEFAULT_MODEL_FILE, DEFAULT_SOURCES
from capgen.runtime.home import default_model_dir

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
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


def _default_model_from_this_checkout() -> Path:
    folder = default_model_dir()
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        pytest.skip(f"no default model in {folder} (make setup builds it; make test runs it first)")
    sources = json.loads(manifest.read_text()).get("sources", {})
    if sources.get("model", {}).get("sha256") != sha256_file(DEFAULT_SOURCES / DEFAULT_MODEL_FILE):
        pytest.skip(f"{folder} was built from another models/default; run make setup")
    return folder


def test_the_readme_command_captions_every_example_right() -> None:
    if not CONSOLE_SCRIPT.exists():
        pytest.skip(f"console script {CONSOLE_SCRIPT} not installed (make install creates it)")
    _default_model_from_this_checkout()
    done = subprocess.run(
        [str(CONSOLE_SCRIPT), "caption", "examples/"],
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

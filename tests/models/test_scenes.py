"""The scene generator: deterministic, Flickr8k-shaped, and its captions agree with what it drew."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from capgen.models import scenes
from capgen.models.evaluate import parse_pairs, truth_pairs
from capgen.models.flickr8k import Flickr8kDataset


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scenes")
    scenes.generate(root, seed=3, counts={"train": 12, "dev": 4, "test": 6})
    return root


def test_same_seed_and_index_give_the_same_bytes() -> None:
    first = scenes.render(scenes.sample_scene(5, 17), 5, 17)
    again = scenes.render(scenes.sample_scene(5, 17), 5, 17)
    other = scenes.render(scenes.sample_scene(6, 17), 6, 17)
    assert first == again
    assert first != other


def test_layout_is_flickr8k(tiny_dataset: Path) -> None:
    assert (tiny_dataset / "Flicker8k_Dataset").is_dir()
    lines = (tiny_dataset / "Flickr8k.token.txt").read_text().splitlines()
    assert len(lines) == 22 * 5
    name, caption = lines[0].split("\t")
    assert name.endswith(".jpg#0") and caption
    dataset = Flickr8kDataset(tiny_dataset)
    assert [len(dataset.split(s)) for s in ("train", "dev", "test")] == [12, 4, 6]
    assert all((dataset.images_dir / n).is_file() for n in dataset.images_with_captions())


def test_every_caption_names_exactly_the_drawn_groups(tiny_dataset: Path) -> None:
    truth = scenes.load_ground_truth(tiny_dataset)
    captions = Flickr8kDataset(tiny_dataset).raw_captions()
    assert set(truth) == set(captions)
    for name, scene in truth.items():
        assert len(set(captions[name])) == 5, "five differently worded captions"
        for caption in captions[name]:
            assert parse_pairs(caption) == truth_pairs(scene), caption


def test_objects_are_inside_the_canvas_and_never_overlap() -> None:
    for index in range(40):
        scene = scenes.sample_scene(11, index)
        colours = [g.colour for g in scene.groups]
        assert 1 <= len(scene.groups) <= 3
        assert len(set(colours)) == len(colours), "one colour per group within a scene"
        objects = [o for g in scene.groups for o in g.objects]
        for obj in objects:
            assert obj.radius <= obj.cx <= scene.width - obj.radius
            assert obj.radius <= obj.cy <= scene.height - obj.radius
        for i, a in enumerate(objects):
            for b in objects[i + 1 :]:
                assert math.hypot(a.cx - b.cx, a.cy - b.cy) > 1.3 * (a.radius + b.radius)


def test_groups_are_listed_left_to_right() -> None:
    for index in range(20):
        xs = [g.mean_x for g in scenes.sample_scene(2, index).groups]
        assert xs == sorted(xs)


def test_extra_training_scenes_leave_dev_and_test_alone() -> None:
    counts = {"train": 10, "dev": 4, "test": 6}
    plain = scenes.split_indices(3, counts)
    more = scenes.split_indices(3, counts, extra_train=5, extra_min_groups=2, train_used=7)
    assert more["dev"] == plain["dev"] == list(range(10, 14))
    assert more["test"] == plain["test"] == list(range(14, 20))
    assert more["train"][:7] == list(range(7))
    extra = more["train"][7:]
    assert len(extra) == 5 and min(extra) >= 20
    assert all(len(scenes.sample_scene(3, i).groups) >= 2 for i in extra)
    skipped = set(range(20, max(extra))) - set(extra)
    assert all(len(scenes.sample_scene(3, i).groups) < 2 for i in skipped)

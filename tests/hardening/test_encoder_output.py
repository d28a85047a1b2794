"""`capgen convert encoder --output`: never replaces a file, or writes through a link (issue 10, finding 3's class).

It copied the exported encoder with `shutil.copyfile`, which truncates any
existing file and follows a planted symlink. Both are refused before the
(minutes long) export starts, so these tests need no TensorFlow run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import Run, assert_one_line_error

pytestmark = pytest.mark.convert


def test_an_existing_output_is_refused_and_left_alone(
    run: Run, tensorflow_stack: None, tmp_path: Path
) -> None:
    photo = tmp_path / "holiday.jpg"
    photo.write_bytes(b"\xff\xd8\xff precious")
    done = run("convert", "encoder", "--output", photo)
    assert_one_line_error(done, 2, "already exists", "did not write")
    assert photo.read_bytes() == b"\xff\xd8\xff precious"


def test_a_planted_link_as_output_is_refused(
    run: Run, tensorflow_stack: None, tmp_path: Path
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    link = tmp_path / "encoder.onnx"
    link.symlink_to(victim)
    dangling = tmp_path / "dangling.onnx"
    dangling.symlink_to(tmp_path / "nowhere" / "x")
    for target in (link, dangling):
        done = run("convert", "encoder", "--output", target)
        assert_one_line_error(done, 2, "already exists")
    assert victim.read_text() == "keep me"
    assert not (tmp_path / "nowhere").exists()

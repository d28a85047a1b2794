"""Issue 14: `capgen convert quantize --calibration DIR` tunes INT8 on the user's own photos.

Every bad folder or image is one line with a documented exit code, found
before any work, and leaves the model folder exactly as it was. Uses the
tiny quantizable encoder of the issue 10 tests instead of the 83 MB Xception.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import Run, assert_one_line_error, write_photos
from test_damaged_model_folders import quantizable_model  # noqa: F401  (fixture)

pytestmark = pytest.mark.convert


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _missing(tmp_path: Path) -> Path:
    return tmp_path / "nowhere"


def _a_file(tmp_path: Path) -> Path:
    path = tmp_path / "one.jpg"
    write_photos(tmp_path / "src", 1, seed=1)[0].rename(path)
    return path


def _empty(tmp_path: Path) -> Path:
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


def _no_images(tmp_path: Path) -> Path:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("not a photo")
    return folder


def _corrupt(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    write_photos(folder, 2, seed=2)
    (folder / "photo01.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return folder


@pytest.mark.parametrize(
    ("make", "code", "fragment"),
    [
        (_missing, 2, "no such folder"),
        (_a_file, 2, "not a folder"),
        (_empty, 2, "no images in this folder"),
        (_no_images, 2, "no images in this folder"),
        (_corrupt, 5, "photo01.png"),
    ],
)
def test_bad_calibration_folder_is_one_line_and_changes_nothing(
    run: Run,
    quantizable_model: Path,  # noqa: F811
    tmp_path: Path,
    make: object,
    code: int,
    fragment: str,
) -> None:
    calibration = make(tmp_path)  # type: ignore[operator]
    before = _snapshot(quantizable_model)

    done = run("convert", "quantize", quantizable_model, "--calibration", calibration)

    assert_one_line_error(done, code, "--calibration", fragment)
    assert _snapshot(quantizable_model) == before


def test_calibration_folder_photos_are_used(
    run: Run,
    quantizable_model: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    photos = tmp_path / "mine"
    write_photos(photos, 3, seed=5)
    (photos / "notes.txt").write_text("ignored: not an image")

    done = run("convert", "quantize", quantizable_model, "--calibration", photos, timeout=600)

    assert done.returncode == 0, done.stderr.decode()
    out = done.stdout.decode()
    assert f"calibration: 3 of the 3 images in {photos}" in out
    assert "calibrating on 3 images" in out  # only the user's photos, not the built-in ones
    assert (quantizable_model / "encoder.int8.onnx").is_file()


def test_quantize_help_speaks_the_users_language(run: Run) -> None:
    done = run("convert", "quantize", "--help")
    text = done.stdout.decode()
    assert done.returncode == 0 and "--calibration" in text
    for jargon in ("cosine", "QDQ", "per-channel", "Xception", "scene", "percentile"):
        assert jargon not in text, jargon

"""`--model FILE`: a Git LFS pointer or a model file is named for what it is (issue 16, while there).

"model folder not found" sent users looking for a missing folder when they
had given the tutorial's `model_9.h5` (or its LFS pointer): capgen runs
converted model folders, so the message says how to get one.
"""

from __future__ import annotations

from pathlib import Path

from cli_helpers import Run, assert_one_line_error


def test_a_git_lfs_pointer_given_as_the_model(run: Run, shared_data: Path, tmp_path: Path) -> None:
    pointer = shared_data / "bad_inputs" / "git-lfs-pointer-model_9.h5"
    done = run("caption", "--model", pointer, tmp_path / "photo.jpg")
    assert_one_line_error(
        done,
        3,
        "is a Git LFS pointer",
        "git lfs pull",
        "capgen convert model MODEL TOKENIZER -o DIR",
    )
    done = run("info", pointer)
    assert_one_line_error(done, 3, "is a Git LFS pointer")


def test_a_keras_file_given_as_the_model(run: Run, tmp_path: Path) -> None:
    model_file = tmp_path / "model_9.h5"
    model_file.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    done = run("caption", "--model", model_file, tmp_path / "photo.jpg")
    stderr = assert_one_line_error(
        done, 3, "is a file, not a capgen model folder", "capgen convert model"
    )
    assert "not found" not in stderr

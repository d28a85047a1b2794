"""`capgen caption --format/--output-dir/--recursive`, URL arguments and `capgen version`, end to end.

Each output is parsed back with the standard library (csv.reader, json.load)
and compared with the captions `--json` reports for the same images, so a
format that wrote the wrong thing (JSON Lines in a .csv, a missing row, a
wrong image_id) fails here. Refusals are checked as one stderr line, exit 2,
and the file they protect unchanged byte for byte.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from capgen_cli import assert_one_line_error, capgen
from PIL import Image
from tiny_model import TinyModel

CAPGEN_SCRIPT = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "capgen"
pytestmark = pytest.mark.skipif(
    not CAPGEN_SCRIPT.exists(), reason=f"console script {CAPGEN_SCRIPT} not installed"
)
USAGE = 2  # README "Errors and exit codes": usage or input problem


def run(*args: str | Path, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    """`capgen ARGS` in `cwd`, in-process unless the test is marked `subprocess` (tests/capgen_cli.py)."""
    return capgen(
        *args, env={**os.environ, "CAPGEN_HOME": str(cwd / "home")}, cwd=cwd, timeout=timeout
    )


def write_images(folder: Path, names: list[str], seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((40, 50, 3)) * 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def json_captions(model: TinyModel, cwd: Path, *args: str | Path) -> dict[str, str]:
    """path -> caption, as `--json` reports them: what every file format must hold."""
    done = run("caption", "-m", model.folder, "--json", "-q", *args, cwd=cwd)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.decode().splitlines()]
    return {r["path"]: r["caption"] for r in records}


@pytest.fixture()
def photos(tmp_path: Path) -> list[Path]:
    return write_images(tmp_path / "photos", ["1.jpg", "007.png", "cat.jpg"])


# csv / tsv / txt file ---------------------------------------------------------


def test_csv_from_the_extension_is_a_real_csv(
    tiny_model: TinyModel, photos: list[Path], tmp_path: Path
) -> None:
    expected = json_captions(tiny_model, tmp_path, "photos")
    done = run("caption", "-m", tiny_model.folder, "photos", "-o", "out.csv", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    data = (tmp_path / "out.csv").read_bytes()
    assert not data.startswith(b"{"), "JSON Lines written into a .csv"
    rows = list(csv.reader(io.StringIO(data.decode(), newline="")))
    assert rows[0] == ["path", "caption"]
    assert {path: caption for path, caption in rows[1:]} == expected
    assert [path for path, _ in rows[1:]] == sorted(expected)  # the folder's order
    assert data.endswith(b"\r\n")  # the csv module's (RFC 4180) line ends
    # No temporary file is left beside it.
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_caption_with_a_comma_and_quote_round_trips(
    tiny_model: TinyModel, tmp_path: Path
) -> None:
    odd = write_images(tmp_path, ['a, "quoted" name.jpg'])[0]
    expected = json_captions(tiny_model, tmp_path, odd.name)
    done = run("caption", "-m", tiny_model.folder, odd.name, "-o", "out.csv", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "out.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows == [["path", "caption"], [odd.name, expected[odd.name]]]


@pytest.mark.parametrize(
    ("name", "fmt"), [("out.tsv", None), ("out.txt", None), ("out.txt", "tsv")]
)
def test_tsv_and_txt_files_are_tab_separated(
    tiny_model: TinyModel, photos: list[Path], tmp_path: Path, name: str, fmt: str | None
) -> None:
    expected = json_captions(tiny_model, tmp_path, "photos")
    extra = ["--format", fmt] if fmt else []
    done = run("caption", "-m", tiny_model.folder, "photos", "-o", name, *extra, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    text = (tmp_path / name).read_text(encoding="utf-8")
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter="\t"))
    assert rows[0] == ["path", "caption"]
    assert dict(rows[1:]) == expected and len(rows) == len(expected) + 1
    assert "\r" not in text


# coco ---------------------------------------------------------------------


def test_coco_results_file(tiny_model: TinyModel, photos: list[Path], tmp_path: Path) -> None:
    expected = json_captions(tiny_model, tmp_path, "photos")
    done = run(
        "caption",
        "-m",
        tiny_model.folder,
        "photos",
        "-o",
        "r.json",
        "--format",
        "coco",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "r.json", encoding="utf-8") as handle:
        results = json.load(handle)
    assert isinstance(results, list)
    assert all(set(r) == {"image_id", "caption"} for r in results)
    # all-digit stems are integers (leading zeros dropped), others the stem string
    by_id = {r["image_id"]: r["caption"] for r in results}
    assert by_id == {
        1: expected["photos/1.jpg"],
        7: expected["photos/007.png"],
        "cat": expected["photos/cat.jpg"],
    }
    # Written again, the same command replaces capgen's own file.
    again = run(
        "caption", "-m", tiny_model.folder, "photos/1.jpg", "-o", "r.json", "--format", "coco",
        cwd=tmp_path,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert [r["image_id"] for r in json.loads((tmp_path / "r.json").read_text())] == [1]


def test_coco_refuses_two_images_with_one_image_id(tiny_model: TinyModel, tmp_path: Path) -> None:
    write_images(tmp_path, ["a/1.jpg", "b/01.png"])
    done = run(
        "caption", "-m", tiny_model.folder, "a/1.jpg", "b/01.png", "-o", "r.json", "--format",
        "coco", cwd=tmp_path,
    )  # fmt: skip
    assert_one_line_error(done, USAGE, "image_id 1")
    assert not (tmp_path / "r.json").exists()


# choosing the format ------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fmt"),
    [("out.csv", "coco"), ("out.csv", "jsonl"), ("out.jsonl", "csv"), ("out.tsv", "csv")],
)
def test_an_extension_that_contradicts_format_is_a_usage_error(
    tiny_model: TinyModel, photos: list[Path], tmp_path: Path, name: str, fmt: str
) -> None:
    done = run(
        "caption", "-m", tiny_model.folder, "photos", "-o", name, "--format", fmt, cwd=tmp_path
    )
    assert_one_line_error(done, USAGE, name, f"--format {fmt}")
    assert not (tmp_path / name).exists()


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--format", "xml", "-o", "out.xml"], ["--format 'xml'", "csv"]),
        (["--format", "csv"], ["needs --output FILE"]),
        (["-o", "out.csv", "--resume"], ["--resume", "csv", "jsonl"]),
        (["-o", "out.coco", "--format", "coco", "--resume"], ["--resume", "coco"]),
        (["-o", "out.csv", "--output-dir", "caps"], ["not both"]),
        (["--output-dir", "caps", "--format", "csv"], ["--output-dir is for --format txt"]),
        (["-o", "out.csv", "--n-best", "2"], ["--n-best"]),
    ],
)
def test_option_mistakes_are_one_line(
    tiny_model: TinyModel, photos: list[Path], tmp_path: Path, args: list[str], fragments: list[str]
) -> None:
    done = run("caption", "-m", tiny_model.folder, "photos", *args, cwd=tmp_path)
    assert_one_line_error(done, USAGE, *fragments)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]  # nothing written


def test_jsonl_resume_still_works(
    tiny_model: TinyModel, photos: list[Path], tmp_path: Path
) -> None:
    first = run("caption", "-m", tiny_model.folder, "photos/1.jpg", "-o", "out.json", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    done = run(
        "caption", "-m", tiny_model.folder, "photos", "-o", "out.json", "--resume", "-q",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in (tmp_path / "out.json").read_text().splitlines()]
    assert sorted(r["path"] for r in records) == sorted(
        str(p.relative_to(tmp_path)) for p in photos
    )
    assert "photos/1.jpg" not in done.stdout.decode()  # skipped: already in the file


# txt files per image ------------------------------------------------------


def test_output_dir_writes_one_txt_per_image_and_never_replaces_one(
    tiny_model: TinyModel, photos: list[Path], tmp_path: Path
) -> None:
    expected = json_captions(tiny_model, tmp_path, "photos")
    done = run("caption", "-m", tiny_model.folder, "photos", "--output-dir", "caps", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    caps = tmp_path / "caps"
    assert sorted(p.name for p in caps.iterdir()) == ["007.txt", "1.txt", "cat.txt"]
    for path, caption in expected.items():
        assert (caps / f"{Path(path).stem}.txt").read_text(encoding="utf-8") == caption + "\n"

    # A second run would replace them: refused before anything runs, files unchanged.
    (caps / "cat.txt").write_text("my own words\n")
    again = run("caption", "-m", tiny_model.folder, "photos", "--output-dir", "caps", cwd=tmp_path)
    assert_one_line_error(again, USAGE, "exists", "--resume")
    assert (caps / "cat.txt").read_text() == "my own words\n"

    # --resume skips the images that have a file, and writes the missing one.
    (caps / "1.txt").unlink()
    resumed = run(
        "caption", "-m", tiny_model.folder, "photos", "--output-dir", "caps", "--resume",
        cwd=tmp_path,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    lines = resumed.stdout.decode().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["photos/1.jpg"]  # the others skipped
    assert (caps / "1.txt").read_text(encoding="utf-8") == expected["photos/1.jpg"] + "\n"
    assert (caps / "cat.txt").read_text() == "my own words\n"


def test_output_dir_refuses_two_images_with_one_stem(tiny_model: TinyModel, tmp_path: Path) -> None:
    write_images(tmp_path, ["a/x.jpg", "b/x.png"])
    done = run("caption", "-m", tiny_model.folder, "a", "b", "--output-dir", "caps", cwd=tmp_path)
    assert_one_line_error(done, USAGE, "a/x.jpg", "b/x.png", "caps/x.txt")
    assert not (tmp_path / "caps").exists()


def test_format_txt_alone_writes_beside_each_image(
    tiny_model: TinyModel, photos: list[Path], tmp_path: Path
) -> None:
    expected = json_captions(tiny_model, tmp_path, "photos")
    done = run("caption", "-m", tiny_model.folder, "photos", "--format", "txt", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for path, caption in expected.items():
        assert (tmp_path / path).with_suffix(".txt").read_text(encoding="utf-8") == caption + "\n"


def test_a_link_planted_as_a_caption_file_is_not_written_through(
    tiny_model: TinyModel, photos: list[Path], tmp_path: Path
) -> None:
    precious = tmp_path / "precious"
    precious.write_text("keep me")
    (tmp_path / "caps").mkdir()
    (tmp_path / "caps" / "cat.txt").symlink_to(precious)
    done = run("caption", "-m", tiny_model.folder, "photos", "--output-dir", "caps", cwd=tmp_path)
    assert_one_line_error(done, USAGE, "caps/cat.txt", "exists")
    assert precious.read_text() == "keep me"


# never overwrite a file capgen did not write ------------------------------


@pytest.mark.parametrize(
    ("name", "fmt", "foreign"),
    [
        # a user's own table with capgen's header, but LF line ends: not capgen's bytes
        ("out.csv", None, b"path,caption\nmine.jpg,my own caption\n"),
        ("out.tsv", None, b"image\tcaption\nmine.jpg\tmy own caption\n"),
        # another tool's COCO results (indented): same shape, not capgen's file
        ("r.json", "coco", json.dumps([{"image_id": 1, "caption": "x"}], indent=2).encode()),
        ("r.json", "coco", b"not json at all"),
    ],
)
def test_a_foreign_file_is_refused_untouched(
    tiny_model: TinyModel,
    photos: list[Path],
    tmp_path: Path,
    name: str,
    fmt: str | None,
    foreign: bytes,
) -> None:
    target = tmp_path / name
    target.write_bytes(foreign)
    extra = ["--format", fmt] if fmt else []
    done = run("caption", "-m", tiny_model.folder, "photos", "-o", name, *extra, cwd=tmp_path)
    assert_one_line_error(done, USAGE, name, "capgen wrote", "refusing")
    assert target.read_bytes() == foreign
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["photos", name, "home"])


def test_a_link_as_output_is_refused_and_its_target_kept(
    tiny_model: TinyModel, photos: list[Path], tmp_path: Path
) -> None:
    precious = tmp_path / "precious.csv"
    precious.write_bytes(b"path,caption\r\nmine.jpg,mine\r\n")  # even capgen's layout
    (tmp_path / "out.csv").symlink_to(precious)
    done = run("caption", "-m", tiny_model.folder, "photos", "-o", "out.csv", cwd=tmp_path)
    assert_one_line_error(done, USAGE, "symbolic link")
    assert precious.read_bytes() == b"path,caption\r\nmine.jpg,mine\r\n"
    assert (tmp_path / "out.csv").is_symlink()


def test_capgens_own_csv_is_replaced(
    tiny_model: TinyModel, photos: list[Path], tmp_path: Path
) -> None:
    first = run("caption", "-m", tiny_model.folder, "photos", "-o", "out.csv", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    second = run(
        "caption", "-m", tiny_model.folder, "photos/cat.jpg", "-o", "out.csv", cwd=tmp_path
    )
    assert second.returncode == 0, second.stderr
    rows = list(csv.reader(io.StringIO((tmp_path / "out.csv").read_text(), newline="")))
    assert [row[0] for row in rows] == ["path", "photos/cat.jpg"]


# --recursive --------------------------------------------------------------


def test_recursive_takes_subfolders_only_when_asked(
    tiny_model: TinyModel, photos: list[Path], tmp_path: Path
) -> None:
    write_images(tmp_path / "photos", ["sub/deep.jpg", "sub/deeper/x.png"], seed=1)
    flat = run("caption", "-m", tiny_model.folder, "photos", "-q", cwd=tmp_path)
    assert flat.returncode == 0, flat.stderr
    assert [line.split("\t")[0] for line in flat.stdout.decode().splitlines()] == [
        "photos/007.png",
        "photos/1.jpg",
        "photos/cat.jpg",
    ]
    deep = run("caption", "-m", tiny_model.folder, "photos", "--recursive", "-q", cwd=tmp_path)
    assert deep.returncode == 0, deep.stderr
    assert [line.split("\t")[0] for line in deep.stdout.decode().splitlines()] == [
        "photos/007.png",
        "photos/1.jpg",
        "photos/cat.jpg",
        "photos/sub/deep.jpg",
        "photos/sub/deeper/x.png",
    ]


def test_recursive_reports_a_tree_without_images(tiny_model: TinyModel, tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    done = run("caption", "-m", tiny_model.folder, "empty", "-r", cwd=tmp_path)
    assert b"Traceback" not in done.stderr
    assert done.returncode != 0
    assert done.stderr.decode().startswith(
        "capgen: empty: no images in this folder or its subfolders"
    )


# URL arguments and `capgen version` ----------------------------------------


@pytest.mark.parametrize(
    "url",
    ["http://example.com/a.jpg", "https://example.com/a.jpg", "s3://bucket/a.jpg", "gs://b/a.jpg"],
)
def test_a_url_says_capgen_reads_local_files(
    tiny_model: TinyModel, photos: list[Path], tmp_path: Path, url: str
) -> None:
    for args in ([url], ["photos/1.jpg", url]):
        done = run("caption", "-m", tiny_model.folder, *args, cwd=tmp_path)
        stderr = assert_one_line_error(done, USAGE, url, "only local files")
        assert "no such file" not in stderr
        assert done.stdout == b""  # refused before anything ran
    tutorial = run("-i", url, cwd=tmp_path)  # the tutorial's habit, no model needed to refuse
    assert_one_line_error(tutorial, USAGE, "only local files")


def test_capgen_version_is_the_version(tmp_path: Path) -> None:
    flag = run("--version", cwd=tmp_path)
    word = run("version", cwd=tmp_path)
    assert flag.returncode == 0 and word.returncode == 0, word.stderr
    assert word.stdout == flag.stdout and word.stdout.startswith(b"capgen ")
    assert word.stderr == b""  # no demonstration note, no "no such file"
    assert_one_line_error(run("version", "extra", cwd=tmp_path), USAGE, "extra")

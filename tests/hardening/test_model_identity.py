"""Issue 11 item 6: models have an identity.

`--name` defaults to the output folder's name, `-m NAME` finds
`$CAPGEN_HOME/models/NAME`, `capgen models` lists what is installed, the
manifest (not the folder's location) says which model is the
demonstration, and messages to pip users name `capgen setup`, never `make`.
"""

from __future__ import annotations

import json
from pathlib import Path

from cli_helpers import Run, write_photos
from test_odd_images_and_broken_models import keras_sources  # noqa: F401  (the module's Keras sources fixture)
from tiny_model import write_tiny_model

from capgen.convert.convert_model import convert_model
from capgen.runtime.manifest import load_manifest


def _install(home: Path, name: str, with_int8: bool) -> Path:
    return write_tiny_model(home / "models" / name, with_int8=with_int8).folder


def test_models_lists_what_is_installed(run: Run, home: Path) -> None:
    _install(home, "alpha", with_int8=True)
    _install(home, "beta", with_int8=False)
    broken = home / "models" / "broken"
    broken.mkdir(parents=True)
    (broken / "manifest.json").write_text("{not json")

    done = run("models")

    assert done.returncode == 0 and done.stderr == b"", done.stderr
    lines = done.stdout.decode().splitlines()
    assert lines[0].split() == ["NAME", "VOCABULARY", "ENCODER", "SIZE", "INT8"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["alpha"][1:3] == ["13", "xception"] and rows["alpha"][-1] == "yes"
    assert rows["beta"][-1] == "no" and rows["beta"][4] in ("kB", "MB")
    assert "unreadable:" in " ".join(rows["broken"])


def test_models_with_nothing_installed_says_how_to_get_one(run: Run) -> None:
    done = run("models")
    assert done.returncode == 0
    assert b"capgen setup" in done.stdout and b"make" not in done.stdout


def test_model_name_resolves_in_the_cache(run: Run, home: Path, tmp_path: Path) -> None:
    folder = _install(home, "alpha", with_int8=False)
    photo = write_photos(tmp_path / "photos", 1, seed=3)[0]
    by_path = run("caption", "-m", folder, photo)
    by_name = run("caption", "-m", "alpha", photo)
    assert by_path.returncode == by_name.returncode == 0, by_name.stderr
    assert by_name.stdout == by_path.stdout
    info = run("info", "alpha")
    assert info.returncode == 0 and f"folder:       {folder}".encode() in info.stdout

    unknown = run("caption", "-m", "gamma", photo)
    assert unknown.returncode == 3 and unknown.stderr.count(b"\n") == 1, unknown.stderr


def test_a_folder_of_that_name_here_wins_over_the_cache(
    run: Run, home: Path, tmp_path: Path
) -> None:
    """`-m alpha` is the path ./alpha when it exists: a name never hides a path."""
    _install(home, "alpha", with_int8=False)
    local = write_tiny_model(tmp_path / "alpha", words=None).folder
    manifest = json.loads((local / "manifest.json").read_text())
    (local / "manifest.json").write_text(json.dumps({**manifest, "name": "the local one"}))
    done = run("info", "alpha", cwd=tmp_path)
    assert done.returncode == 0 and b"model:        the local one" in done.stdout


def test_no_default_model_names_capgen_setup_not_make(run: Run, tmp_path: Path) -> None:
    photo = write_photos(tmp_path / "photos", 1, seed=4)[0]
    done = run("caption", photo)
    assert done.returncode == 3
    assert b"capgen setup" in done.stderr and b"make" not in done.stderr
    assert b"pip install 'capgen[convert]'" in done.stderr


def test_name_defaults_to_the_output_folder(
    keras_sources: dict[str, Path],  # noqa: F811
    tmp_path: Path,
) -> None:
    out = tmp_path / "my-captioner"
    convert_model(
        keras_sources["model"], keras_sources["tokenizer"], out, encoder=keras_sources["encoder"]
    )
    manifest = load_manifest(out)
    assert manifest.name == "my-captioner"
    assert "demonstration" not in manifest.extra

    demo = tmp_path / "demo"
    convert_model(
        keras_sources["model"],
        keras_sources["tokenizer"],
        demo,
        encoder=keras_sources["encoder"],
        name="default",
        demonstration=True,
    )
    assert load_manifest(demo).extra["demonstration"] is True

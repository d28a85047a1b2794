"""Issue 10, model folders and caches: findings 4, 5, 6, 9, 13, 17, 18, 19, 22 at the console script.

Each test plants what a hostile or unlucky folder would hold, runs `capgen`
the way a user does, and checks the one-line error (or the success) and that
nothing outside the folder was touched. Quantize tests use a tiny
convolutional encoder (a Conv and a GlobalAveragePool, the shape the
quantizer looks for) instead of the 83 MB Xception.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_helpers import Run, assert_one_line_error, limit_file_size, write_photos
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from test_odd_images_and_broken_models import keras_sources  # noqa: F401  (the module's Keras sources fixture)
from tiny_model import FEATURES, encoder_graph, write_tiny_model

from capgen.convert.hashing import sha256_file


def _manifest(folder: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((folder / "manifest.json").read_text(encoding="utf-8"))


def _write_manifest(folder: Path, manifest: dict) -> None:  # type: ignore[type-arg]
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def _relist(folder: Path, name: str) -> None:
    """Record `name`'s true sha256 and size, as a folder's author would."""
    manifest = _manifest(folder)
    manifest["files"][name] = {
        "sha256": sha256_file(folder / name),
        "bytes": (folder / name).stat().st_size,
    }
    _write_manifest(folder, manifest)


def _with_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Save `model` with every initializer's bytes in `w.bin` beside it."""
    for index, tensor in enumerate(model.graph.initializer):
        raw = numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name)
        model.graph.initializer[index].CopyFrom(raw)
    onnx.save(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="w.bin",
        size_threshold=0,
    )
    assert (path.parent / "w.bin").is_file()


def _convert_with_encoder(
    run: Run, sources: dict[str, Path], out: Path, encoder: Path
) -> subprocess.CompletedProcess[bytes]:
    """`capgen convert model MODEL TOKENIZER -o OUT --encoder ENCODER`."""
    return run(
        "convert", "model", sources["model"], sources["tokenizer"], "-o", out, "--encoder", encoder
    )


def _photo(tmp_path: Path) -> Path:
    return write_photos(tmp_path / "photos", 1, seed=10)[0]


def _quantizable_encoder() -> onnx.ModelProto:
    """uint8 [N,H,W,3] -> scale -> 1x1 Conv to FEATURES channels -> Relu -> GlobalAveragePool -> [N, F]."""
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Cast", ["image"], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["pixels", "scale"], ["scaled"]),
        helper.make_node("Sub", ["scaled", "one"], ["centred"]),
        helper.make_node("Transpose", ["centred"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "kernel", "bias"], ["conv"], name="conv"),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        helper.make_node("GlobalAveragePool", ["relu"], ["pooled"], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["features"], name="flatten", axis=1),
    ]
    initializers = {
        "scale": np.array(127.5, np.float32),
        "one": np.array(1.0, np.float32),
        "kernel": rng.normal(0, 1, (FEATURES, 3, 1, 1)).astype(np.float32),
        "bias": rng.normal(0, 0.1, FEATURES).astype(np.float32),
    }
    graph = helper.make_graph(
        nodes,
        "quantizable_encoder",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", "H", "W", 3])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", FEATURES])],
        [numpy_helper.from_array(value, name) for name, value in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture()
def quantizable_model(tmp_path: Path, home: Path) -> Path:
    """A tiny model folder with a quantizable encoder, and calibration photos in the private cache."""
    folder = write_tiny_model(tmp_path / "model").folder
    onnx.save(_quantizable_encoder(), str(folder / "encoder.onnx"))
    _relist(folder, "encoder.onnx")
    photos = home / "calibration" / "kitchenware"
    photos.mkdir(parents=True)
    rng = np.random.default_rng(4)
    for index in range(4):
        pixels = (rng.random((64, 80, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(photos / f"{index:04d}.jpg")
    return folder


@pytest.mark.convert
def test_partial_symlink_not_followed(run: Run, quantizable_model: Path, tmp_path: Path) -> None:
    """Planted `*.partial` links (INT8 encoder, fast step, manifest) must not redirect capgen's writes."""
    folder = quantizable_model
    victims = {}
    for index, name in enumerate(
        ("encoder.int8.onnx.partial", "decoder_step.int8.onnx.partial", "manifest.json.partial")
    ):
        victim = tmp_path / f"victim{index}.txt"
        victim.write_text(f"precious {index}\n")
        (folder / name).symlink_to(Path("..") / victim.name)
        victims[victim] = victim.read_bytes()

    leftover = folder / f".encoder.int8.onnx.{_dead_pid()}.k1ll3d.partial"  # f18 in a model folder
    leftover.write_bytes(b"half a graph")
    users_own = folder / "notes.partial"
    users_own.write_text("mine")

    done = run("convert", "quantize", folder, timeout=600)

    assert done.returncode == 0, done.stderr.decode()
    assert not leftover.exists() and users_own.read_text() == "mine"
    for victim, content in victims.items():
        assert victim.read_bytes() == content, victim
    for name in ("manifest.json", "encoder.int8.onnx", "decoder_step.int8.onnx"):
        assert not (folder / name).is_symlink(), name
    manifest = _manifest(folder)
    assert manifest["encoder"]["int8_file"] == "encoder.int8.onnx"
    assert manifest["decoder"]["int8_step_file"] == "decoder_step.int8.onnx"
    info = run("info", folder)
    assert info.returncode == 0, info.stderr.decode()


def test_external_data_refused_at_load(run: Run, tmp_path: Path) -> None:
    """An encoder whose weights sit in a side file is refused: the manifest cannot vouch for it."""
    folder = write_tiny_model(tmp_path / "model").folder
    _with_external_data(encoder_graph(), folder / "encoder.onnx")
    _relist(folder, "encoder.onnx")

    done = run("caption", "-m", folder, _photo(tmp_path))

    assert_one_line_error(done, 3, "encoder.onnx", "external data")
    assert done.stdout == b""


@pytest.mark.convert
def test_external_data_refused_by_quantize(run: Run, quantizable_model: Path) -> None:
    """`capgen convert quantize` refuses a folder's encoder with external data, as the runtime does."""
    _with_external_data(_quantizable_encoder(), quantizable_model / "encoder.onnx")
    _relist(quantizable_model, "encoder.onnx")
    done = run("convert", "quantize", quantizable_model, timeout=600)
    assert_one_line_error(done, 3, "encoder.onnx", "external data")
    assert not (quantizable_model / "encoder.int8.onnx").exists()


@pytest.mark.convert
def test_external_data_refused_at_conversion(
    run: Run,
    keras_sources: dict[str, Path],  # noqa: F811
    tmp_path: Path,
) -> None:
    """`convert model --encoder PATH` refuses an encoder with external data before writing anything."""
    from keras_decoder_builders import tiny_encoder_onnx

    (tmp_path / "user").mkdir()
    encoder = tiny_encoder_onnx(tmp_path / "user" / "encoder.onnx", 32)
    _with_external_data(onnx.load(str(encoder)), encoder)
    done = _convert_with_encoder(run, keras_sources, tmp_path / "out", encoder)
    assert_one_line_error(done, 3, "external data")
    assert not (tmp_path / "out").exists()


def test_cache_key_covers_graph_options() -> None:
    """The optimised-graph cache key changes with everything that changes the optimised graph."""
    from capgen.runtime import graph_cache

    base = graph_cache._optimized_cache_path("a" * 64)
    assert graph_cache._optimized_cache_path("b" * 64) != base
    original = graph_cache.CACHE_FORMAT
    try:
        graph_cache.CACHE_FORMAT = original + "x"
        assert graph_cache._optimized_cache_path("a" * 64) != base
    finally:
        graph_cache.CACHE_FORMAT = original


@pytest.mark.parametrize("command", ["info", "caption"])
@pytest.mark.parametrize("link", ["vocabulary.json", "manifest.json"])
def test_symlink_leaving_folder_refused(run: Run, tmp_path: Path, command: str, link: str) -> None:
    """A link out of the folder is refused by name, without the outside file's size or checksum."""
    folder = write_tiny_model(tmp_path / "model").folder
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n" * 3)
    (folder / link).unlink()
    (folder / link).symlink_to(secret)
    args = ["info", folder] if command == "info" else ["caption", "-m", folder, _photo(tmp_path)]

    done = run(*args)

    line = assert_one_line_error(done, 3, link, "symbolic link that leaves the model folder")
    assert str(secret.stat().st_size) not in line
    assert sha256_file(secret)[:6] not in line


def test_symlink_inside_folder_still_works(run: Run, tmp_path: Path) -> None:
    """A link to another file of the same folder stays allowed (e.g. a folder assembled with links)."""
    folder = write_tiny_model(tmp_path / "model").folder
    (folder / "vocabulary.json").rename(folder / "words.json")
    (folder / "vocabulary.json").symlink_to("words.json")
    done = run("info", folder)
    assert done.returncode == 0, done.stderr.decode()


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("decoder", "units", 10**12),
        ("decoder", "projection_size", 10**12),
        ("encoder", "feature_size", 10**12),
        ("vocabulary", "size", 10**12),
    ],
)
def test_manifest_sizes_bounded(
    run: Run, tmp_path: Path, section: str, key: str, value: int
) -> None:
    """Sizes that shape allocations are bounded at load: one line, exit 3, no MemoryError."""
    folder = write_tiny_model(tmp_path / "model").folder
    manifest = _manifest(folder)
    manifest[section][key] = value
    _write_manifest(folder, manifest)
    done = run("caption", "-m", folder, _photo(tmp_path))
    assert_one_line_error(done, 3, f"{section}.{key}", "limit")


@pytest.mark.parametrize("name", ["encoder.onnx\x00.txt", "..", "bad\nname", "bad\x1b[31mname"])
@pytest.mark.parametrize("command", ["info", "caption"])
def test_invalid_manifest_file_name(run: Run, tmp_path: Path, name: str, command: str) -> None:
    """NUL, `..` and control characters in a manifest's file names: one line, exit 3."""
    folder = write_tiny_model(tmp_path / "model").folder
    manifest = _manifest(folder)
    manifest["files"][name] = {"sha256": "0" * 64, "bytes": 1}
    _write_manifest(folder, manifest)
    args = ["info", folder] if command == "info" else ["caption", "-m", folder, _photo(tmp_path)]
    done = run(*args)
    line = assert_one_line_error(done, 3, "must be a plain name inside the folder")
    assert "\x1b" not in line


def test_full_cache_disk_costs_only_speed(run: Run, tmp_path: Path, home: Path) -> None:
    """When the optimised graph cannot be written, the caption is still made (exit 0)."""
    folder = write_tiny_model(tmp_path / "model").folder
    photo = _photo(tmp_path)
    expected = run("caption", "-m", folder, photo)
    assert expected.returncode == 0, expected.stderr.decode()
    for entry in (home / "optimized").glob("*"):
        entry.unlink()

    done = run("caption", "-m", folder, photo, preexec_fn=limit_file_size(64))

    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == expected.stdout
    assert not [p for p in (home / "optimized").glob("*") if p.stat().st_size]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_cache_temporaries_pruned(run: Run, tmp_path: Path, home: Path) -> None:
    """Temporary files of runs killed while optimising are deleted by the next run; a live one stays."""
    folder = write_tiny_model(tmp_path / "model").folder
    optimized = home / "optimized"
    optimized.mkdir(parents=True)
    old = time.time() - 3600
    stale_old_style = optimized / "tmpab12cd34.partial"  # what capgen wrote before this fix
    stale_old_style.write_bytes(b"x" * 1000)
    os.utime(stale_old_style, (old, old))
    stale_dead = optimized / f".0123.onnx.{_dead_pid()}.zz9.partial"
    stale_dead.write_bytes(b"x" * 1000)
    live = optimized / f".0123.onnx.{os.getpid()}.yy8.partial"  # this test process is alive
    live.write_bytes(b"x" * 1000)

    done = run("caption", "-m", folder, _photo(tmp_path))

    assert done.returncode == 0, done.stderr.decode()
    assert not stale_old_style.exists() and not stale_dead.exists()
    assert live.exists()
    assert list(optimized.glob("*.onnx"))  # the run's own entry was committed


def test_user_encoder_is_copied_not_linked(tmp_path: Path) -> None:
    """The model folder never shares an inode with the user's encoder: re-saving it breaks nothing."""
    from tiny_model import WORDS, random_weights

    from capgen.convert.delimiters import Delimiters
    from capgen.convert.model_folder import ModelFolderSpec, describe_encoder, write_model_folder

    user = tmp_path / "mine" / "encoder.onnx"
    user.parent.mkdir()
    onnx.save(encoder_graph(), str(user))
    spec = ModelFolderSpec(
        weights=random_weights(),
        vocabulary=list(WORDS),
        delimiters=Delimiters.given(list(WORDS), "start", "end"),
        max_length=8,
        sources={},
    )
    folder = write_model_folder(tmp_path / "model", spec, describe_encoder(user))

    assert not os.path.samefile(user, folder / "encoder.onnx")
    before = (folder / "encoder.onnx").read_bytes()
    with user.open("r+b") as handle:  # the user edits their own file in place
        handle.seek(0, os.SEEK_END)
        handle.write(b"\0" * 16)
    assert (folder / "encoder.onnx").read_bytes() == before


@pytest.mark.convert
def test_convert_model_copies_user_encoder(
    run: Run,
    keras_sources: dict[str, Path],  # noqa: F811
    tmp_path: Path,
) -> None:
    """The same through `capgen convert model --encoder PATH`."""
    out = tmp_path / "out"
    done = _convert_with_encoder(run, keras_sources, out, keras_sources["encoder"])
    assert done.returncode == 0, done.stderr.decode()
    assert not os.path.samefile(keras_sources["encoder"], out / "encoder.onnx")
    assert (out / "encoder.onnx").stat().st_nlink == 1


@pytest.mark.convert
# A real process: quantization silences onnxruntime's prints at the file-descriptor level.
@pytest.mark.subprocess
def test_quantize_relative_path_and_quiet(
    run: Run, quantizable_model: Path, tmp_path: Path
) -> None:
    """A relative MODEL_DIR works, and only capgen's own lines reach the terminal."""
    done = run("convert", "quantize", "model", cwd=tmp_path, timeout=600)

    assert done.returncode == 0, done.stderr.decode()
    assert done.stderr == b"", done.stderr.decode()
    lines = done.stdout.decode().splitlines()
    known = ("calibrating on", "kept in float", "wrote ", "quantized in", "feature cosine")
    assert lines and all(line.startswith(known) for line in lines), lines
    assert (quantizable_model / "encoder.int8.onnx").is_file()
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob("*.data"))

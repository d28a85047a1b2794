"""Model folders: manifest validation, file integrity (with cached checksums), Captioner loading."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from tiny_model import TinyModel, encoder_numpy, write_tiny_model

from capgen.runtime import integrity as integrity_module
from capgen.runtime.captioner import Captioner
from capgen.runtime.errors import (
    CapgenError,
    GitLfsPointerError,
    ImageError,
    ModelError,
    ModelIntegrityError,
)
from capgen.runtime.integrity import verify_files
from capgen.runtime.manifest import load_manifest


@pytest.fixture()
def model_copy(tiny_model: TinyModel, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(tiny_model.folder, target)
    return target


def _edit_manifest(folder: Path, edit) -> None:  # type: ignore[no-untyped-def]
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_a_valid_folder_loads(tiny_model: TinyModel) -> None:
    manifest = load_manifest(tiny_model.folder)
    assert manifest.encoder.height == 32 and manifest.vocabulary.end_id == 11
    verify_files(manifest, use_stamps=False)


def test_unknown_format_version_is_a_model_error(model_copy: Path) -> None:
    _edit_manifest(model_copy, lambda d: d.update(format_version=2))
    with pytest.raises(ModelError, match="format_version 2"):
        load_manifest(model_copy)


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda d: d["encoder"].pop("feature_size"), "encoder.feature_size"),
        (lambda d: d["encoder"]["input"].update(height="299"), "encoder.input.height"),
        (lambda d: d.update(max_length=0), "max_length"),
        (lambda d: d.update(max_length=True), "max_length"),
        (lambda d: d.update(format="something-else"), "not a capgen model"),
        (lambda d: d["files"].pop("decoder_step.onnx"), "no entry"),
        (lambda d: d["files"].update({"../evil.onnx": {"sha256": "0", "bytes": 1}}), "plain name"),
    ],
)
def test_broken_manifests_name_the_problem(model_copy: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    _edit_manifest(model_copy, edit)
    with pytest.raises(ModelError, match=message):
        load_manifest(model_copy)


def test_not_json_missing_and_lfs_pointer(model_copy: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        load_manifest(tmp_path / "nowhere")
    with pytest.raises(ModelError, match="no manifest"):
        load_manifest(tmp_path)
    (model_copy / "manifest.json").write_text("{not json")
    with pytest.raises(ModelError, match="JSON"):
        load_manifest(model_copy)
    (model_copy / "manifest.json").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 9\n"
    )
    with pytest.raises(GitLfsPointerError):
        load_manifest(model_copy)


def test_missing_truncated_and_modified_files_are_caught(model_copy: Path) -> None:
    manifest = load_manifest(model_copy)
    verify_files(manifest)  # leaves stamps behind
    step = model_copy / "decoder_step.onnx"
    original = step.read_bytes()
    step.write_bytes(original[:-10])
    with pytest.raises(ModelIntegrityError, match="bytes"):
        verify_files(manifest)
    step.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # same size, new content and mtime
    with pytest.raises(ModelIntegrityError, match="sha256"):
        verify_files(manifest)
    step.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 11019\n")
    with pytest.raises(GitLfsPointerError):
        verify_files(manifest)
    step.unlink()
    with pytest.raises(ModelIntegrityError, match="missing"):
        verify_files(manifest)


def test_a_verified_file_is_not_hashed_again_until_it_changes(
    model_copy: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    manifest = load_manifest(model_copy)
    verify_files(manifest)
    hashed: list[str] = []
    real_digest = hashlib.file_digest

    def counting_digest(handle, name):  # type: ignore[no-untyped-def]
        hashed.append(handle.name)
        return real_digest(handle, name)

    monkeypatch.setattr(integrity_module.hashlib, "file_digest", counting_digest)
    verify_files(manifest)
    assert hashed == []
    os.utime(model_copy / "encoder.onnx", ns=(1, 1))  # touched: must be re-hashed (and still match)
    verify_files(manifest)
    assert [Path(h).name for h in hashed] == ["encoder.onnx"]


def test_vocabulary_that_disagrees_with_the_model(model_copy: Path) -> None:
    words = json.loads((model_copy / "vocabulary.json").read_text())
    shorter = words[:-1]
    (model_copy / "vocabulary.json").write_text(json.dumps(shorter))

    def fix(d: dict) -> None:  # type: ignore[type-arg]
        d["vocabulary"]["size"] = len(shorter)
        data = (model_copy / "vocabulary.json").read_bytes()
        d["files"]["vocabulary.json"] = {
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
        }

    _edit_manifest(model_copy, fix)
    with pytest.raises(ModelError, match="vocabulary has 12"):
        Captioner(model_copy)


def test_default_model_missing_says_how_to_get_it(monkeypatch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("CAPGEN_HOME", str(tmp_path / "empty-home"))
    with pytest.raises(ModelError, match="capgen setup"):
        Captioner()


def test_default_model_is_used_when_present(
    monkeypatch, tmp_path: Path, tiny_model: TinyModel
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("CAPGEN_HOME", str(tmp_path))
    shutil.copytree(tiny_model.folder, tmp_path / "models" / "default")
    captioner = Captioner()
    assert captioner.is_default_model
    assert captioner.caption(np.zeros((8, 8, 3), np.uint8)).raw.startswith("start")


def test_int8_encoder_is_used_only_when_listed(tiny_model: TinyModel, tmp_path: Path) -> None:
    assert Captioner(tiny_model.folder, int8=True).caption(np.zeros((8, 8, 3), np.uint8)).text
    plain = write_tiny_model(tmp_path / "plain")
    with pytest.raises(ModelError, match="INT8"):
        Captioner(plain.folder, int8=True)


def test_a_broken_onnx_file_is_a_model_error(model_copy: Path) -> None:
    (model_copy / "encoder.onnx").write_bytes(b"\0" * 10)

    def fix(d: dict) -> None:  # type: ignore[type-arg]
        d["files"]["encoder.onnx"] = {"sha256": hashlib.sha256(b"\0" * 10).hexdigest(), "bytes": 10}

    _edit_manifest(model_copy, fix)
    with pytest.raises(ModelError, match="ONNX"):
        Captioner(model_copy)


def test_the_encoder_sees_the_preprocessed_pixels(tiny_captioner: Captioner) -> None:
    pixels = np.stack(
        [tiny_captioner.preprocess(np.full((40, 50, 3), v, np.uint8)) for v in (0, 100, 255)]
    )
    np.testing.assert_allclose(tiny_captioner.features(pixels), encoder_numpy(pixels), atol=1e-6)


def test_batch_with_bad_images_captions_the_good_ones(
    tiny_captioner: Captioner, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_text("no")
    good = [np.full((30, 30, 3), v, np.uint8) for v in (10, 120, 240)]
    outcomes = tiny_captioner.caption_batch(
        [good[0], bad, good[1], tmp_path / "gone.png", good[2]], batch_size=2, errors="return"
    )
    assert [type(o).__name__ for o in outcomes] == [
        "DecodingResult",
        "ImageError",
        "DecodingResult",
        "InputError",
        "DecodingResult",
    ]
    alone = [tiny_captioner.caption(g) for g in good]
    assert [o.tokens for o in outcomes[::2]] == [a.tokens for a in alone]  # type: ignore[union-attr]
    with pytest.raises(ImageError):
        tiny_captioner.caption_batch([good[0], bad])


def test_result_carries_timings_and_types(tiny_captioner: Captioner) -> None:
    result = tiny_captioner.caption(np.zeros((9, 9, 3), np.uint8), beam_size=2, n_best=2)
    assert set(result.timings) == {"preprocess", "encode", "decode", "total"}
    assert all(v >= 0 for v in result.timings.values())
    assert len(result.alternatives) == 1
    assert isinstance(result.tokens, tuple) and isinstance(result.log_probability, float)


def test_eight_threads_give_the_same_captions_as_serial(tiny_captioner: Captioner) -> None:
    rng = np.random.default_rng(11)
    images = [(rng.random((40, 40, 3)) * 255).astype(np.uint8) for _ in range(32)]
    serial = [
        (r.tokens, r.log_probability) for r in tiny_captioner.caption_batch(images, beam_size=3)
    ]
    barrier = threading.Barrier(8)

    def caption(index: int) -> tuple[tuple[int, ...], float]:
        if index < 8:
            barrier.wait()
        result = tiny_captioner.caption(images[index], beam_size=3)
        return result.tokens, result.log_probability

    with ThreadPoolExecutor(max_workers=8) as pool:
        threaded = list(pool.map(caption, range(len(images))))
    assert [t for t, _ in threaded] == [t for t, _ in serial]
    assert [p for _, p in threaded] == pytest.approx([p for _, p in serial], abs=1e-5)


def test_captioning_never_imports_the_conversion_stack(
    tiny_model: TinyModel, tmp_path: Path
) -> None:
    script = (
        "import sys, numpy as np\n"
        "from capgen import Captioner\n"
        f"c = Captioner({str(tiny_model.folder)!r})\n"
        "print(c.caption(np.zeros((20, 20, 3), np.uint8)).raw)\n"
        "from capgen.runtime import inputs, results\n"
        "from capgen.cli_support import commands, annotate, sinks\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'tf_keras', 'h5py', 'onnx', 'tf2onnx') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    env = {**os.environ, "CAPGEN_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith("start")
    assert done.stdout.splitlines()[-1] == "HEAVY []"


def test_errors_are_capgen_errors(tiny_captioner: Captioner) -> None:
    with pytest.raises(CapgenError):
        tiny_captioner.caption(b"garbage")


def test_abandoning_a_batch_midway_stops_reading_images(tiny_captioner: Captioner) -> None:
    read: list[int] = []

    def images():  # type: ignore[no-untyped-def]
        for index in range(1000):
            read.append(index)
            yield np.full((16, 16, 3), index % 256, np.uint8)

    stream = tiny_captioner.iter_captions(images(), batch_size=4)
    first = next(stream)
    stream.close()
    assert not isinstance(first[1], CapgenError)
    assert len(read) <= 4 + 2 * 4 + 1  # one batch plus the read-ahead, not the whole input

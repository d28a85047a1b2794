"""Issue 7's list of odd images and broken models, through the real console script.

The runtime and converter tests prove each case through the API; these prove
what a user sees: one batch holding every odd image captions the good ones
and reports each bad one on one line with its path (exit 1), a CLI fuzz run
never prints a traceback, and every broken model is one `capgen: error:` line
with the family's exit code.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import Run, assert_one_line_error, limit_file_size
from PIL import Image
from tiny_model import TinyModel


def _photo(seed: int, size: tuple[int, int] = (60, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def _jpeg(image: Image.Image, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **kwargs)
    return buffer.getvalue()


def _write_odd_images(folder: Path) -> tuple[list[str], dict[str, str]]:
    """(every input in order, {bad input: expected reason fragment}); the rest must caption."""
    folder.mkdir()
    photo = _photo(1)
    files: dict[str, bytes | None] = {}
    files["empty.jpg"] = b""
    files["truncated.jpg"] = _jpeg(_photo(2, (200, 200)), quality=95)[:3000]
    files["notes.jpg"] = b"just some notes, not a photo\n"
    files["error-page.png"] = b"<!DOCTYPE html><html><body>404 Not Found</body></html>"
    files["bomb.png"] = _png_header_only(30000, 30000)
    for name, content in files.items():
        (folder / name).write_bytes(content or b"")
    Image.new("RGB", (1, 1), (200, 10, 10)).save(folder / "dot.png")
    frames = [_photo(3), _photo(4), _photo(5)]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:])
    frames[0].save(folder / "pages.tif", save_all=True, append_images=frames[1:])
    Image.fromarray((np.random.default_rng(6).random((30, 30)) * 65535).astype(np.uint16)).save(
        folder / "deep.png"
    )
    photo.convert("CMYK").save(folder / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    photo.save(folder / "rotated.png", exif=exif)
    photo.transpose(Image.Transpose.ROTATE_270).save(folder / "upright.png")
    odd_name = os.fsencode(folder) + b"/\xff\xfe-photo.jpg"
    with open(odd_name, "wb") as handle:
        handle.write(_jpeg(photo))
    (folder / "a-folder.jpg").mkdir()
    names = [
        "empty.jpg",
        "truncated.jpg",
        "notes.jpg",
        "error-page.png",
        "bomb.png",
        "dot.png",
        "animated.gif",
        "pages.tif",
        "deep.png",
        "cmyk.jpg",
        "rotated.png",
        "upright.png",
        "a-folder.jpg",
        "missing.jpg",
    ]
    inputs = [str(folder / name) for name in names] + [os.fsdecode(odd_name)]
    bad = {
        "empty.jpg": "empty file",
        "truncated.jpg": "cannot decode image",
        "notes.jpg": "not an image",
        "error-page.png": "HTML",
        "bomb.png": "decompression bomb",
        "a-folder.jpg": "no images in this folder",
        "missing.jpg": "no such file",
    }
    return inputs, {str(folder / name): reason for name, reason in bad.items()}


def test_one_batch_with_every_odd_image(
    run: Run, hardening_model: TinyModel, tmp_path: Path
) -> None:
    inputs, bad = _write_odd_images(tmp_path / "odd")
    output = tmp_path / "captions.jsonl"
    done = run(
        "caption",
        "-m",
        hardening_model.folder,
        *inputs,
        "--json",
        "-o",
        output,
        "--batch-size",
        "4",
        timeout=120,
    )
    stderr = done.stderr.decode("utf-8", "replace")
    assert b"Traceback" not in done.stderr, stderr
    assert done.returncode == 1
    records = {record["path"]: record for record in map(json.loads, done.stdout.splitlines())}
    assert set(records) == set(inputs)  # every input answered, good or bad
    for path in inputs:
        if path in bad:
            assert bad[path] in records[path]["error"], (path, records[path])
            line = f"capgen: {path}: {records[path]['error']}"
            assert line in stderr.splitlines(), (line, stderr)
        else:
            assert records[path]["caption"], (path, records[path])
    assert len(stderr.splitlines()) == len(bad)  # one line per bad input, nothing else
    folder = tmp_path / "odd"
    assert (
        records[str(folder / "rotated.png")]["tokens"]
        == records[str(folder / "upright.png")]["tokens"]
    )
    assert [json.loads(line)["path"] for line in output.read_text().splitlines()] == [
        json.loads(line)["path"] for line in done.stdout.splitlines()
    ]


def _mutations(seeds: list[bytes], count: int, rng: random.Random) -> list[bytes]:
    mutated = []
    for _ in range(count):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 8)):
            position = rng.randrange(len(data))
            action = rng.choice(["flip", "set", "insert", "delete"])
            if action == "flip":
                data[position] ^= 1 << rng.randrange(8)
            elif action == "set":
                data[position] = rng.randrange(256)
            elif action == "insert":
                data[position:position] = bytes([rng.randrange(256)]) * rng.randint(1, 64)
            elif len(data) > 1:
                del data[position]
        if rng.random() < 0.3:
            data = data[: rng.randrange(len(data) + 1)]
        mutated.append(bytes(data))
    return mutated


@pytest.mark.slow
def test_cli_fuzz_mutated_images_never_crash_the_batch(
    run: Run, hardening_model: TinyModel, tmp_path: Path
) -> None:
    """120 mutated JPEG/PNG/GIF/TIFF/WebP/BMP files in one batch: captions or one-line reasons, no traceback."""
    photo = _photo(7, (32, 24))
    seeds = []
    for fmt, kwargs in (
        ("JPEG", {"quality": 80}),
        ("PNG", {}),
        ("GIF", {}),
        ("TIFF", {}),
        ("WEBP", {}),
        ("BMP", {}),
    ):
        buffer = io.BytesIO()
        photo.save(buffer, fmt, **kwargs)
        seeds.append(buffer.getvalue())
    folder = tmp_path / "fuzz"
    folder.mkdir()
    paths = []
    for index, data in enumerate(_mutations(seeds, 120, random.Random(20261125))):
        path = folder / f"case{index:03d}.png"
        path.write_bytes(data)
        paths.append(str(path))
    done = run("caption", "-m", hardening_model.folder, folder, "--json", timeout=300)
    stderr = done.stderr.decode("utf-8", "replace")
    assert b"Traceback" not in done.stderr, stderr
    assert done.returncode in (0, 1)
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["path"] for r in records] == paths
    failed = [r for r in records if "error" in r]
    assert all(("caption" in r) != ("error" in r) for r in records)
    assert stderr.splitlines() == [f"capgen: {r['path']}: {r['error']}" for r in failed]
    assert done.returncode == (1 if failed else 0)


# ---- models: every broken model is one line and the model family's exit code ----


def test_broken_model_folders_at_the_cli(
    run: Run, hardening_model: TinyModel, tmp_path: Path
) -> None:
    photo = tmp_path / "photo.png"
    _photo(8).save(photo)

    def broken(name: str, damage) -> Path:  # type: ignore[no-untyped-def]
        folder = tmp_path / name
        shutil.copytree(hardening_model.folder, folder)
        damage(folder)
        return folder

    step = "decoder_step.onnx"
    cases = {
        "missing": (lambda f: (f / step).unlink(), "missing from the model folder"),
        "truncated": (
            lambda f: (f / step).write_bytes((f / step).read_bytes()[:-100]),
            "truncated or replaced",
        ),
        "modified": (
            lambda f: (f / step).write_bytes((f / step).read_bytes()[:-1] + b"\x00"),
            "does not match the manifest",
        ),
        "lfs": (
            lambda f: (f / "encoder.onnx").write_bytes(
                b"version https://git-lfs.github.com/spec/v1\noid x\n"
            ),
            "Git LFS pointer",
        ),
        "version": (
            lambda f: (f / "manifest.json").write_text(
                json.dumps({**json.loads((f / "manifest.json").read_text()), "format_version": 99})
            ),
            "format_version 99 is not supported",
        ),
    }
    for name, (damage, fragment) in cases.items():
        done = run("caption", "-m", broken(name, damage), photo)
        assert_one_line_error(done, 3, fragment)
        assert done.stdout == b""


@pytest.fixture(scope="module")
def keras_sources(
    tmp_path_factory: pytest.TempPathFactory, tensorflow_stack: None
) -> dict[str, Path]:
    """A small tutorial decoder (Keras 3 .h5), a plain classifier .h5, a tokenizer and an encoder."""
    import keras
    from keras_decoder_builders import (
        DecoderShape,
        apply_role_weights,
        build_keras3_decoder,
        peaked_role_weights,
        tiny_encoder_onnx,
    )
    from pickle_builders import write_fake_tokenizer

    folder = tmp_path_factory.mktemp("keras_sources")
    words = ["end", "start", "a", "dog", "runs", "on", "the", "grass"]
    shape = DecoderShape(
        feature_size=32,
        max_length=10,
        vocab_size=len(words) + 1,
        embedding_size=8,
        units=12,
        projection_size=12,
        hidden_size=10,
    )
    model = build_keras3_decoder(shape)
    apply_role_weights(model, peaked_role_weights(shape, seed=2))
    model.save(folder / "model_9.h5")
    model.save(folder / "model_9.keras")
    inputs = keras.Input((32,))
    keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(inputs)).save(
        folder / "classifier.h5"
    )
    return {
        "model": folder / "model_9.h5",
        "keras_zip": folder / "model_9.keras",
        "classifier": folder / "classifier.h5",
        "tokenizer": write_fake_tokenizer(folder / "tokenizer.p", words),
        "other_tokenizer": write_fake_tokenizer(folder / "other.p", [*words, "cat", "sleeps"]),
        "encoder": tiny_encoder_onnx(folder / "encoder.onnx", 32),
    }


class _RunsOnLoad:
    def __init__(self, call: object, args: tuple[object, ...]) -> None:
        self.call, self.args = call, args

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return self.call, self.args  # type: ignore[return-value]


@pytest.mark.convert
def test_broken_models_and_tokenizers_at_capgen_convert_model(
    run: Run, keras_sources: dict[str, Path], shared_data: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    files = {
        "truncated.h5": keras_sources["model"].read_bytes()[:3000],
        "empty.p": b"",
        "lfs.p": (shared_data / "bad_inputs" / "git-lfs-pointer-model_9.h5").read_bytes(),
        "system.p": pickle.dumps(_RunsOnLoad(os.system, (f"touch {marker}",))),
        "eval.p": pickle.dumps(_RunsOnLoad(eval, (f"open({str(marker)!r}, 'w').close()",))),
        "unknown.p": pickle.dumps(_RunsOnLoad(complex, (1, 2))),
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    good_model, good_tokenizer = keras_sources["model"], keras_sources["tokenizer"]
    lfs_model = shared_data / "bad_inputs" / "git-lfs-pointer-model_9.h5"
    cases = [
        (
            lfs_model,
            good_tokenizer,
            3,
            "is a Git LFS pointer, not the file itself; fetch the real file with "
            "`git lfs install && git lfs pull`",
        ),
        (tmp_path / "truncated.h5", good_tokenizer, 3, "truncated or corrupt"),
        (keras_sources["classifier"], good_tokenizer, 3, "1 inputs, expected 2"),
        (good_model, keras_sources["other_tokenizer"], 4, "tokenizer does not match the model"),
        (good_model, tmp_path / "empty.p", 4, "tokenizer is empty"),
        (good_model, tmp_path / "lfs.p", 3, "Git LFS pointer"),
        (good_model, tmp_path / "system.p", 4, "nothing was executed"),
        (good_model, tmp_path / "eval.p", 4, "builtins.eval"),
        (good_model, tmp_path / "unknown.p", 4, "builtins.complex"),
    ]
    for model, tokenizer, exit_code, fragment in cases:
        out = tmp_path / "out"
        done = run(
            "convert", "model", model, tokenizer, "-o", out, "--encoder", keras_sources["encoder"]
        )
        assert_one_line_error(done, exit_code, fragment)
        assert not out.exists(), (model, tokenizer)  # nothing half-written
    assert not marker.exists()
    good = run(
        "convert",
        "model",
        good_model,
        good_tokenizer,
        "-o",
        tmp_path / "good",
        "--encoder",
        keras_sources["encoder"],
    )
    assert good.returncode == 0, good.stderr
    assert b"vocabulary:     9 ids\nstart/end:      start 'start' (id 2" in good.stdout


# ---- crafted Keras files: declared sizes and types are checked before anything is read ----


def _replace_dataset(source: Path, target: Path, key: str, **create: object) -> Path:
    import h5py

    shutil.copyfile(source, target)
    with h5py.File(target, "a") as handle:
        del handle[key]
        handle.create_dataset(key, **create)
    return target


@pytest.mark.convert
def test_crafted_h5_weights_are_refused_before_reading(
    run: Run, keras_sources: dict[str, Path], tmp_path: Path
) -> None:
    """A 60 kB .h5 declaring a 15 GiB array used to die of MemoryError; text weights of a ValueError."""
    embeddings = "model_weights/embedding/embedding/embeddings"
    bias = "model_weights/hidden_dense/hidden_dense/bias"
    bomb = _replace_dataset(
        keras_sources["model"],
        tmp_path / "bomb.h5",
        embeddings,
        shape=(200_000, 20_000),
        dtype="f4",
        chunks=(1000, 1000),
        compression="gzip",
        fillvalue=0,
    )
    assert bomb.stat().st_size < 1_000_000
    text = _replace_dataset(
        keras_sources["model"], tmp_path / "text.h5", bias, data=np.array([b"x"] * 10, dtype="S1")
    )
    for model, fragment in (
        (bomb, "declares shape (200000, 20000) (14.9 GiB)"),
        (text, "not numbers"),
    ):
        done = run(
            "convert",
            "model",
            model,
            keras_sources["tokenizer"],
            "-o",
            tmp_path / "out",
            "--encoder",
            keras_sources["encoder"],
            timeout=120,
        )
        assert_one_line_error(done, 3, fragment)


@pytest.mark.convert
def test_a_keras_zip_declaring_too_much_is_not_unpacked(
    keras_sources: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from capgen.convert import keras_reader
    from capgen.runtime.errors import ModelError

    archive = keras_sources["keras_zip"]
    assert keras_reader.read_keras_model(archive).weights  # reads while under the limit
    monkeypatch.setattr(keras_reader, "MAX_WEIGHT_BYTES", 1000)  # the real limit is 1 GiB
    with pytest.raises(ModelError, match=r"model\.weights\.h5 declares [\d,]+ bytes uncompressed"):
        keras_reader.read_keras_model(archive)


@pytest.mark.convert
def test_absurdly_nested_json_tokenizer_and_architecture(
    run: Run, keras_sources: dict[str, Path], tmp_path: Path
) -> None:
    """json.loads raises RecursionError, not ValueError, on '[' * 200000: it used to escape as a traceback."""
    nested = "[" * 200_000 + "]" * 200_000
    tokenizer = tmp_path / "tokenizer.json"
    tokenizer.write_text('{"class_name": "Tokenizer", "config": ' + nested + "}")
    architecture = tmp_path / "model.json"
    architecture.write_text(nested)
    encoder = ["--encoder", keras_sources["encoder"]]
    done = run(
        "convert", "model", keras_sources["model"], tokenizer, "-o", tmp_path / "a", *encoder
    )
    assert_one_line_error(done, 4, "not a readable tokenizer JSON")
    done = run(
        "convert",
        "model",
        keras_sources["model"],
        keras_sources["tokenizer"],
        "--architecture",
        architecture,
        "-o",
        tmp_path / "b",
        *encoder,
    )
    assert_one_line_error(done, 3, "is not valid JSON")


def _encoder_with_input(path: Path, name: str, element: int, shape: list[object]) -> Path:
    """An encoder ONNX whose `features` output is right but whose input is `name`/`element`/`shape`."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Cast", [name], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["pixels"], ["means"], axes=[1, 2], keepdims=0),
        helper.make_node("Tile", ["means", "reps"], ["features"]),
    ]
    graph = helper.make_graph(
        nodes,
        "odd_encoder",
        [helper.make_tensor_value_info(name, element, shape)],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 33])],
        [helper.make_tensor("reps", TensorProto.INT64, [2], [1, 11])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.convert
def test_an_encoder_the_runtime_cannot_feed_is_refused_at_conversion(
    run: Run, keras_sources: dict[str, Path], tmp_path: Path
) -> None:
    """It used to convert, and only `capgen caption` then failed; a fixed input size now reaches the manifest."""
    from onnx import TensorProto

    from capgen.convert.model_folder import describe_encoder

    renamed = _encoder_with_input(
        tmp_path / "renamed.onnx", "x", TensorProto.UINT8, ["N", 32, 32, 3]
    )
    floats = _encoder_with_input(
        tmp_path / "floats.onnx", "image", TensorProto.FLOAT, ["N", 32, 32, 3]
    )
    for encoder, fragment in (
        (renamed, "has inputs ['x']"),
        (floats, "input 'image' is FLOAT of rank 4"),
    ):
        done = run(
            "convert",
            "model",
            keras_sources["model"],
            keras_sources["tokenizer"],
            "-o",
            tmp_path / "out",
            "--encoder",
            encoder,
        )
        assert_one_line_error(done, 3, fragment)
        assert not (tmp_path / "out").exists()
    sized = _encoder_with_input(
        tmp_path / "sized.onnx", "image", TensorProto.UINT8, ["N", 224, 160, 3]
    )
    preprocessing = describe_encoder(sized).preprocessing
    assert (preprocessing["height"], preprocessing["width"]) == (224, 160)
    assert describe_encoder(keras_sources["encoder"]).preprocessing["height"] == 299


@pytest.mark.convert
def test_force_never_deletes_files_capgen_did_not_write(
    run: Run, keras_sources: dict[str, Path], tmp_path: Path
) -> None:
    """Keeping model_9.h5 in the folder it was converted to, then reconverting with --force, deleted it."""
    out = tmp_path / "mymodel"
    convert = [
        "convert",
        "model",
        keras_sources["model"],
        keras_sources["tokenizer"],
        "-o",
        out,
        "--encoder",
        keras_sources["encoder"],
    ]
    assert run(*convert).returncode == 0
    kept = out / "model_9.h5"
    shutil.copyfile(keras_sources["model"], kept)
    done = run("convert", "model", kept, *convert[3:], "--force")
    assert_one_line_error(done, 2, "also holds model_9.h5, which capgen did not write")
    assert kept.read_bytes() == keras_sources["model"].read_bytes()
    kept.unlink()
    again = run(*convert, "--force")
    assert again.returncode == 0, again.stderr


@pytest.mark.convert
def test_an_output_folder_that_cannot_be_written(
    run: Run, keras_sources: dict[str, Path], tmp_path: Path
) -> None:
    """Both used to be OSError tracebacks: a target under a file, and a disk that fills up mid-conversion."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    sources = [
        keras_sources["model"],
        keras_sources["tokenizer"],
        "--encoder",
        keras_sources["encoder"],
    ]
    done = run("convert", "model", *sources, "-o", blocker / "model")
    assert_one_line_error(done, 2, f"cannot create the model folder {blocker / 'model'}")
    full = run(
        "convert", "model", *sources, "-o", tmp_path / "model", preexec_fn=limit_file_size(2048)
    )
    assert_one_line_error(
        full, 2, f"cannot write the model folder {tmp_path / 'model'} (File too large)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a-file"
    ]  # no folder, no hidden staging left

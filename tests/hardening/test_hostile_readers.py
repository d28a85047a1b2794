"""Issue 10, the readers' findings: hostile Keras files, tokenizer pickles, step graphs, API inputs.

Conversion findings drive `capgen convert model` through the real console
script (one `capgen: error:` line, the family's exit code, never a traceback
or a hang); API findings drive `Captioner`, whose per-image failures must be
that image's CapgenError so `caption_batch(errors="return")` keeps the rest.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import test_odd_images_and_broken_models
from cli_helpers import Run, assert_one_line_error, write_photos
from tiny_model import TinyModel

from capgen import Captioner
from capgen.runtime.errors import CapgenError, ImageError, ImageTooLargeError, InputError

# ---- F15 and the max_pixels note: every per-image failure is that image's CapgenError ----


class _FailingRead(io.RawIOBase):
    """A user's file object whose read() fails with something that is not an OSError."""

    def read(self, size: int = -1) -> bytes:
        raise RuntimeError("the network share went away")


class _BadPath:
    """An os.PathLike whose __fspath__ fails."""

    def __fspath__(self) -> str:
        raise RuntimeError("no path today")


def test_bad_items_are_their_own_errors_and_the_batch_keeps_the_rest(
    hardening_model: TinyModel, tmp_path: Path
) -> None:
    good = write_photos(tmp_path, 2, seed=15)
    closed = open(good[0], "rb")  # noqa: SIM115 - closed on purpose
    closed.close()
    captioner = Captioner(hardening_model.folder)
    images = [
        good[0],
        closed,
        _FailingRead(),
        str(tmp_path / "photo\x00.png"),
        _BadPath(),
        good[1].read_bytes(),
    ]
    results = captioner.caption_batch(images, beam_size=1, batch_size=2, errors="return")
    assert len(results) == len(images)
    expected = captioner.caption(good[0], beam_size=1).text
    assert not isinstance(results[0], CapgenError) and results[0].text == expected
    assert not isinstance(results[-1], CapgenError)
    closed_error, read_error, nul_error, path_error = results[1:5]
    assert isinstance(closed_error, ImageError), closed_error
    assert "closed file" in str(closed_error)
    assert isinstance(read_error, ImageError), read_error
    assert "RuntimeError: the network share went away" in str(read_error)
    assert isinstance(read_error.__cause__, RuntimeError)  # chained, for the caller's debugging
    assert isinstance(nul_error, InputError) and "NUL" in str(nul_error), nul_error
    assert isinstance(path_error, InputError) and "no path today" in str(path_error), path_error
    with pytest.raises(InputError, match="NUL"):
        captioner.caption("photo\x00.png")


def test_noted_max_pixels_applies_to_arrays_and_pil_images(
    hardening_model: TinyModel, tmp_path: Path
) -> None:
    """A broadcast 20000x20000x3 view costs no memory until capgen copies it: refuse it first."""
    from PIL import Image

    captioner = Captioner(hardening_model.folder, max_pixels=10_000)
    huge = np.broadcast_to(np.uint8(7), (20_000, 20_000, 3))
    with pytest.raises(ImageTooLargeError, match="20000x20000"):
        captioner.caption(huge)
    with pytest.raises(ImageTooLargeError, match="200x100"):
        captioner.caption(np.zeros((100, 200, 3), dtype=np.float32))
    with pytest.raises(ImageTooLargeError, match="200x100"):
        captioner.caption(Image.new("RGB", (200, 100)))
    (path,) = write_photos(tmp_path, 1, seed=3, size=(200, 100))
    with Image.open(path) as lazy, pytest.raises(ImageTooLargeError):
        captioner.caption(lazy)  # refused from its header, before load() decodes it
    assert captioner.caption(np.zeros((50, 60, 3), dtype=np.uint8), beam_size=1).text is not None


# ---- conversion sources: a small tutorial decoder saved by Keras 3, its tokenizer, an encoder ----

WORDS = ["end", "start", "a", "dog", "runs", "on", "the", "grass"]  # keras_sources' tokenizer


# Issue 7's small Keras 3 tutorial decoder (.h5 and .keras), its tokenizer of WORDS, an encoder.
keras_sources = test_odd_images_and_broken_models.keras_sources


@pytest.fixture(scope="module")
def sources(keras_sources: dict[str, Path]) -> dict[str, Path]:
    return keras_sources


def _convert(
    run: Run,
    sources: dict[str, Path],
    out: Path,
    model: Path | None = None,
    tokenizer: Path | None = None,
    architecture: Path | None = None,
    **options: object,
) -> subprocess.CompletedProcess[bytes]:
    """`capgen convert model MODEL TOKENIZER -o OUT --encoder E` (`options` go to subprocess.run)."""
    return run(
        "convert",
        "model",
        model or sources["model"],
        tokenizer or sources["tokenizer"],
        *(["--architecture", architecture] if architecture else []),
        "-o",
        out,
        "--encoder",
        sources["encoder"],
        **options,
    )


# ---- F11 and F20: every shape a pickled value can take is a TokenizerError (exit 4) ----

_SENTINEL_ID = 987_654_321
_SENTINEL_TEXT = "capgen-sentinel-filters"


def _deep_lists(depth: int) -> bytes:
    """Opcodes building [[[...]]] `depth` deep (pickle.dumps itself would hit the recursion limit)."""
    return b"(" * depth + b"l" * depth


def _deep_tuple(depth: int) -> bytes:
    return b")" + b"\x85" * depth  # EMPTY_TUPLE, then TUPLE1 again and again


def _tokenizer_pickle(**changes: object) -> bytes:
    from pickle_builders import pickle_fake_tokenizer, tokenizer_state

    state = tokenizer_state(WORDS)
    state.update(changes)
    return pickle_fake_tokenizer(state, protocol=3)  # protocol 3: bytes, no frames to keep in step


def _with_opcodes_for(pickled: bytes, placeholder: bytes, opcodes: bytes) -> bytes:
    assert pickled.count(placeholder) == 1
    return pickled.replace(placeholder, opcodes)


def _hostile_tokenizers() -> dict[str, tuple[bytes, str]]:
    sentinel_id = b"J" + struct.pack("<i", _SENTINEL_ID)
    sentinel_text = b"X" + struct.pack("<I", len(_SENTINEL_TEXT)) + _SENTINEL_TEXT.encode()
    deep_id = _tokenizer_pickle(
        word_index={**{w: i for i, w in enumerate(WORDS, 1)}, "dog": _SENTINEL_ID}
    )
    deep_filters = _tokenizer_pickle(filters=_SENTINEL_TEXT)
    word_index = {w: i for i, w in enumerate(WORDS, 1)}
    tuple_key = _tokenizer_pickle(word_index={**word_index, "__key__": _SENTINEL_ID})
    tuple_key = tuple_key.replace(b"X\x07\x00\x00\x00__key__", _deep_tuple(1_000_000), 1)
    return {
        "nested id": (
            _with_opcodes_for(deep_id, sentinel_id, _deep_lists(200_000)),
            "word_index gives 'dog' a list of 1 items, not an integer id",
        ),
        "nested filters": (
            _with_opcodes_for(deep_filters, sentinel_text, _deep_lists(200_000)),
            "filters is a list of 1 items, not text",
        ),
        "huge id": (
            _tokenizer_pickle(word_index={**word_index, "dog": 2**40000}),
            "the id a 40,001-bit integer; ids run from 1 to 2,147,483,647",
        ),
        "huge negative id": (
            _tokenizer_pickle(word_index={**word_index, "dog": -(2**40000)}),
            "the id a -40,001-bit integer",
        ),
        "huge num_words": (
            _tokenizer_pickle(num_words=2**40000),
            "num_words is a 40,001-bit integer",
        ),
        "nested num_words": (
            _with_opcodes_for(
                _tokenizer_pickle(num_words=_SENTINEL_ID), sentinel_id, _deep_lists(200_000)
            ),
            "num_words is a list of 1 items",
        ),
        "bytes word": (
            _tokenizer_pickle(word_index={**word_index, b"dog": 9}),
            "word_index has b'dog' where a word should be",
        ),
        "bytes filters": (_tokenizer_pickle(filters=b"!?"), "filters is b'!?', not text"),
        "bytes oov": (_tokenizer_pickle(oov_token=b"<unk>"), "oov_token is b'<unk>', not text"),
        "list lower": (_tokenizer_pickle(lower=[True]), "lower is a list of 1 items"),
        "tuple key a million deep": (
            tuple_key,
            "nests tuples more than 100 deep",
        ),
    }


@pytest.mark.convert
def test_every_hostile_tokenizer_value_is_a_tokenizer_error(
    run: Run, sources: dict[str, Path], tmp_path: Path
) -> None:
    """RecursionError, ValueError (4,300-digit limit), bytes for text, a segfault: all one line, exit 4."""
    for name, (content, fragment) in _hostile_tokenizers().items():
        tokenizer = tmp_path / f"{name.replace(' ', '_')}.p"
        tokenizer.write_bytes(content)
        done = _convert(run, sources, tmp_path / "out", tokenizer=tokenizer)
        assert_one_line_error(done, 4, fragment)
        assert not (tmp_path / "out").exists(), name


def _sparse_file(path: Path, content: bytes, size: int) -> Path:
    """`content` padded with zeros to `size` bytes without using the disk (a hole)."""
    path.write_bytes(content)
    with path.open("r+b") as handle:
        handle.truncate(size)
    return path


@pytest.mark.convert
def test_an_oversized_tokenizer_is_refused_before_reading(
    run: Run, sources: dict[str, Path], tmp_path: Path
) -> None:
    # trailing bytes after STOP, which pickle never reads
    tokenizer = _sparse_file(tmp_path / "huge.p", sources["tokenizer"].read_bytes(), 65 << 20)
    done = _convert(run, sources, tmp_path / "out", tokenizer=tokenizer)
    assert_one_line_error(done, 4, "more than the 67,108,864 any real tokenizer needs")


@pytest.mark.parametrize(
    ("seed_name", "examples"), [("fake", 200), ("keras_preprocessing.text-p3.p", 30)]
)
def test_fuzzed_tokenizers_raise_only_tokenizer_errors(
    shared_data: Path, tmp_path: Path, seed_name: str, examples: int
) -> None:
    """Byte mutations of a real Keras tokenizer pickle (and a small one like it) give a state or a TokenizerError."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from capgen.convert.tokenizer import build_vocabulary, read_tokenizer
    from capgen.runtime.errors import TokenizerError

    seed = (
        _tokenizer_pickle()
        if seed_name == "fake"
        else (shared_data / "tokenizers" / seed_name).read_bytes()
    )
    target = tmp_path / "mutated.p"

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.tuples(st.integers(0, len(seed) - 1), st.integers(0, 255)), max_size=6))
    def check(edits: list[tuple[int, int]]) -> None:
        data = bytearray(seed)
        for position, value in edits:
            data[position] = value
        target.write_bytes(bytes(data))
        try:
            state = read_tokenizer(target)
            largest = max(state.word_index.values())
            if largest < 100_000:  # the model's output size bounds this in a real conversion
                build_vocabulary(state, largest + 1)
        except TokenizerError:
            pass

    check()


@pytest.mark.convert
@pytest.mark.parametrize(
    ("word", "shown"),
    [
        ("dog\nbarks", r"'dog\nbarks' (id 4)"),
        ("dog\tbarks", r"'dog\tbarks' (id 4)"),
        ("\x1b[31mdog", r"'\x1b[31mdog' (id 4) holds the control or separator character U+001B"),
        ("dog\u2028", r"U+2028"),
        ("dog\u2029", r"U+2029"),
        ("dog\x85", r"U+0085"),
    ],
)
def test_control_characters_in_vocabulary_words_are_refused_at_conversion(
    run: Run, sources: dict[str, Path], tmp_path: Path, word: str, shown: str
) -> None:
    from pickle_builders import write_fake_tokenizer

    words = [word if w == "dog" else w for w in WORDS]
    tokenizer = write_fake_tokenizer(tmp_path / "tokenizer.p", words)
    done = _convert(run, sources, tmp_path / "out", tokenizer=tokenizer)
    assert_one_line_error(done, 4, shown)
    assert not (tmp_path / "out").exists()


# ---- F7: HDF5 links and storage that bring bytes from outside the model file are refused ----

_EMBEDDINGS = "model_weights/embedding/embedding/embeddings"


def _edited_h5(source: Path, target: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    import h5py

    shutil.copyfile(source, target)
    with h5py.File(target, "a") as handle:
        edit(handle)
    return target


def _outside_bytes_models(source: Path, folder: Path) -> dict[str, tuple[Path, str]]:
    import h5py

    with h5py.File(source, "r") as handle:
        embeddings = np.asarray(handle[_EMBEDDINGS])
    other = folder / "other.h5"
    with h5py.File(other, "w") as handle:
        handle["weights"] = embeddings * 2  # right shape: used to convert, silently
        handle.create_group("group")
    fifo = folder / "pipe.h5"
    os.mkfifo(fifo)
    raw = folder / "raw.bin"
    raw.write_bytes(embeddings.astype("<f4").tobytes())

    def relink(link):  # type: ignore[no-untyped-def]
        def edit(handle) -> None:  # type: ignore[no-untyped-def]
            del handle[_EMBEDDINGS]
            handle[_EMBEDDINGS] = link

        return edit

    def external_storage(handle) -> None:  # type: ignore[no-untyped-def]
        del handle[_EMBEDDINGS]
        handle.create_dataset(
            _EMBEDDINGS,
            shape=embeddings.shape,
            dtype="<f4",
            external=[(str(raw), 0, raw.stat().st_size)],
        )

    def virtual(handle) -> None:  # type: ignore[no-untyped-def]
        del handle[_EMBEDDINGS]
        layout = h5py.VirtualLayout(shape=embeddings.shape, dtype="f8")
        layout[:] = h5py.VirtualSource(str(other), "weights", shape=embeddings.shape)
        handle.create_virtual_dataset(_EMBEDDINGS, layout)

    def linked_group(handle) -> None:  # type: ignore[no-untyped-def]
        del handle["model_weights/embedding"]
        handle["model_weights/embedding"] = h5py.ExternalLink(str(other), "/group")

    def make(name: str, edit) -> Path:  # type: ignore[no-untyped-def]
        return _edited_h5(source, folder / f"{name}.h5", edit)

    return {
        "fifo": (
            make("fifo", relink(h5py.ExternalLink(str(fifo), "/x"))),
            f"is an external link to {str(fifo)!r}:'/x'",
        ),
        "other h5": (
            make("other", relink(h5py.ExternalLink(str(other), "/weights"))),
            f"HDF5 object /{_EMBEDDINGS} is an external link to {str(other)!r}:'/weights'",
        ),
        "soft": (
            make("soft", relink(h5py.SoftLink("/elsewhere"))),
            "is a SoftLink to '/elsewhere'",
        ),
        "group": (make("group", linked_group), "/model_weights/embedding is an external link"),
        "external storage": (
            make("storage", external_storage),
            "keeps its values in external file",
        ),
        "virtual": (make("virtual", virtual), "is a virtual dataset that maps other files"),
    }


@pytest.mark.convert
def test_links_and_storage_outside_the_keras_file_are_refused(
    run: Run, sources: dict[str, Path], tmp_path: Path
) -> None:
    """A link to a FIFO hung convert forever; one to another .h5 supplied unrecorded weights."""
    for name, (model, fragment) in _outside_bytes_models(sources["model"], tmp_path).items():
        done = _convert(run, sources, tmp_path / "out", model=model, timeout=60)
        assert_one_line_error(done, 3, fragment)
        assert not (tmp_path / "out").exists(), name


def _keras_zip_with(source: Path, target: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    """A copy of a .keras file whose model.weights.h5 went through `edit(h5py.File)`."""
    import zipfile

    import h5py

    with zipfile.ZipFile(source) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    weights = io.BytesIO(members["model.weights.h5"])
    with h5py.File(weights, "a") as handle:
        edit(handle)
    members["model.weights.h5"] = weights.getvalue()
    with zipfile.ZipFile(target, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return target


@pytest.mark.convert
def test_links_inside_a_keras_zip_are_refused_too(
    run: Run, sources: dict[str, Path], tmp_path: Path
) -> None:
    import h5py

    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as handle:
        handle["weights"] = np.zeros((9, 8), dtype=np.float32)

    def relink(handle) -> None:  # type: ignore[no-untyped-def]
        del handle["layers/embedding/vars/0"]
        handle["layers/embedding/vars/0"] = h5py.ExternalLink(str(other), "/weights")

    model = _keras_zip_with(sources["keras_zip"], tmp_path / "linked.keras", relink)
    done = _convert(run, sources, tmp_path / "out", model=model)
    assert_one_line_error(done, 3, "/layers/embedding/vars/0 is an external link")


# ---- F8: only the weights the architecture uses are read, within a total budget ----

_GIB_OF_ZEROS = {
    "shape": (16_384, 16_384),
    "dtype": "f4",
    "chunks": (1024, 1024),
    "compression": "gzip",
}


def _limit_address_space(gib: float):  # type: ignore[no-untyped-def]
    """A preexec_fn: the child may map at most `gib` GiB (conversion itself needs under 1)."""
    import resource

    limit = int(gib * 2**30)
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _with_unused_weights(source: Path, target: Path, hard_links: bool) -> Path:
    """Six 1 GiB zero weights (each under the per-weight limit) listed on a used layer."""

    def edit(handle) -> None:  # type: ignore[no-untyped-def]
        group = handle["model_weights/hidden_dense"]
        names = [f"hidden_dense/unused_{i}" for i in range(6)]
        first = group.create_dataset(names[0], **_GIB_OF_ZEROS)
        for name in names[1:]:
            if hard_links:
                group[name] = first  # one dataset, six names
            else:
                group.create_dataset(name, **_GIB_OF_ZEROS)
        group.attrs["weight_names"] = [*group.attrs["weight_names"], *names]

    return _edited_h5(source, target, edit)


@pytest.mark.convert
@pytest.mark.parametrize("hard_links", [False, True], ids=["six weights", "one weight six names"])
def test_weights_the_architecture_does_not_use_are_never_read(
    run: Run, sources: dict[str, Path], tmp_path: Path, hard_links: bool
) -> None:
    model = _with_unused_weights(sources["model"], tmp_path / "bloated.h5", hard_links)
    assert model.stat().st_size < 200_000
    done = _convert(
        run, sources, tmp_path / "out", model=model, preexec_fn=_limit_address_space(2.5)
    )
    assert done.returncode == 0, done.stderr.decode()  # used to be a MemoryError traceback
    assert b"Traceback" not in done.stderr
    assert (tmp_path / "out" / "manifest.json").is_file()


@pytest.mark.convert
def test_a_config_needing_more_than_the_total_budget_is_refused_before_reading(
    run: Run, sources: dict[str, Path], tmp_path: Path
) -> None:
    """Three ~1 GiB weights, each under the per-weight limit, whose config really asks for them."""
    import json

    feature_size, input_dim, vocab = 22_000_000, 33_000_000, 26_000_000

    def edit(handle) -> None:  # type: ignore[no-untyped-def]
        config = json.loads(handle.attrs["model_config"])
        for layer in config["config"]["layers"]:
            settings = layer["config"]
            if layer["name"] == "photo_features":
                settings["batch_shape"] = [None, feature_size]
            elif layer["name"] == "embedding":
                settings["input_dim"] = input_dim
            elif layer["name"] == "output_dense":
                settings["units"] = vocab
        handle.attrs["model_config"] = json.dumps(config)
        for key, shape in (
            ("photo_dense/photo_dense/kernel", (feature_size, 12)),
            ("embedding/embedding/embeddings", (input_dim, 8)),
            ("output_dense/output_dense/kernel", (10, vocab)),
            ("output_dense/output_dense/bias", (vocab,)),
        ):  # declared, never written: a few kB on disk
            del handle[f"model_weights/{key}"]
            handle.create_dataset(
                f"model_weights/{key}", shape=shape, dtype="f4", chunks=True, compression="gzip"
            )

    model = _edited_h5(sources["model"], tmp_path / "huge_config.h5", edit)
    done = _convert(
        run, sources, tmp_path / "out", model=model, preexec_fn=_limit_address_space(2.5)
    )
    assert_one_line_error(
        done, 3, "the config's sizes need 3.0 GiB of weights, more than the 2 GiB"
    )


# ---- F12: configs nested deeper than any Keras writes are one line, not 3,000 of traceback ----


def _nest(value: object, depth: int) -> object:
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.convert
@pytest.mark.parametrize("dialect", ["keras3", "keras2"])
def test_deeply_nested_inbound_nodes_are_one_line(
    run: Run, sources: dict[str, Path], tmp_path: Path, dialect: str
) -> None:
    import json

    import h5py

    def edit(handle) -> None:  # type: ignore[no-untyped-def]
        config = json.loads(handle.attrs["model_config"])
        layer = next(x for x in config["config"]["layers"] if x["name"] == "hidden_dense")
        if dialect == "keras3":  # {"args": [...]} walked by a recursive search for tensors
            layer["inbound_nodes"] = [{"args": _nest({"x": 1}, 900), "kwargs": {}}]
        else:  # [[name, node, tensor, kwargs]] with the name buried 900 lists deep
            layer["inbound_nodes"] = [[[_nest("add", 900), 0, 0, {}]]]
        handle.attrs["model_config"] = json.dumps(config)

    model = _edited_h5(sources["model"], tmp_path / "deep.h5", edit)
    done = _convert(run, sources, tmp_path / "out", model=model)
    assert_one_line_error(done, 3, "nests more than 100 levels deep")
    architecture = tmp_path / "deep.json"
    with h5py.File(model, "r") as handle:
        architecture.write_text(handle.attrs["model_config"])
    done = _convert(run, sources, tmp_path / "out", architecture=architecture)
    assert_one_line_error(done, 3, "nests more than 100 levels deep")


def test_read_architecture_never_lets_a_recursion_error_out() -> None:
    """The same class for a caller handing the config over directly (the API route)."""
    from capgen.convert.architecture import read_architecture
    from capgen.runtime.errors import UnsupportedModelError

    layers = [
        {
            "class_name": "Dense",
            "name": "d",
            "config": {},
            "inbound_nodes": [{"args": _nest({}, 5000)}],
        }
    ]
    config = {"class_name": "Functional", "config": {"layers": layers}}
    with pytest.raises(UnsupportedModelError, match="RecursionError"):
        read_architecture(config)


# ---- F14: a step graph that passes the load-time check and misbehaves later is one ModelError line ----


def _step_graph_variant(model: TinyModel, target: Path, name: str) -> Path:
    """A copy of the tiny model whose step graph's log_probs go through extra nodes first.

    float64: the scores are cast to double (beam search's top-k graph refused them);
    wider: the word axis grows by the fed word's id (0 at the load-time check, 1+ later);
    fails: a Reshape that only fails once a real word is fed (onnxruntime logged it itself).
    """
    import hashlib
    import json

    import onnx
    from onnx import TensorProto, helper

    shutil.copytree(model.folder, target)
    step = onnx.load(target / "decoder_step.onnx")
    for node in step.graph.node:
        node.output[:] = ["raw_log_probs" if out == "log_probs" else out for out in node.output]

    def const(label: str, values: list[int]) -> onnx.NodeProto:
        return helper.make_node(
            "Constant",
            [],
            [label],
            value=helper.make_tensor(label, TensorProto.INT64, [len(values)], values),
        )

    largest_word = helper.make_node("ReduceMax", ["word"], ["largest_word"], keepdims=1)
    nodes = {
        "float64": [
            helper.make_node("Cast", ["raw_log_probs"], ["log_probs"], to=TensorProto.DOUBLE)
        ],
        "wider": [
            largest_word,
            const("no_pad", [0, 0, 0]),
            helper.make_node("Concat", ["no_pad", "largest_word"], ["pads"], axis=0),
            helper.make_node("Pad", ["raw_log_probs", "pads"], ["log_probs"]),
        ],
        "fails": [
            largest_word,
            const("vocab", [len(model.words)]),
            const("any_rows", [-1]),
            helper.make_node("Add", ["vocab", "largest_word"], ["width"]),
            helper.make_node("Concat", ["any_rows", "width"], ["new_shape"], axis=0),
            helper.make_node("Reshape", ["raw_log_probs", "new_shape"], ["log_probs"]),
        ],
    }[name]
    step.graph.node.extend(nodes)
    (output,) = [o for o in step.graph.output if o.name == "log_probs"]
    output.type.tensor_type.shape.dim[1].dim_param = "V"
    if name == "float64":
        output.type.tensor_type.elem_type = TensorProto.DOUBLE
    onnx.save(step, target / "decoder_step.onnx")
    manifest = json.loads((target / "manifest.json").read_text())
    data = (target / "decoder_step.onnx").read_bytes()
    manifest["files"]["decoder_step.onnx"] = {
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
    }
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


@pytest.mark.parametrize(
    ("variant", "fragment"),
    [
        ("float64", "a step gave log_probs float64[1, 13]"),
        ("wider", "a step gave log_probs float32[1, 14]"),
        ("fails", "failed to run (Fail: [ONNXRuntimeError]"),
    ],
)
@pytest.mark.parametrize("beam", ["1", "3"])
def test_a_step_graph_misbehaving_at_run_time_is_one_model_error_line(
    run: Run, hardening_model: TinyModel, tmp_path: Path, variant: str, fragment: str, beam: str
) -> None:
    folder = _step_graph_variant(hardening_model, tmp_path / "model", variant)
    (photo,) = write_photos(tmp_path / "photos", 1, seed=14)
    done = run("caption", "-m", folder, "--beam-size", beam, photo, timeout=60)
    stderr = assert_one_line_error(done, 3, fragment)  # nothing but capgen's own line
    assert "[E:onnxruntime" not in stderr and "\x1b[" not in stderr  # its own log line
    assert done.stdout == b""


def test_top_k_failures_are_model_errors() -> None:
    """Scores top_k's graph cannot take (here float64, from a custom step model) are a ModelError."""
    from capgen.runtime.errors import ModelError
    from capgen.runtime.top_k import top_k

    with pytest.raises(ModelError, match=r"scores \(float64\[2, 10\]\) cannot be ranked"):
        top_k(np.zeros((2, 10), dtype=np.float64), 3)


@pytest.mark.convert
def test_an_oversized_architecture_json_is_refused_before_reading(
    run: Run, sources: dict[str, Path], tmp_path: Path
) -> None:
    architecture = _sparse_file(tmp_path / "model.json", b"{}", 65 << 20)
    done = _convert(run, sources, tmp_path / "out", architecture=architecture)
    assert_one_line_error(done, 3, "more than the 67,108,864 any real architecture JSON needs")


@pytest.mark.convert
def test_a_dataset_where_a_group_belongs_is_never_iterated(
    run: Run, sources: dict[str, Path], tmp_path: Path
) -> None:
    """`vars` as a declared billion-row dataset: iterating it for variable names read it row by row."""

    def replace_vars(handle) -> None:  # type: ignore[no-untyped-def]
        del handle["layers/embedding/vars"]
        handle.create_dataset(
            "layers/embedding/vars", shape=(10**9,), dtype="f4", chunks=True, compression="gzip"
        )

    model = _keras_zip_with(sources["keras_zip"], tmp_path / "rows.keras", replace_vars)
    done = _convert(run, sources, tmp_path / "out", model=model, timeout=60)
    assert_one_line_error(done, 3, "layer 'embedding' has no embeddings weight")

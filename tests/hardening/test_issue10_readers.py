"""Issue 10, the readers' findings: hostile Keras files, tokenizer pickles, step graphs, API inputs.

Conversion findings drive `capgen convert model` through the real console
script (one `capgen: error:` line, the family's exit code, never a traceback
or a hang); API findings drive `Captioner`, whose per-image failures must be
that image's CapgenError so `caption_batch(errors="return")` keeps the rest.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
import test_issue7_inputs_cli
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


def test_f15_bad_items_are_their_own_errors_and_the_batch_keeps_the_rest(
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
keras_sources = test_issue7_inputs_cli.keras_sources


@pytest.fixture(scope="module")
def sources(keras_sources: dict[str, Path]) -> dict[str, Path]:
    return keras_sources


def _convert(
    run: Run, sources: dict[str, Path], out: Path, model: Path | None = None, **given: Path
) -> object:
    tokenizer = given.get("tokenizer", sources["tokenizer"])
    return run(
        "convert",
        "model",
        model or sources["model"],
        tokenizer,
        "-o",
        out,
        "--encoder",
        sources["encoder"],
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
def test_f11_every_hostile_tokenizer_value_is_a_tokenizer_error(
    run: Run, sources: dict[str, Path], tmp_path: Path
) -> None:
    """RecursionError, ValueError (4,300-digit limit), bytes for text, a segfault: all one line, exit 4."""
    for name, (content, fragment) in _hostile_tokenizers().items():
        tokenizer = tmp_path / f"{name.replace(' ', '_')}.p"
        tokenizer.write_bytes(content)
        done = _convert(run, sources, tmp_path / "out", tokenizer=tokenizer)
        assert_one_line_error(done, 4, fragment)  # type: ignore[arg-type]
        assert not (tmp_path / "out").exists(), name


@pytest.mark.convert
def test_f11_an_oversized_tokenizer_is_refused_before_reading(
    run: Run, sources: dict[str, Path], tmp_path: Path
) -> None:
    tokenizer = tmp_path / "huge.p"
    tokenizer.write_bytes(sources["tokenizer"].read_bytes())
    with tokenizer.open("r+b") as handle:
        handle.truncate(65 << 20)  # sparse: trailing bytes after STOP, which pickle never reads
    done = _convert(run, sources, tmp_path / "out", tokenizer=tokenizer)
    assert_one_line_error(done, 4, "more than the 67,108,864 any real tokenizer needs")


@pytest.mark.parametrize(
    ("seed_name", "examples"), [("fake", 200), ("keras_preprocessing.text-p3.p", 30)]
)
def test_f11_fuzzed_tokenizers_raise_only_tokenizer_errors(
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
def test_f20_control_characters_in_vocabulary_words_are_refused_at_conversion(
    run: Run, sources: dict[str, Path], tmp_path: Path, word: str, shown: str
) -> None:
    from pickle_builders import write_fake_tokenizer

    words = [word if w == "dog" else w for w in WORDS]
    tokenizer = write_fake_tokenizer(tmp_path / "tokenizer.p", words)
    done = _convert(run, sources, tmp_path / "out", tokenizer=tokenizer)
    assert_one_line_error(done, 4, shown)  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()

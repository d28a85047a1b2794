"""Reading tokenizer.p safely: every real Keras flavour loads; nothing hostile ever runs."""

from __future__ import annotations

import builtins
import os
import pickle
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pickle_builders import pickle_fake_tokenizer, tokenizer_state, write_fake_tokenizer

from capgen.convert.delimiters import DelimiterOptions, choose_delimiters
from capgen.convert.tokenizer import build_vocabulary, read_tokenizer
from capgen.runtime.errors import (
    GitLfsPointerError,
    InputError,
    TokenizerError,
    UnsafePickleError,
)

REAL_TOKENIZERS = [
    "tokenizers/keras.preprocessing.text-p4.p",
    "tokenizers/keras.src.preprocessing.text.p",
    "tokenizers/keras_preprocessing.text-p3.p",
    "tokenizers/keras_preprocessing.text-p4.p",
    "model_configs/decoder_keras2.8.tokenizer.p",
]


@pytest.mark.parametrize("relative", REAL_TOKENIZERS)
def test_real_tokenizers_from_every_keras_version_load(shared_data: Path, relative: str) -> None:
    state = read_tokenizer(shared_data / relative)

    assert len(state.word_index) == 7576
    assert state.word_index["end"] == 1 and state.word_index["start"] == 2
    assert state.lower is True and state.num_words is None and state.oov_token is None
    vocabulary = build_vocabulary(state, 7577)
    assert vocabulary[0] is None and vocabulary[1] == "end" and vocabulary[2] == "start"
    assert all(word is not None for word in vocabulary[1:])
    words = choose_delimiters(state, vocabulary, DelimiterOptions())
    assert (words.start_token, words.start_id, words.end_token, words.end_id) == (
        "start",
        2,
        "end",
        1,
    )
    # Every one of the 30,000 training captions is wrapped in the pair.
    assert state.document_count == words.documents == 30000
    assert words.start_documents == words.end_documents == 30000
    assert words.chosen_by == "captions"


@pytest.mark.parametrize(
    "module",
    [
        "keras_preprocessing.text",
        "keras.preprocessing.text",
        "keras.src.preprocessing.text",
        "keras.src.legacy.preprocessing.text",
        "tf_keras.src.preprocessing.text",
    ],
)
@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_every_module_path_and_protocol(tmp_path: Path, module: str, protocol: int) -> None:
    path = write_fake_tokenizer(
        tmp_path / "tokenizer.p", ["end", "start", "dog"], module=module, protocol=protocol
    )
    assert read_tokenizer(path).word_index == {"end": 1, "start": 2, "dog": 3}


class _RunsOnLoad:
    """Pickles as `call(*args)`: what a hostile tokenizer.p does on pickle.load."""

    def __init__(self, call: Any, args: tuple[Any, ...]) -> None:
        self.call, self.args = call, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.call, self.args


def _hostile_payloads(marker: Path) -> dict[str, Any]:
    return {
        "os.system": _RunsOnLoad(os.system, (f"touch {marker}",)),
        "builtins.eval": _RunsOnLoad(builtins.eval, (f"open({str(marker)!r}, 'w').close()",)),
        "builtins.exec": _RunsOnLoad(builtins.exec, (f"open({str(marker)!r}, 'w').close()",)),
        "subprocess.Popen": _RunsOnLoad(subprocess.Popen, (["touch", str(marker)],)),
    }


@pytest.mark.parametrize(
    "attack", ["os.system", "builtins.eval", "builtins.exec", "subprocess.Popen"]
)
def test_hostile_pickles_are_refused_and_nothing_runs(tmp_path: Path, attack: str) -> None:
    marker = tmp_path / "pwned"
    payload = _hostile_payloads(marker)[attack]
    path = tmp_path / "tokenizer.p"
    path.write_bytes(pickle.dumps(payload))

    with pytest.raises(UnsafePickleError) as refused:
        read_tokenizer(path)

    assert attack.split(".")[-1] in str(refused.value)
    assert "nothing was executed" in str(refused.value)
    assert not marker.exists()


def test_payload_hidden_inside_a_real_looking_tokenizer_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    state = tokenizer_state(["end", "start"])
    state["word_counts"] = _RunsOnLoad(os.system, (f"touch {marker}",))
    path = tmp_path / "tokenizer.p"
    path.write_bytes(pickle_fake_tokenizer(state))

    with pytest.raises(UnsafePickleError, match="system"):
        read_tokenizer(path)
    assert not marker.exists()


class UnknownThing:
    """A harmless class that is still not a Keras Tokenizer."""


def test_unknown_class_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.p"
    path.write_bytes(pickle.dumps(UnknownThing()))
    with pytest.raises(UnsafePickleError, match="UnknownThing"):
        read_tokenizer(path)


def test_tokenizer_class_at_an_unknown_module_is_refused(tmp_path: Path) -> None:
    path = write_fake_tokenizer(tmp_path / "tokenizer.p", ["end", "start"], module="evil.text")
    with pytest.raises(UnsafePickleError, match=r"evil\.text\.Tokenizer"):
        read_tokenizer(path)


def test_git_lfs_pointer_tokenizer(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.p"
    path.write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:5afa50291e4dbfc3aaaa\nsize 351811\n"
    )
    with pytest.raises(GitLfsPointerError, match=r"git lfs install && git lfs pull"):
        read_tokenizer(path)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "empty"),
        (b'{"word_index": {"start": 1}}', "JSON but not a Keras tokenizer"),
        (
            b'{"class_name": "Tokenizer", "config": {"word_index": "{broken"}}',
            "not a readable tokenizer JSON",
        ),
        (b"\x80\x04\x95\x10\x00\x00", "not a readable"),
    ],
)
def test_broken_tokenizer_files(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "tokenizer.p"
    path.write_bytes(content)
    with pytest.raises(TokenizerError, match=expected):
        read_tokenizer(path)


def test_tokenizer_saved_as_json_by_keras(tmp_path: Path, tf_keras_stack: None) -> None:
    from tf_keras.preprocessing.text import Tokenizer

    tokenizer = Tokenizer()
    tokenizer.fit_on_texts(["start a dog runs end", "start a cat sleeps end"])
    path = tmp_path / "tokenizer.json"
    path.write_text(tokenizer.to_json())

    state = read_tokenizer(path)
    assert state.word_index == tokenizer.word_index
    assert build_vocabulary(state, len(tokenizer.word_index) + 1)[1:] == list(tokenizer.word_index)


def test_truncated_real_tokenizer(shared_data: Path, tmp_path: Path) -> None:
    data = (shared_data / REAL_TOKENIZERS[0]).read_bytes()
    path = tmp_path / "tokenizer.p"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TokenizerError, match="not a readable"):
        read_tokenizer(path)


def test_pickle_of_something_else(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.p"
    path.write_bytes(pickle.dumps({"start": 1, "end": 2}))
    with pytest.raises(TokenizerError, match="not a Keras Tokenizer"):
        read_tokenizer(path)


def test_missing_tokenizer_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"tokenizer not found: .*nope\.p"):
        read_tokenizer(tmp_path / "nope.p")


def test_vocabulary_size_mismatch_names_both_numbers(tmp_path: Path) -> None:
    state = read_tokenizer(write_fake_tokenizer(tmp_path / "t.p", ["end", "start", "dog", "cat"]))
    with pytest.raises(TokenizerError, match=r"4 words.*vocabulary of 5.*predicts 7,577"):
        build_vocabulary(state, 7577)


def test_num_words_limits_the_vocabulary(tmp_path: Path) -> None:
    words = ["end", "start", "dog", "cat", "runs", "grass"]
    path = tmp_path / "t.p"
    path.write_bytes(pickle_fake_tokenizer(tokenizer_state(words, num_words=4)))
    vocabulary = build_vocabulary(read_tokenizer(path), 4)
    assert vocabulary == [None, "end", "start", "dog"]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    position=st.integers(min_value=0, max_value=2000),
    value=st.integers(0, 255),
    cut=st.integers(min_value=1, max_value=4000),
)
def test_damaged_real_tokenizer_never_escapes_as_a_traceback(
    shared_data: Path, tmp_path: Path, position: int, value: int, cut: int
) -> None:
    """Flipped or cut bytes in a real tokenizer.p: either it still loads, or a TokenizerError."""
    data = bytearray((shared_data / REAL_TOKENIZERS[2]).read_bytes()[:cut])
    data[min(position, len(data) - 1)] = value
    path = tmp_path / "damaged.p"
    path.write_bytes(bytes(data))
    try:
        state = read_tokenizer(path)
    except TokenizerError:
        return
    assert state.word_index


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(content=st.binary(min_size=1, max_size=300))
def test_arbitrary_bytes_are_a_tokenizer_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "random.p"
    path.write_bytes(content)
    with pytest.raises((TokenizerError, GitLfsPointerError)):
        read_tokenizer(path)

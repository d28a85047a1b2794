"""Start and end words come from the tokenizer's own counts, never from a guess (issue 16).

Two halves. First, `choose_delimiters` on tokenizer states built to the shape
of real ones: the pair chosen, or the one-line refusal, for both pairs present,
markers only, neither, two qualifying pairs, no counts at all, and the
explicit options. Second, end to end through `capgen convert model` and the
runtime's greedy loop against the tutorial's own Keras loop (real tf_keras
Tokenizer, `texts_to_sequences` + `pad_sequences` + `predict`) run with the
same words, token for token, for: both pairs present, markers only, an
unknown start word (first input all padding), no end word, and neither.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pickle_builders import tokenizer_state

from capgen.convert.delimiters import DelimiterOptions, Delimiters, choose_delimiters
from capgen.convert.tokenizer import TokenizerState, _state_from, build_vocabulary
from capgen.runtime.errors import TokenizerError

TESTS = Path(__file__).resolve().parents[1]
CONSOLE_SCRIPT = TESTS.parent / ".venv" / "bin" / "capgen"

# --- choosing from evidence ------------------------------------------------------------------


def _state(words: list[str], docs: dict[str, int], documents: int, **extra: Any) -> TokenizerState:
    """A tokenizer over `words` (id order) fitted on `documents` captions; `docs` word -> captions."""
    state = tokenizer_state(words, documents=documents, markers=frozenset())
    state["word_docs"].update(docs)
    state["word_counts"].update(docs)
    state.update(extra)
    return _state_from(state, Path("tokenizer.p"))


def _choose(state: TokenizerState, **options: Any) -> Delimiters:
    vocabulary = build_vocabulary(state, max(state.word_index.values()) + 1)
    return choose_delimiters(state, vocabulary, DelimiterOptions(**options))


# A startseq/endseq project: the markers wrap all 40,455 captions; "start" and
# "end" are ordinary words ("at the start of a race") in a handful.
BOTH = ["startseq", "endseq", "a", "dog", "end", "start"]
BOTH_DOCS = {"startseq": 40455, "endseq": 40455, "a": 30000, "dog": 900, "end": 51, "start": 7}


def test_both_pairs_present_the_markers_in_every_caption_win() -> None:
    words = _choose(_state(BOTH, BOTH_DOCS, 40455))
    assert (words.start_token, words.start_id, words.end_token, words.end_id) == (
        "startseq",
        1,
        "endseq",
        2,
    )
    assert (words.documents, words.start_documents, words.end_documents) == (40455, 40455, 40455)
    assert words.chosen_by == "captions"
    assert "'startseq' (id 1, in 40,455 of 40,455 captions)" in words.describe()


def test_markers_only() -> None:
    words = _choose(_state(["endseq", "startseq", "a"], {"endseq": 300, "startseq": 300}, 300))
    assert (words.start_token, words.end_token) == ("startseq", "endseq")


def test_neither_pair_covers_the_captions_so_capgen_refuses_and_says_how_to_decide() -> None:
    state = _state(["a", "dog", "end", "start"], {"a": 900, "end": 51, "start": 7}, 1000)
    with pytest.raises(TokenizerError) as caught:
        _choose(state)
    message = str(caught.value)
    assert "\n" not in message
    assert "no start/end pair appears in nearly every caption" in message
    assert "'start' in 7 of 1,000 captions and 'end' in 51 of 1,000 captions" in message
    assert "--start-token" in message and "--end-token" in message
    assert "--start-outside-vocabulary" in message and "--no-end-token" in message


def test_two_pairs_that_both_cover_the_captions_are_ambiguous() -> None:
    docs = {"start": 500, "end": 500, "startseq": 500, "endseq": 500}
    state = _state(["start", "end", "startseq", "endseq", "a"], docs, 500)
    with pytest.raises(TokenizerError, match=r"more than one pair.*'startseq' in 500 of 500"):
        _choose(state)
    chosen = _choose(state, start_token="startseq", end_token="endseq")
    assert (chosen.start_token, chosen.end_token, chosen.chosen_by) == (
        "startseq",
        "endseq",
        "options",
    )


def test_without_counts_the_ids_are_the_evidence() -> None:
    """A tokenizer.to_json() made by hand, or a stripped pickle: only word_index survives."""
    no_counts = {"word_docs": None, "word_counts": None, "document_count": None}
    frequent = _state(["a", "end", "start", *[f"w{i}" for i in range(30)]], {}, 1, **no_counts)
    assert _choose(frequent).chosen_by == "ids"
    rare = _state([*[f"w{i}" for i in range(30)], "end", "start"], {}, 1, **no_counts)
    with pytest.raises(TokenizerError, match="no start/end pair"):
        _choose(rare)


def test_one_word_given_brings_its_partner() -> None:
    state = _state(BOTH, BOTH_DOCS, 40455)
    assert _choose(state, start_token="startseq").end_token == "endseq"
    assert _choose(state, end_token="end").start_token == "start"
    with pytest.raises(TokenizerError, match=r"--start-token 'dog' alone.*--end-token WORD"):
        _choose(state, start_token="dog")


def test_a_start_word_outside_the_vocabulary_needs_the_explicit_option() -> None:
    state = _state(["a", "dog", "endseq"], {"endseq": 10}, 10)
    with pytest.raises(TokenizerError, match=r"'startseq' is not in .*--start-outside-vocabulary"):
        _choose(state, start_token="startseq", end_token="endseq")
    words = _choose(
        state, start_token="startseq", end_token="endseq", start_outside_vocabulary=True
    )
    assert (words.start_token, words.start_id, words.end_id) == ("startseq", None, 3)
    assert "not in the vocabulary: the first input is all padding" in words.describe()
    with pytest.raises(TokenizerError, match="'a' is in the vocabulary"):
        _choose(state, start_token="a", end_token="endseq", start_outside_vocabulary=True)
    with pytest.raises(TokenizerError, match="needs --start-token"):
        _choose(state, start_outside_vocabulary=True)


def test_no_end_word_needs_the_explicit_option() -> None:
    state = _state(["startseq", "a", "dog"], {"startseq": 10}, 10)
    with pytest.raises(TokenizerError, match=r"'endseq' is not in .*--no-end-token"):
        _choose(state, start_token="startseq", end_token="endseq")
    words = _choose(state, start_token="startseq", no_end_token=True)
    assert (words.end_token, words.end_id) == (None, None)
    assert "no end word (captions run to max_length)" in words.describe()
    with pytest.raises(TokenizerError, match="contradict"):
        _choose(state, start_token="startseq", end_token="a", no_end_token=True)


def test_malformed_counts_are_a_tokenizer_error() -> None:
    state = tokenizer_state(["start", "end"])
    state["word_docs"] = {"start": "many"}
    with pytest.raises(TokenizerError, match="word_docs is not a mapping of words to counts"):
        _state_from(state, Path("t.p"))


# --- end to end: capgen convert model + runtime greedy == the tutorial's Keras loop --------------

CAPTION_BODIES = [
    "a dog runs at the start of a race",
    "a man stands at the end of a pier",
    "two dogs run in the grass",
    "a child plays with a red ball",
    "a woman rides a bike down the street",
    "the dog jumps over the fence",
    "a boy sits on a bench near the water",
]


def _texts(start: str | None, end: str | None) -> list[str]:
    return [" ".join(filter(None, [start, body, end])) for body in CAPTION_BODIES]


# name -> (training captions' start, end; the conversion's extra flags; the loop's start, end)
SCENARIOS: dict[str, tuple[str | None, str | None, list[str], str, str | None]] = {
    "both pairs, markers in every caption": ("startseq", "endseq", [], "startseq", "endseq"),
    "markers only": ("startseq", "endseq", [], "startseq", "endseq"),
    "unknown start word": (
        None,
        "endseq",
        ["--start-token", "startseq", "--start-outside-vocabulary", "--end-token", "endseq"],
        "startseq",
        "endseq",
    ),
    "no end word": (
        "startseq",
        None,
        ["--start-token", "startseq", "--no-end-token"],
        "startseq",
        None,
    ),
    "neither": (
        None,
        None,
        ["--start-token", "startseq", "--start-outside-vocabulary", "--no-end-token"],
        "startseq",
        None,
    ),
}


def _capgen(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CONSOLE_SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )


@pytest.fixture(scope="module")
def keras_helpers(tf_keras_stack: None) -> Any:
    if not CONSOLE_SCRIPT.exists():
        pytest.skip(f"console script {CONSOLE_SCRIPT} not installed (make install creates it)")
    import keras_decoder_builders

    return keras_decoder_builders


def _fit_tokenizer(texts: list[str], path: Path) -> Any:
    import pickle

    from tf_keras.preprocessing.text import Tokenizer

    tokenizer = Tokenizer()
    tokenizer.fit_on_texts(texts)
    with path.open("wb") as handle:
        pickle.dump(tokenizer, handle)
    return tokenizer


def _runtime_greedy(folder: Path, features: np.ndarray) -> list[list[str]]:
    from capgen.runtime.captioner import Captioner
    from capgen.runtime.decoding import DecodingOptions

    captioner = Captioner(folder)
    results = captioner.decode_features(features, DecodingOptions(beam_size=1))
    words = captioner.vocabulary.words
    return [[words[token] or "" for token in result.tokens] for result in results]


@pytest.mark.convert
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_converted_captions_equal_the_tutorial_loop_with_the_same_words(
    scenario: str, keras_helpers: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAPGEN_HOME", str(tmp_path / "home"))
    k = keras_helpers
    train_start, train_end, flags, loop_start, loop_end = SCENARIOS[scenario]
    texts = _texts(train_start, train_end)
    if scenario == "markers only":  # no ordinary "start" or "end" in any caption
        texts = [t.replace(" start ", " beginning ").replace(" end ", " tip ") for t in texts]
        assert not {"start", "end"} & {w for t in texts for w in t.split()}
    tokenizer = _fit_tokenizer(texts, tmp_path / "tokenizer.p")
    vocab_size = len(tokenizer.word_index) + 1
    shape = k.DecoderShape(
        feature_size=24,
        max_length=9,
        vocab_size=vocab_size,
        embedding_size=8,
        units=16,
        projection_size=16,
        hidden_size=12,
    )
    model = k.build_tf_keras_decoder(shape)
    weights = k.peaked_role_weights(shape, seed=3)
    photos = k.synthetic_photo_features(12, shape.feature_size, seed=5)
    predict: Callable[[np.ndarray, np.ndarray], np.ndarray] = lambda p, s: model.predict_on_batch(  # noqa: E731
        [p, s.astype(np.float32)]
    )
    if loop_end is not None:  # make the end word win at some steps, so captions also stop on it
        k.apply_role_weights(model, weights)
        trial = k.tutorial_greedy(
            predict, tokenizer, photos, shape.max_length, loop_start, loop_end
        )
        end_id = tokenizer.word_index[loop_end]
        weights["output_dense"][1][end_id] += k.end_bias_boost(trial, end_id, quantile=0.3)
    k.apply_role_weights(model, weights)
    model.save(tmp_path / "model_9.h5")
    encoder = k.tiny_encoder_onnx(tmp_path / "encoder.onnx", shape.feature_size)
    args = [
        "convert", "model", tmp_path / "model_9.h5", tmp_path / "tokenizer.p",
        "-o", tmp_path / "model", "--encoder", encoder,
    ]  # fmt: skip

    if scenario == "neither":  # no evidence: refused, with the way out in one line
        refused = _capgen(*args)
        assert refused.returncode == 4, refused.stderr
        assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
        assert "no start/end pair appears in nearly every caption" in refused.stderr
        assert f"'start' in 1 of {len(texts)} captions" in refused.stderr

    done = _capgen(*args, *flags)
    assert done.returncode == 0, done.stderr
    expected = k.tutorial_greedy(predict, tokenizer, photos, shape.max_length, loop_start, loop_end)
    got = _runtime_greedy(tmp_path / "model", photos)
    assert got == [caption.words for caption in expected]
    if loop_end is not None:
        assert any(words and words[-1] == loop_end for words in got), "no caption ended"
    else:
        assert all(len(words) == shape.max_length for words in got)

    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())["vocabulary"]
    assert manifest["start_token"] == loop_start and manifest["end_token"] == loop_end
    assert (manifest["start_id"] is None) == (loop_start not in tokenizer.word_index)
    assert done.stdout.count(f"start {loop_start!r}") == 1, done.stdout
    info = _capgen("info", tmp_path / "model")
    assert info.returncode == 0, info.stderr
    assert f"start {loop_start!r}" in info.stdout
    if scenario.startswith("both"):
        assert f"in {len(texts)} of {len(texts)} captions" in info.stdout
        assert "chosen by the captions they appear in" in done.stdout
    captioned = _capgen(
        "caption", "--model", tmp_path / "model", "--beam-size", "1", "--json", _png(tmp_path)
    )
    assert captioned.returncode == 0, captioned.stderr
    line = json.loads(captioned.stdout)
    if loop_end is None:  # a model without an end word is finished when it reaches max_length
        assert line["finished"] is True and len(line["tokens"]) == shape.max_length


def _png(folder: Path) -> Path:
    from PIL import Image

    path = folder / "photo.png"
    Image.fromarray(np.full((20, 30, 3), 120, np.uint8)).save(path)
    return path

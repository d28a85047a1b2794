"""Decoding: greedy is the tutorial's loop, beam search finds known best answers."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
from keras_reference import generate_desc
from tiny_model import encoder_numpy, random_weights, write_tiny_model

from capgen.runtime.captioner import Captioner
from capgen.runtime.decoding import DecodingOptions, Hypothesis, beam_search, decode, greedy_search
from capgen.runtime.errors import InputError
from capgen.runtime.vocabulary import Vocabulary

# A hand-made Markov step model: the next word's distribution depends only on the last word.
MARKOV_WORDS: tuple[str | None, ...] = (None, "start", "a", "b", "c", "end")
START, A, B, C, END = 1, 2, 3, 4, 5


class MarkovStepModel:
    """h[:, 0] remembers the last word; probabilities come from a table (rows = last word)."""

    def __init__(self, table: dict[int, dict[int, float]]) -> None:
        # Unlisted words are very unlikely, the no-word id even less (as in a trained model),
        # so a beam wider than the plausible words fills up with real words first.
        self.log_table = np.full((len(MARKOV_WORDS), len(MARKOV_WORDS)), -1e6, dtype=np.float32)
        self.log_table[:, 0] = -1e9
        for last, nexts in table.items():
            for token, probability in nexts.items():
                self.log_table[last, token] = np.log(probability)
        self.calls = 0
        self.rows_per_call: list[int] = []

    def initial_state(self, rows: int) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros((rows, 1), np.float32), np.zeros((rows, 1), np.float32)

    def step(self, words, h, c, photo):  # type: ignore[no-untyped-def]
        self.calls += 1
        self.rows_per_call.append(len(words))
        return self.log_table[words], words[:, None].astype(np.float32), c


MARKOV_VOCAB = Vocabulary(MARKOV_WORDS, START, END)
# Greedy takes "a" (0.55) then ends: p = 0.55 * 0.4 = 0.22.
# The best caption is "b end": p = 0.45 * 0.9 = 0.405.
GREEDY_TRAP = {
    START: {A: 0.55, B: 0.45},
    A: {END: 0.4, C: 0.3, B: 0.3},
    B: {END: 0.9, C: 0.1},
    C: {END: 1.0},
}


def test_greedy_falls_into_the_trap_and_beam_search_finds_the_best_caption() -> None:
    photo = np.zeros((1, 1), np.float32)
    greedy = decode(
        MarkovStepModel(GREEDY_TRAP), photo, MARKOV_VOCAB, DecodingOptions(beam_size=1), 5
    )[0]
    assert greedy.tokens == (A, END)
    assert greedy.text == "a" and greedy.raw == "start a end" and greedy.finished
    assert greedy.log_probability == pytest.approx(np.log(0.22), abs=1e-6)
    beam = decode(
        MarkovStepModel(GREEDY_TRAP), photo, MARKOV_VOCAB, DecodingOptions(beam_size=2, n_best=2), 5
    )[0]
    assert beam.tokens == (B, END)
    assert beam.log_probability == pytest.approx(np.log(0.405), abs=1e-6)
    assert [alt.tokens for alt in beam.alternatives] == [(A, END)]


def test_beam_search_batches_all_beams_of_all_images_into_one_step_call() -> None:
    model = MarkovStepModel(GREEDY_TRAP)
    photos = np.zeros((4, 1), np.float32)
    results = decode(model, photos, MARKOV_VOCAB, DecodingOptions(beam_size=2), 5)
    assert [r.tokens for r in results] == [(B, END)] * 4
    # one call per word position for the whole batch, however many beams are alive
    assert model.calls <= 3
    assert max(model.rows_per_call) == 4 * 2


def test_length_penalty_prefers_the_longer_caption_it_is_meant_to() -> None:
    table = {START: {A: 0.5, B: 0.5}, A: {END: 1.0}, B: {C: 0.95, END: 0.05}, C: {END: 1.0}}
    photo = np.zeros((1, 1), np.float32)
    plain = decode(MarkovStepModel(table), photo, MARKOV_VOCAB, DecodingOptions(beam_size=3), 5)[0]
    assert plain.tokens == (A, END)  # log 0.5 = -0.69 beats log 0.475 = -0.74
    penalised = decode(
        MarkovStepModel(table),
        photo,
        MARKOV_VOCAB,
        DecodingOptions(beam_size=3, length_penalty=2.0),
        5,
    )[0]
    # GNMT alpha=2: -0.74 / (8/6)^2 = -0.42 beats -0.69 / (7/6)^2 = -0.51
    assert penalised.tokens == (B, C, END)
    assert penalised.log_probability == pytest.approx(np.log(0.475), abs=1e-6)


def test_unfinished_hypotheses_are_returned_flagged_when_nothing_ends() -> None:
    loop = {START: {A: 1.0}, A: {A: 0.9, B: 0.1}, B: {A: 1.0}}
    photo = np.zeros((1, 1), np.float32)
    for beam_size in (1, 3):
        result = decode(
            MarkovStepModel(loop), photo, MARKOV_VOCAB, DecodingOptions(beam_size=beam_size), 4
        )[0]
        assert result.tokens == (A, A, A, A)
        assert not result.finished and result.stop_reason == "max_length"
        assert result.raw == "start a a a a"


def test_a_word_without_an_id_stops_the_caption_like_the_tutorial() -> None:
    table = {START: {A: 0.9, B: 0.1}, A: {0: 0.6, END: 0.4}}
    photo = np.zeros((1, 1), np.float32)
    for beam_size in (1, 2):
        result = decode(
            MarkovStepModel(table), photo, MARKOV_VOCAB, DecodingOptions(beam_size=beam_size), 5
        )[0]
        if beam_size == 1:
            assert result.tokens == (A,) and result.stop_reason == "no_word"
            assert result.raw == "start a" and not result.finished
        else:  # with two beams "a end" also ends, and finished captions rank first
            assert result.tokens == (A, END) and result.finished


def test_an_unlikely_stop_on_a_word_without_an_id_never_outranks_a_likely_caption() -> None:
    """Issue 10 finding 23: a stop kept its parent's score, so a 1% stop beat a 97% caption.

    A stop on an id with no word is a choice the model makes with that id's
    probability (the tutorial takes it only when it is the argmax); its score
    counts it, in greedy and beam search alike.
    """
    table = {START: {0: 0.01, A: 0.99}, A: {A: 0.99, B: 0.01}, B: {A: 1.0}}
    photo = np.zeros((1, 1), np.float32)
    for beam_size in (2, 3):
        result = decode(
            MarkovStepModel(table), photo, MARKOV_VOCAB, DecodingOptions(beam_size=beam_size), 3
        )[0]
        assert result.tokens == (A, A, A), f"beam {beam_size}: {result.tokens}"
        assert result.stop_reason == "max_length"
    stop_first = {START: {0: 0.6, A: 0.4}}
    greedy = decode(
        MarkovStepModel(stop_first), photo, MARKOV_VOCAB, DecodingOptions(beam_size=1), 3
    )[0]
    assert greedy.tokens == () and greedy.stop_reason == "no_word"
    assert greedy.log_probability == pytest.approx(np.log(0.6), abs=1e-6)


def test_max_length_option_overrides_the_model() -> None:
    loop = {START: {A: 1.0}, A: {A: 1.0}}
    photo = np.zeros((1, 1), np.float32)
    result = decode(
        MarkovStepModel(loop), photo, MARKOV_VOCAB, DecodingOptions(beam_size=1, max_length=2), 9
    )[0]
    assert result.tokens == (A, A)


@pytest.mark.parametrize(
    "options",
    [
        {"beam_size": 0},
        {"beam_size": -1},
        {"max_length": 0},
        {"n_best": 4, "beam_size": 3},
        {"length_penalty": -1.0},
        {"length_penalty": float("nan")},
        {"beam_size": 2.5},
    ],
)
def test_invalid_options_are_input_errors(options: dict[str, object]) -> None:
    with pytest.raises(InputError):
        DecodingOptions(**options)  # type: ignore[arg-type]


def test_numpy_integers_are_fine_and_bools_are_not() -> None:
    assert DecodingOptions(beam_size=np.int64(2), max_length=np.int32(5)).beam_size == 2  # type: ignore[arg-type]
    with pytest.raises(InputError):
        DecodingOptions(beam_size=True)


@pytest.fixture(scope="module", params=[0, 1, 2, 3, 4])
def seeded_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    weights = random_weights(seed=request.param)
    if (
        request.param == 4
    ):  # Keras 2's hard sigmoid and concatenate merge exercise the other graph paths
        rng = np.random.default_rng(4)
        weights = replace(
            weights,
            recurrent_activation="hard_sigmoid_keras2",
            merge="concatenate",
            hidden_kernel=rng.normal(0, 0.5, (2 * weights.units, weights.units)),
        )
    model = write_tiny_model(tmp_path_factory.mktemp(f"seed{request.param}") / "m", weights=weights)
    return model, Captioner(model.folder)


def _images(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        (rng.random((int(rng.integers(20, 90)), int(rng.integers(20, 90)), 3)) * 255).astype(
            np.uint8
        )
        for _ in range(count)
    ]


def test_greedy_equals_the_tutorial_loop_token_for_token(seeded_model) -> None:  # type: ignore[no-untyped-def]
    model, captioner = seeded_model
    images = _images(6, seed=1)
    results = captioner.caption_batch(images, beam_size=1)
    for image, result in zip(images, results, strict=True):
        features = encoder_numpy(captioner.preprocess(image)[None])[0].astype(np.float64)
        expected = generate_desc(model.weights, model.words, features, model.max_length)
        assert result.raw == expected


def test_beam_size_one_equals_greedy_exactly(seeded_model) -> None:  # type: ignore[no-untyped-def]
    _, captioner = seeded_model
    features = captioner.features(np.stack([captioner.preprocess(i) for i in _images(8, seed=2)]))
    photo = captioner._step_model.project(features)
    vocabulary, max_length = captioner.vocabulary, captioner.manifest.max_length
    greedy = greedy_search(captioner._step_model, photo, vocabulary, max_length)
    beam = beam_search(captioner._step_model, photo, vocabulary, max_length, beam_size=1)
    assert greedy == beam


@pytest.mark.parametrize("beam_size", [1, 3])
def test_a_batch_decodes_like_each_image_alone(seeded_model, beam_size: int) -> None:  # type: ignore[no-untyped-def]
    _, captioner = seeded_model
    images = _images(5, seed=3)
    batch = captioner.caption_batch(images, beam_size=beam_size, batch_size=5)
    alone = [captioner.caption(image, beam_size=beam_size) for image in images]
    assert [r.tokens for r in batch] == [r.tokens for r in alone]
    assert [r.log_probability for r in batch] == pytest.approx(
        [r.log_probability for r in alone], abs=1e-5
    )


@pytest.mark.parametrize("seed", range(20))
def test_a_beam_wide_enough_to_keep_everything_finds_the_exhaustive_best(seed: int) -> None:
    rng = np.random.default_rng(seed)
    table = {
        last: dict(zip((A, B, C, END), rng.dirichlet(np.full(4, 0.7)).tolist(), strict=True))
        for last in (START, A, B, C)
    }
    max_length = 3
    best_logp, best_tokens = -np.inf, ()
    for length in range(1, max_length + 1):  # every caption that ends within max_length words
        for prefix in itertools.product((A, B, C), repeat=length - 1):
            tokens = (*prefix, END)
            logp = sum(
                np.log(table[last][t]) for last, t in zip((START, *tokens), tokens, strict=False)
            )
            if logp > best_logp:
                best_logp, best_tokens = logp, tokens
    result = decode(
        MarkovStepModel(table),
        np.zeros((1, 1), np.float32),
        MARKOV_VOCAB,
        DecodingOptions(beam_size=64),
        max_length,
    )[0]
    assert result.tokens == best_tokens
    assert result.log_probability == pytest.approx(best_logp, abs=1e-5)


def _reference_beam(
    table: np.ndarray, vocabulary: Vocabulary, beam_size: int, max_length: int
) -> list[Hypothesis]:
    """Beam search the slow, obvious way: every beam x every word each step, no pruning."""
    beams: list[tuple[tuple[int, ...], float]] = [((), 0.0)]
    ended: list[Hypothesis] = []
    stopped: list[Hypothesis] = []
    for _ in range(max_length):
        candidates = [
            (score + float(table[tokens[-1] if tokens else vocabulary.start_id, word]), row, word)
            for row, (tokens, score) in enumerate(beams)
            for word in range(vocabulary.size)
        ]
        candidates.sort(key=lambda item: (-item[0], item[1], item[2]))
        next_beams: list[tuple[tuple[int, ...], float]] = []
        for score, row, word in candidates:
            tokens, _ = beams[row]
            if word in vocabulary.null_id_set:
                stopped.append(Hypothesis(tokens, score, "no_word"))
            elif word == vocabulary.end_id:
                ended.append(Hypothesis((*tokens, word), score, "end"))
            else:
                next_beams.append(((*tokens, word), score))
            if len(ended) + len(stopped) >= beam_size:
                return sorted(ended, key=lambda h: -h.log_probability) or sorted(
                    stopped, key=lambda h: -h.log_probability
                )
            if len(next_beams) == beam_size:
                break
        beams = next_beams
    cut = [Hypothesis(tokens, score, "max_length") for tokens, score in beams]
    return sorted(ended, key=lambda h: -h.log_probability) or sorted(
        stopped + cut, key=lambda h: -h.log_probability
    )


@pytest.mark.parametrize("seed", range(100))
def test_pruned_beam_search_equals_the_unpruned_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    words: tuple[str | None, ...] = (
        None,
        "start",
        "a",
        "b",
        "c",
        None,
        "d",
        "e",
        "f",
        "end",
        None,
        "g",
    )
    vocabulary = Vocabulary(words, 1, 9)
    # Peaked rows, so the words that end a caption often crowd a row's top candidates.
    table = np.log(rng.dirichlet(np.full(len(words), 0.15), size=len(words)) + 1e-12).astype(
        np.float32
    )

    class TableModel:
        def initial_state(self, rows: int) -> tuple[np.ndarray, np.ndarray]:
            return np.zeros((rows, 1), np.float32), np.zeros((rows, 1), np.float32)

        def step(self, w, h, c, p):  # type: ignore[no-untyped-def]
            return table[w], h, c

    beam_size = int(rng.integers(2, 5))
    got = beam_search(TableModel(), np.zeros((3, 1), np.float32), vocabulary, 6, beam_size)
    want = _reference_beam(table, vocabulary, beam_size, 6)
    for image in got:
        assert image[0].tokens == want[0].tokens
        assert image[0].log_probability == pytest.approx(want[0].log_probability, abs=1e-9)

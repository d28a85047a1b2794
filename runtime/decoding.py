"""Search strategies over the step model: greedy (the tutorial's loop) and beam search.

Shaped like openai/whisper's decoding.py: one frozen `DecodingOptions`, one
`DecodingResult`, and strategies plugged into ONE loop (`_search`) that owns
the step model. The loop advances all hypotheses of all images in one step
call per word position, because a step is a few microseconds of compute and
the per-call overhead would otherwise dominate; a strategy only chooses which
rows go on with which word.

The stop rules are stated once (`_stop_rules`, `_stopped`) and follow the
tutorial exactly: a caption ends after the end token (which is kept in
`tokens` and `raw`, like the tutorial's `in_text`), or when the chosen word is
an id with no word (the tutorial's `if word is None: break`; the id is not
kept, but its log-probability counts, so an unlikely stop never outranks a
likely caption), or after `max_length` words. A model without an end word
(`end_id` None) always runs to `max_length`, which then counts as finished.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

import numpy as np

from capgen.runtime.errors import InputError
from capgen.runtime.limits import MAX_BEAM_SIZE, MAX_CAPTION_LENGTH, is_count
from capgen.runtime.top_k import top_k
from capgen.runtime.vocabulary import Vocabulary

StopReason = Literal["end", "no_word", "max_length"]

__all__ = [
    "MAX_BEAM_SIZE",
    "DecodingOptions",
    "DecodingResult",
    "DecodingStopped",
    "Hypothesis",
    "StopReason",
    "beam_search",
    "decode",
    "greedy_search",
    "is_count",
    "stop_when",
    "to_result",
]

# A long-running caller (capgen serve) may abandon a batch whose requests nobody waits for any
# more; the loop asks this hook before each step. A context variable, so no signature between
# the caller and `_search` changes, and a thread that never sets it decodes exactly as before.
_SHOULD_STOP: ContextVar[Callable[[], bool] | None] = ContextVar("capgen_should_stop", default=None)


class DecodingStopped(Exception):
    """Decoding was abandoned between two steps because the `stop_when` hook said so."""


@contextmanager
def stop_when(should_stop: Callable[[], bool]) -> Iterator[None]:
    """Within this block (this thread), decoding raises DecodingStopped once `should_stop()` is true."""
    token = _SHOULD_STOP.set(should_stop)
    try:
        yield
    finally:
        _SHOULD_STOP.reset(token)


class StepModelLike(Protocol):
    def initial_state(self, rows: int) -> tuple[np.ndarray, np.ndarray]: ...

    def step(
        self, words: np.ndarray, h: np.ndarray, c: np.ndarray, photo: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class DecodingOptions:
    """How to search. `beam_size=1` is the tutorial's greedy loop, token for token.

    - `max_length`: most words generated after the start token; None = the model's.
    - `length_penalty`: None ranks finished captions by total log-probability
      (what beam search in the tutorial's follow-ups does, and favours short
      captions); a number alpha divides it by ((5 + length) / 6) ** alpha (GNMT).
    - `n_best`: how many ranked captions to return (the best plus alternatives).
    """

    beam_size: int = 3
    max_length: int | None = None
    length_penalty: float | None = None
    n_best: int = 1

    def __post_init__(self) -> None:
        if not is_count(self.beam_size) or not 1 <= self.beam_size <= MAX_BEAM_SIZE:
            raise InputError(
                f"beam_size must be an integer from 1 to {MAX_BEAM_SIZE}, got {self.beam_size!r}"
            )
        if self.max_length is not None and (
            not is_count(self.max_length) or not 1 <= self.max_length <= MAX_CAPTION_LENGTH
        ):
            raise InputError(
                f"max_length must be an integer from 1 to {MAX_CAPTION_LENGTH}, got {self.max_length!r}"
            )
        if not is_count(self.n_best) or not 1 <= self.n_best <= self.beam_size:
            raise InputError(
                f"n_best must be between 1 and beam_size ({self.beam_size}), got {self.n_best!r}"
            )
        if self.length_penalty is not None and not (
            isinstance(self.length_penalty, (int, float))
            and math.isfinite(self.length_penalty)
            and self.length_penalty >= 0
        ):
            raise InputError(
                f"length_penalty must be a non-negative number or None, got {self.length_penalty!r}"
            )


@dataclass(frozen=True)
class Hypothesis:
    tokens: tuple[int, ...]
    log_probability: float
    stop_reason: StopReason

    def score(self, length_penalty: float | None) -> float:
        if length_penalty is None:
            return self.log_probability
        return self.log_probability / (((5.0 + len(self.tokens)) / 6.0) ** length_penalty)


@dataclass(frozen=True)
class DecodingResult:
    """One caption. `tokens` are the generated ids (end included when `finished`).

    `timings` are seconds per stage (preprocess, encode, decode, total); in a
    batch, encode and decode are the batch's time divided by its size.
    `alternatives` holds the next-best captions when `n_best` > 1.
    """

    text: str
    tokens: tuple[int, ...]
    raw: str
    log_probability: float
    finished: bool
    stop_reason: StopReason
    timings: dict[str, float] = field(default_factory=dict)
    alternatives: tuple[DecodingResult, ...] = ()

    def with_timings(self, timings: dict[str, float]) -> DecodingResult:
        return replace(self, timings=dict(timings))


def to_result(ranked: list[Hypothesis], vocabulary: Vocabulary) -> DecodingResult:
    """The best hypothesis as a result, the rest as its alternatives."""
    runs_to_length = vocabulary.end_id is None  # no end word: reaching max_length is the end

    def one(hyp: Hypothesis) -> DecodingResult:
        words = [vocabulary.words[i] or "" for i in hyp.tokens]
        text_words = words[:-1] if hyp.stop_reason == "end" else words
        return DecodingResult(
            text=" ".join(text_words),
            tokens=hyp.tokens,
            raw=" ".join([vocabulary.start_word, *words]),
            log_probability=hyp.log_probability,
            finished=hyp.stop_reason == "end"
            or (runs_to_length and hyp.stop_reason == "max_length"),
            stop_reason=hyp.stop_reason,
        )

    best = one(ranked[0])
    return replace(best, alternatives=tuple(one(h) for h in ranked[1:]))


# --- the stop rules, once ---------------------------------------------------------------------


def _stop_rules(vocabulary: Vocabulary) -> dict[int, StopReason]:
    """id -> why choosing it ends a caption; ids not listed continue it."""
    rules: dict[int, StopReason] = dict.fromkeys(vocabulary.null_id_set, "no_word")
    if vocabulary.end_id is not None:
        rules[vocabulary.end_id] = "end"
    return rules


def _stopped(tokens: tuple[int, ...], token: int, score: float, reason: StopReason) -> Hypothesis:
    """The hypothesis a stop leaves: the end token is kept (as in the tutorial's in_text), a no-word id is not."""
    return Hypothesis((*tokens, token) if reason == "end" else tokens, score, reason)


# --- one loop, pluggable strategies -------------------------------------------------------------


class _Strategy(Protocol):
    def advance(self, log_probs: np.ndarray) -> tuple[np.ndarray, list[int] | None]:
        """The next words, and which current rows they continue (None: every row, in order)."""
        ...

    def finish(self) -> list[list[Hypothesis]]:
        """Per image, its hypotheses ranked best first; rows still live stopped at max_length."""
        ...


def _search(
    model: StepModelLike,
    photo: np.ndarray,
    vocabulary: Vocabulary,
    max_length: int,
    strategy: _Strategy,
) -> list[list[Hypothesis]]:
    """Run `strategy` over the step model: one step call per word position for every live row."""
    count = photo.shape[0]
    words = np.full(count, vocabulary.first_input_id, dtype=np.int64)
    h, c = model.initial_state(count)
    row_photo = photo
    should_stop = _SHOULD_STOP.get()
    for _ in range(max_length):
        if should_stop is not None and should_stop():
            raise DecodingStopped("decoding stopped: nobody waits for these captions")
        log_probs, h, c = model.step(words, h, c, row_photo)
        words, parents = strategy.advance(log_probs)
        if parents is None:
            continue
        if not parents:
            break
        h, c, row_photo = h[parents], c[parents], row_photo[parents]
    return strategy.finish()


class _Greedy:
    """The tutorial's argmax loop, batched.

    The per-word Python work is kept to an argmax and a loop over the live
    rows in plain ints, because at ~0.1 ms a step any numpy call counts.
    """

    def __init__(self, count: int, vocabulary: Vocabulary) -> None:
        self.rules = _stop_rules(vocabulary)
        self.rows = list(range(count))  # image index of each live row
        self.tokens: list[list[int]] = [[] for _ in range(count)]
        self.log_probability = [0.0] * count
        self.ended: list[Hypothesis | None] = [None] * count

    def advance(self, log_probs: np.ndarray) -> tuple[np.ndarray, list[int] | None]:
        chosen = log_probs.argmax(axis=1)
        stopped_any = False
        for row, token in enumerate(chosen.tolist()):
            image = self.rows[row]
            self.log_probability[image] += float(log_probs[row, token])
            reason = self.rules.get(token)
            if reason is None:
                self.tokens[image].append(token)
                continue
            self.ended[image] = _stopped(
                tuple(self.tokens[image]), token, self.log_probability[image], reason
            )
            stopped_any = True
        if not stopped_any:
            return chosen, None
        keep = [row for row, image in enumerate(self.rows) if self.ended[image] is None]
        self.rows = [self.rows[row] for row in keep]
        return chosen[keep], keep

    def finish(self) -> list[list[Hypothesis]]:
        return [
            [ended or Hypothesis(tuple(tokens), logp, "max_length")]
            for ended, tokens, logp in zip(
                self.ended, self.tokens, self.log_probability, strict=True
            )
        ]


@dataclass
class _ImageBeams:
    """Search state of one image: the hypotheses that ended or stopped so far."""

    ended: list[Hypothesis] = field(default_factory=list)
    stopped: list[Hypothesis] = field(default_factory=list)


class _Beam:
    """Beam search; all live beams of all images share one step call.

    An image is done when `beam_size` hypotheses have ended (end token) or
    stopped (no-word id, like the tutorial); with beam_size 1 that is exactly
    the greedy loop. If none ended by `max_length`, the live beams are returned
    flagged unfinished.
    """

    def __init__(
        self,
        count: int,
        vocabulary: Vocabulary,
        beam_size: int,
        length_penalty: float | None,
        n_best: int,
    ) -> None:
        self.rules = _stop_rules(vocabulary)
        self.beam_size, self.length_penalty, self.n_best = beam_size, length_penalty, n_best
        # An image stops taking candidates once beam_size continue or beam_size have
        # stopped, so a row can give at most beam_size - 1 continuing and
        # min(words that stop it, beam_size - 1) stopping ones before its last useful
        # candidate: selection sorts a handful of numbers per row instead of V.
        self.per_row = min(beam_size + min(len(self.rules), beam_size - 1), vocabulary.size)
        self.state = [_ImageBeams() for _ in range(count)]
        # Live rows, grouped by image in image order.
        self.row_image = np.arange(count)
        self.row_logp = np.zeros(count, dtype=np.float64)
        self.row_tokens: list[tuple[int, ...]] = [() for _ in range(count)]

    def advance(self, log_probs: np.ndarray) -> tuple[np.ndarray, list[int] | None]:
        per_row, beam_size = self.per_row, self.beam_size
        top_values, row_top = top_k(log_probs, per_row)
        row_scores = self.row_logp[:, None] + top_values
        live = len(self.row_image)
        # One sort for the whole batch: by image, then best score, ties to the
        # lower (row, word) like argmax, so beam_size 1 is greedy exactly.
        order = np.lexsort(
            (
                row_top.ravel(),
                np.repeat(np.arange(live), per_row),
                -row_scores.ravel(),
                np.repeat(self.row_image, per_row),
            )
        )
        cand_rows = (order // per_row).tolist()
        cand_tokens = row_top.ravel()[order].tolist()
        cand_scores = row_scores.ravel()[order].tolist()
        images = self.row_image.tolist()
        next_rows: list[int] = []
        next_words: list[int] = []
        next_logp: list[float] = []
        next_tokens: list[tuple[int, ...]] = []
        next_image: list[int] = []
        image = -1
        closed = True  # the current image needs no more candidates this step
        kept = 0
        beams = _ImageBeams()
        for row, token, score in zip(cand_rows, cand_tokens, cand_scores, strict=True):
            if images[row] != image:
                image, closed, kept = images[row], False, 0
                beams = self.state[image]
            if closed:
                continue
            reason = self.rules.get(token)
            if reason is None:
                next_rows.append(row)
                next_words.append(token)
                next_logp.append(score)
                next_tokens.append((*self.row_tokens[row], token))
                next_image.append(image)
                kept += 1
            else:
                done = _stopped(self.row_tokens[row], token, score, reason)
                (beams.ended if reason == "end" else beams.stopped).append(done)
            if len(beams.ended) + len(beams.stopped) >= beam_size:
                # Done: this image's beams end here, including those kept this step.
                closed = True
                if kept:
                    del next_rows[-kept:], next_words[-kept:], next_logp[-kept:]
                    del next_tokens[-kept:], next_image[-kept:]
            elif kept == beam_size:
                closed = True
        self.row_image = np.array(next_image, dtype=np.int64)
        self.row_logp = np.array(next_logp, dtype=np.float64)
        self.row_tokens = next_tokens
        return np.array(next_words, dtype=np.int64), next_rows

    def finish(self) -> list[list[Hypothesis]]:
        cut: dict[int, list[Hypothesis]] = {}
        for row, tokens in enumerate(self.row_tokens):
            cut.setdefault(int(self.row_image[row]), []).append(
                Hypothesis(tokens, float(self.row_logp[row]), "max_length")
            )

        def by_score(hyp: Hypothesis) -> float:
            return -hyp.score(self.length_penalty)

        ranked: list[list[Hypothesis]] = []
        for image, beams in enumerate(self.state):
            unfinished = sorted(beams.stopped + cut.get(image, []), key=by_score)
            ranked.append((sorted(beams.ended, key=by_score) + unfinished)[: self.n_best])
        return ranked


def greedy_search(
    model: StepModelLike, photo: np.ndarray, vocabulary: Vocabulary, max_length: int
) -> list[list[Hypothesis]]:
    """The tutorial's argmax loop for a batch of images, one step call per word position."""
    return _search(model, photo, vocabulary, max_length, _Greedy(photo.shape[0], vocabulary))


def beam_search(
    model: StepModelLike,
    photo: np.ndarray,
    vocabulary: Vocabulary,
    max_length: int,
    beam_size: int,
    length_penalty: float | None = None,
    n_best: int = 1,
) -> list[list[Hypothesis]]:
    """Beam search for a batch of images (see `_Beam`)."""
    strategy = _Beam(photo.shape[0], vocabulary, beam_size, length_penalty, n_best)
    return _search(model, photo, vocabulary, max_length, strategy)


def decode(
    model: StepModelLike,
    photo: np.ndarray,
    vocabulary: Vocabulary,
    options: DecodingOptions,
    model_max_length: int,
) -> list[DecodingResult]:
    """Captions for a batch of projected photos [N, P], one result per image."""
    max_length = options.max_length or model_max_length
    if options.beam_size == 1:
        ranked = greedy_search(model, photo, vocabulary, max_length)
    else:
        ranked = beam_search(
            model,
            photo,
            vocabulary,
            max_length,
            options.beam_size,
            options.length_penalty,
            options.n_best,
        )
    return [to_result(hyps, vocabulary) for hyps in ranked]

"""Search strategies over the step model: greedy (the tutorial's loop) and beam search.

Shaped like openai/whisper's decoding.py: one frozen `DecodingOptions`, one
`DecodingResult`, and strategies that only see a step model
(`initial_state`, `step`). Every strategy advances all hypotheses of all
images in ONE step call per word position, because a step is a few
microseconds of compute and the per-call overhead would otherwise dominate.

Stopping follows the tutorial exactly: a caption ends after the end token
(which is kept in `tokens` and `raw`, like the tutorial's `in_text`), or when
the model's best word is an id with no word (the tutorial's
`if word is None: break`; the id is not kept), or after `max_length` words.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

import numpy as np

from capgen.runtime.errors import InputError
from capgen.runtime.manifest import MAX_CAPTION_LENGTH
from capgen.runtime.top_k import top_k
from capgen.runtime.vocabulary import Vocabulary

StopReason = Literal["end", "no_word", "max_length"]


class StepModelLike(Protocol):
    def initial_state(self, rows: int) -> tuple[np.ndarray, np.ndarray]: ...

    def step(
        self, words: np.ndarray, h: np.ndarray, c: np.ndarray, photo: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


# Upper bounds on what a caller may ask for. Each step holds beam_size rows of
# V log-probabilities per image (V = 7,577 for the tutorial: a beam of a million
# asked for tens of GB), and a model that never says `end` decodes max_length
# steps (a hundred million took hours): refusing up front beats a hang or an
# out-of-memory kill. Real captions are 10-40 words; beams beyond ~10 stop helping.
MAX_BEAM_SIZE = 100


def is_count(value: object) -> bool:
    """An integer (numpy's too), but not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


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

    def one(hyp: Hypothesis) -> DecodingResult:
        words = [vocabulary.words[i] or "" for i in hyp.tokens]
        text_words = words[:-1] if hyp.stop_reason == "end" else words
        start_word = vocabulary.words[vocabulary.start_id] or ""
        return DecodingResult(
            text=" ".join(text_words),
            tokens=hyp.tokens,
            raw=" ".join([start_word, *words]),
            log_probability=hyp.log_probability,
            finished=hyp.stop_reason == "end",
            stop_reason=hyp.stop_reason,
        )

    best = one(ranked[0])
    return replace(best, alternatives=tuple(one(h) for h in ranked[1:]))


def greedy_search(
    model: StepModelLike, photo: np.ndarray, vocabulary: Vocabulary, max_length: int
) -> list[list[Hypothesis]]:
    """The tutorial's argmax loop for a batch of images, one step call per word position.

    The per-word Python work is kept to an argmax and a loop over the live
    rows in plain ints, because at ~0.1 ms a step any numpy call counts.
    """
    count = photo.shape[0]
    null_ids = vocabulary.null_id_set
    end_id = vocabulary.end_id
    words = np.full(count, vocabulary.start_id, dtype=np.int64)
    h, c = model.initial_state(count)
    rows = list(range(count))  # image index of each live row
    tokens: list[list[int]] = [[] for _ in range(count)]
    log_probability = [0.0] * count
    reasons: list[StopReason] = ["max_length"] * count
    for _ in range(max_length):
        log_probs, h, c = model.step(words, h, c, photo)
        chosen = log_probs.argmax(axis=1)
        stopped_any = False
        for row, token in enumerate(chosen.tolist()):
            image = rows[row]
            if token in null_ids:
                reasons[image] = "no_word"
                stopped_any = True
                continue
            tokens[image].append(token)
            log_probability[image] += float(log_probs[row, token])
            if token == end_id:
                reasons[image] = "end"
                stopped_any = True
        if not stopped_any:
            words = chosen
            continue
        keep = [row for row, image in enumerate(rows) if reasons[image] == "max_length"]
        if not keep:
            break
        rows = [rows[row] for row in keep]
        words, h, c, photo = chosen[keep], h[keep], c[keep], photo[keep]
    return [[Hypothesis(tuple(tokens[i]), log_probability[i], reasons[i])] for i in range(count)]


@dataclass
class _ImageBeams:
    """Search state of one image: the hypotheses that ended or stopped so far."""

    ended: list[Hypothesis] = field(default_factory=list)
    stopped: list[Hypothesis] = field(default_factory=list)


def beam_search(
    model: StepModelLike,
    photo: np.ndarray,
    vocabulary: Vocabulary,
    max_length: int,
    beam_size: int,
    length_penalty: float | None = None,
    n_best: int = 1,
) -> list[list[Hypothesis]]:
    """Beam search for a batch of images; all live beams of all images share one step call.

    An image is done when `beam_size` hypotheses have ended (end token) or
    stopped (no-word id, like the tutorial); with beam_size 1 that is exactly
    the greedy loop. If none ended by `max_length`, the live beams are returned
    flagged unfinished.
    """
    count = photo.shape[0]
    null_ids = vocabulary.null_id_set
    end_id = vocabulary.end_id
    # An image stops taking candidates once beam_size continue or beam_size have
    # ended, so a row can give at most beam_size - 1 continuing and
    # min(words that end it, beam_size - 1) ending ones before its last useful
    # candidate: selection sorts a handful of numbers per row instead of V.
    per_row = min(beam_size + min(1 + len(null_ids), beam_size - 1), vocabulary.size)
    state = [_ImageBeams() for _ in range(count)]
    # Live rows, grouped by image in image order.
    row_image = np.arange(count)
    row_logp = np.zeros(count, dtype=np.float64)
    row_tokens: list[tuple[int, ...]] = [() for _ in range(count)]
    words = np.full(count, vocabulary.start_id, dtype=np.int64)
    h, c = model.initial_state(count)
    for _ in range(max_length):
        log_probs, h_out, c_out = model.step(words, h, c, photo[row_image])
        top_values, row_top = top_k(log_probs, per_row)
        row_scores = row_logp[:, None] + top_values
        live = len(row_image)
        # One sort for the whole batch: by image, then best score, ties to the
        # lower (row, word) like argmax, so beam_size 1 is greedy exactly.
        order = np.lexsort(
            (
                row_top.ravel(),
                np.repeat(np.arange(live), per_row),
                -row_scores.ravel(),
                np.repeat(row_image, per_row),
            )
        )
        cand_rows = (order // per_row).tolist()
        cand_tokens = row_top.ravel()[order].tolist()
        cand_scores = row_scores.ravel()[order].tolist()
        images = row_image.tolist()
        parent_logp = row_logp.tolist()
        next_rows: list[int] = []
        next_words: list[int] = []
        next_logp: list[float] = []
        next_tokens: list[tuple[int, ...]] = []
        next_image: list[int] = []
        image = -1
        closed = True  # the current image needs no more candidates this step
        kept = 0
        for row, token, score in zip(cand_rows, cand_tokens, cand_scores, strict=True):
            if images[row] != image:
                image, closed, kept = images[row], False, 0
                beams = state[image]
            if closed:
                continue
            if token in null_ids:
                beams.stopped.append(Hypothesis(row_tokens[row], parent_logp[row], "no_word"))
            elif token == end_id:
                beams.ended.append(Hypothesis((*row_tokens[row], token), score, "end"))
            else:
                next_rows.append(row)
                next_words.append(token)
                next_logp.append(score)
                next_tokens.append((*row_tokens[row], token))
                next_image.append(image)
                kept += 1
            if len(beams.ended) + len(beams.stopped) >= beam_size:
                # Done: this image's beams end here, including those kept this step.
                closed = True
                if kept:
                    del next_rows[-kept:], next_words[-kept:], next_logp[-kept:]
                    del next_tokens[-kept:], next_image[-kept:]
            elif kept == beam_size:
                closed = True
        if not next_rows:
            row_tokens = []
            break
        row_image = np.array(next_image, dtype=np.int64)
        row_logp = np.array(next_logp, dtype=np.float64)
        row_tokens = next_tokens
        words = np.array(next_words, dtype=np.int64)
        h, c = h_out[next_rows], c_out[next_rows]
    cut: dict[int, list[Hypothesis]] = {}
    for row, tokens in enumerate(row_tokens):
        cut.setdefault(int(row_image[row]), []).append(
            Hypothesis(tokens, float(row_logp[row]), "max_length")
        )
    ranked: list[list[Hypothesis]] = []
    for image, beams in enumerate(state):

        def by_score(hyp: Hypothesis) -> float:
            return -hyp.score(length_penalty)

        unfinished = sorted(beams.stopped + cut.get(image, []), key=by_score)
        ranked.append((sorted(beams.ended, key=by_score) + unfinished)[:n_best])
    return ranked


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

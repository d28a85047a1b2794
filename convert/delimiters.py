"""Which words start and end a caption, decided from the tokenizer's own counts.

The tutorial wraps every training caption in a start and an end word, and its
caption loop starts from the one and stops on the other. Forks use different
pairs (`start`/`end`, `startseq`/`endseq`, `<start>`/`<end>`), and a tokenizer
trained on `startseq ... endseq` captions also knows `start` and `end` as
ordinary words ("at the start of a race"). Picking the first pair present
therefore conditions every caption on the wrong word. The pickle says which
pair the captions were wrapped in: the markers are in every caption
(`word_docs` against `document_count`), ordinary words in a handful. So a pair
is chosen only on that evidence (or on the user's explicit options), and
ambiguity is refused with a message that says how to decide.

Real projects also run loops the tokenizer cannot express: a start word the
tokenizer never saw (Keras's `texts_to_sequences` drops it, so the model's
first input is all padding) and no end word (captions run to `max_length`).
Both are supported, but only when asked for explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from capgen.convert.tokenizer import TokenizerState
from capgen.runtime.errors import TokenizerError
from capgen.runtime.vocabulary import describe_caption_words

# (start, end) pairs used by the tutorial and its forks.
DELIMITER_PAIRS: tuple[tuple[str, str], ...] = (
    ("start", "end"),
    ("startseq", "endseq"),
    ("<start>", "<end>"),
    ("<sos>", "<eos>"),
    ("sos", "eos"),
)
# A pair qualifies as the caption markers when both words are in at least this
# share of the captions. Markers are in 100% of them in every real tokenizer
# seen; ordinary words such as `start`/`end` in well under 1%.
MARKER_COVERAGE = 0.95
# Without any counts in the tokenizer, Keras's ids (assigned by descending
# frequency) are the only evidence: markers in every caption rank among the
# most frequent words.
MARKER_MAX_RANK = 10

Evidence = Literal["captions", "word_counts", "ids", "options"]


@dataclass(frozen=True)
class DelimiterOptions:
    """What the user said on the command line (all optional)."""

    start_token: str | None = None
    end_token: str | None = None
    start_outside_vocabulary: bool = False
    no_end_token: bool = False


@dataclass(frozen=True)
class Delimiters:
    """The chosen words, their ids (None: not in the vocabulary / no end word) and why."""

    start_token: str
    start_id: int | None
    end_token: str | None
    end_id: int | None
    chosen_by: Evidence
    documents: int | None = None  # the tokenizer's document_count
    start_documents: int | None = None  # captions holding the start word
    end_documents: int | None = None

    @classmethod
    def given(cls, vocabulary: list[str | None], start: str, end: str | None) -> Delimiters:
        """Words chosen by the caller (both in `vocabulary`, or end None), without evidence."""
        ids = _ids(vocabulary)
        return cls(start, ids[start], end, None if end is None else ids[end], "options")

    def describe(self) -> str:
        """`start 'startseq' (id 2, in 30,000 of 30,000 captions), end ...` for the summary."""
        return describe_caption_words(
            self.start_token, self.start_id, self.end_token, self.end_id, self.manifest_evidence()
        )

    def manifest_evidence(self) -> dict[str, Any]:
        """What the manifest records about how the words were chosen (`capgen info` shows it)."""
        return {
            "chosen_by": self.chosen_by,
            "documents": self.documents,
            "start_documents": self.start_documents,
            "end_documents": self.end_documents,
        }


@dataclass(frozen=True)
class _Coverage:
    """How often a word occurs, in whatever the tokenizer recorded."""

    how: Evidence
    documents: int | None

    def of(self, tokenizer: TokenizerState, word: str) -> float | None:
        """The share of captions holding `word`, or None where only ids are known."""
        if self.how == "captions" and self.documents:
            assert tokenizer.word_docs is not None
            return tokenizer.word_docs.get(word, 0) / self.documents
        if self.how == "word_counts" and self.documents:
            assert tokenizer.word_counts is not None
            return min(1.0, tokenizer.word_counts.get(word, 0) / self.documents)
        return None

    def qualifies(
        self, tokenizer: TokenizerState, words: tuple[str, str], ids: dict[str, int]
    ) -> bool:
        if self.how == "ids":
            ranks = sorted(ids.values())
            return all(word in ids and ranks.index(ids[word]) < MARKER_MAX_RANK for word in words)
        shares = [self.of(tokenizer, word) for word in words]
        return all(share is not None and share >= MARKER_COVERAGE for share in shares)

    def text(self, tokenizer: TokenizerState, word: str, ids: dict[str, int]) -> str:
        if word not in ids:
            return f"{word!r} not in the vocabulary"
        share = self.of(tokenizer, word)
        if share is None:
            return f"{word!r} id {ids[word]}"
        if self.how == "captions":
            assert tokenizer.word_docs is not None
            return (
                f"{word!r} in {tokenizer.word_docs.get(word, 0):,} of {self.documents:,} captions"
            )
        return f"{word!r} {share:.0%} by word count"


def _coverage(tokenizer: TokenizerState) -> _Coverage:
    documents = tokenizer.document_count if tokenizer.document_count else None
    if documents and tokenizer.word_docs:
        return _Coverage("captions", documents)
    if documents and tokenizer.word_counts:
        return _Coverage("word_counts", documents)
    return _Coverage("ids", None)


def _ids(vocabulary: list[str | None]) -> dict[str, int]:
    ids: dict[str, int] = {}
    for index, word in enumerate(vocabulary):
        if word is not None and word not in ids:
            ids[word] = index
    return ids


def choose_delimiters(
    tokenizer: TokenizerState, vocabulary: list[str | None], options: DelimiterOptions
) -> Delimiters:
    """The start and end words: from the options where given, else from the tokenizer's counts.

    Raises TokenizerError (one line, naming the candidates and the flags that
    decide) when the evidence does not single out one pair.
    """
    ids = _ids(vocabulary)
    coverage = _coverage(tokenizer)
    _check_options(options)
    end: str | None
    if options.start_token is None and options.end_token is None and not options.no_end_token:
        start, end = _pair_from_evidence(tokenizer, ids, coverage)
        chosen_by = coverage.how
    else:
        start, end = _pair_from_options(options, ids)
        chosen_by = "options"
    _check_words(start, end, ids, options)
    docs = tokenizer.word_docs if coverage.how == "captions" else None
    return Delimiters(
        start_token=start,
        start_id=ids.get(start),
        end_token=end,
        end_id=None if end is None else ids[end],
        chosen_by=chosen_by,
        documents=coverage.documents if docs is not None else None,
        start_documents=docs.get(start, 0) if docs is not None else None,
        end_documents=docs.get(end, 0) if docs is not None and end is not None else None,
    )


def _check_options(options: DelimiterOptions) -> None:
    if options.no_end_token and options.end_token is not None:
        raise TokenizerError("--end-token and --no-end-token contradict each other; pass one")
    if options.start_outside_vocabulary and options.start_token is None:
        raise TokenizerError(
            "--start-outside-vocabulary needs --start-token WORD: the word your caption loop starts from"
        )


def _pair_from_evidence(
    tokenizer: TokenizerState, ids: dict[str, int], coverage: _Coverage
) -> tuple[str, str]:
    present = [pair for pair in DELIMITER_PAIRS if pair[0] in ids and pair[1] in ids]
    qualified = [pair for pair in present if coverage.qualifies(tokenizer, pair, ids)]
    if len(qualified) == 1:
        return qualified[0]
    seen = [pair for pair in DELIMITER_PAIRS if pair[0] in ids or pair[1] in ids]
    listed = "; ".join(
        f"{coverage.text(tokenizer, start, ids)} and {coverage.text(tokenizer, end, ids)}"
        for start, end in (seen or DELIMITER_PAIRS[:2])
    )
    decide = (
        "pass --start-token WORD and --end-token WORD (add --start-outside-vocabulary or "
        "--no-end-token if your caption loop used words this tokenizer does not know)"
    )
    if qualified:
        raise TokenizerError(
            f"cannot tell which words start and end the captions: more than one pair appears in "
            f"nearly every caption ({listed}); {decide}"
        )
    raise TokenizerError(
        f"no start/end pair appears in nearly every caption, so the captions' start and end words "
        f"are unknown ({listed}); {decide}"
    )


def _pair_from_options(options: DelimiterOptions, ids: dict[str, int]) -> tuple[str, str | None]:
    """Both words from the options, or the given one completed by the pair it belongs to."""
    start, end = options.start_token, options.end_token
    if start is not None and (end is not None or options.no_end_token):
        return start, end
    for pair_start, pair_end in DELIMITER_PAIRS:
        if start == pair_start and pair_end in ids:
            return start, pair_end
        if end == pair_end and start is None and pair_start in ids:
            return pair_start, end
    missing = "--end-token WORD (or --no-end-token)" if end is None else "--start-token WORD"
    given = f"--start-token {start!r}" if start is not None else "--end-token"
    raise TokenizerError(
        f"{given} alone does not say which word is its partner; pass {missing} too"
    )


def _check_words(
    start: str, end: str | None, ids: dict[str, int], options: DelimiterOptions
) -> None:
    if start not in ids and not options.start_outside_vocabulary:
        raise TokenizerError(
            f"start token {start!r} is not in the tokenizer's vocabulary; pass --start-token with "
            "a word it has, or add --start-outside-vocabulary if your caption loop starts from it "
            "anyway (Keras drops unknown words, so the model's first input was all padding)"
        )
    if start in ids and options.start_outside_vocabulary:
        raise TokenizerError(
            f"--start-outside-vocabulary, but {start!r} is in the vocabulary (id {ids[start]}); "
            "drop the flag"
        )
    if end is not None and end not in ids:
        raise TokenizerError(
            f"end token {end!r} is not in the tokenizer's vocabulary, so the model can never "
            "predict it; pass --end-token with a word it has, or --no-end-token if your caption "
            "loop runs to max_length"
        )
    if start == end:
        raise TokenizerError(f"start and end token are both {start!r}; they must differ")

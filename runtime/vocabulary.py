"""Word ids <-> words, built once per model.

The tutorial's `word_for_id` scans the whole tokenizer for every generated
word; here the id -> word list is the vocabulary file itself, so a lookup is
one list index.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from capgen.runtime.errors import ModelError
from capgen.runtime.manifest import VocabularySpec

PADDING_ID = 0  # Keras's padding id: masked, so it leaves the LSTM state unchanged


@dataclass(frozen=True)
class Vocabulary:
    """The id -> word list and the caption's start and end.

    `start_id` None: the start word is not in the vocabulary, so the model's
    first input is padding (Keras drops unknown words); `end_id` None: no word
    ends a caption, it runs to max_length.
    """

    words: tuple[str | None, ...]
    start_id: int | None
    end_id: int | None
    start_token: str | None = None  # needed only when start_id is None

    @property
    def start_word(self) -> str:
        """The caption's start word (the tutorial's raw output begins with it)."""
        if self.start_token is not None:
            return self.start_token
        return (self.words[self.start_id] if self.start_id is not None else None) or ""

    @property
    def size(self) -> int:
        return len(self.words)

    @property
    def first_input_id(self) -> int:
        """The id fed at the first step: the start word's, or padding when it has none."""
        return PADDING_ID if self.start_id is None else self.start_id

    @cached_property
    def null_id_set(self) -> frozenset[int]:
        """Ids without a word: the tutorial stops decoding when it predicts one."""
        return frozenset(i for i, word in enumerate(self.words) if word is None)


def load_vocabulary(path: Path, spec: VocabularySpec) -> Vocabulary:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
        raise ModelError(f"{path}: cannot read the vocabulary ({exc})") from None
    if not isinstance(data, list) or not all(w is None or isinstance(w, str) for w in data):
        raise ModelError(f"{path}: vocabulary must be a JSON list of words or null")
    if len(data) != spec.size:
        raise ModelError(f"{path}: has {len(data)} entries, manifest says {spec.size}")
    for name, token_id, token in (
        ("start", spec.start_id, spec.start_token),
        ("end", spec.end_id, spec.end_token),
    ):
        if token_id is None:
            if token is not None and token in data:
                raise ModelError(
                    f"{path}: the manifest says the {name} word {token!r} is not in the "
                    f"vocabulary, but it is (id {data.index(token)})"
                )
            continue
        if not 0 < token_id < len(data) or data[token_id] != token:
            raise ModelError(f"{path}: {name} id {token_id} is not the word {token!r}")
    return Vocabulary(
        words=tuple(data), start_id=spec.start_id, end_id=spec.end_id, start_token=spec.start_token
    )


_CHOSEN_BY = {
    "captions": "the captions they appear in",
    "word_counts": "word counts (the tokenizer has no per-caption counts)",
    "ids": "word ids (the tokenizer has no counts)",
    "options": "--start-token/--end-token",
}


def describe_caption_words(
    start_token: str,
    start_id: int | None,
    end_token: str | None,
    end_id: int | None,
    evidence: Mapping[str, object] | None,
) -> str:
    """`start 'startseq' (id 2, in 30,000 of 30,000 captions), end …; chosen by …`.

    One wording for the conversion summary and `capgen info`, from the
    manifest's vocabulary fields and its `delimiters` evidence.
    """
    evidence = evidence or {}
    documents = evidence.get("documents")

    def word(token: str, token_id: int | None, docs: object) -> str:
        place = (
            "not in the vocabulary: the first input is all padding"
            if token_id is None
            else f"id {token_id}"
        )
        if isinstance(docs, int) and isinstance(documents, int) and documents:
            place += f", in {docs:,} of {documents:,} captions"
        return f"{token!r} ({place})"

    start = word(start_token, start_id, evidence.get("start_documents"))
    end = (
        "no end word (captions run to max_length)"
        if end_token is None
        else word(end_token, end_id, evidence.get("end_documents"))
    )
    chosen_by = evidence.get("chosen_by")
    chosen = f"; chosen by {_CHOSEN_BY.get(str(chosen_by), chosen_by)}" if chosen_by else ""
    return f"start {start}, end {end}{chosen}"

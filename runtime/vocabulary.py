"""Word ids <-> words, built once per model.

The tutorial's `word_for_id` scans the whole tokenizer for every generated
word; here the id -> word list is the vocabulary file itself, so a lookup is
one list index.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from capgen.runtime.errors import ModelError
from capgen.runtime.manifest import VocabularySpec


@dataclass(frozen=True)
class Vocabulary:
    words: tuple[str | None, ...]
    start_id: int
    end_id: int

    @property
    def size(self) -> int:
        return len(self.words)

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
        if not 0 <= token_id < len(data) or data[token_id] != token:
            raise ModelError(f"{path}: {name} id {token_id} is not the word {token!r}")
    return Vocabulary(words=tuple(data), start_id=spec.start_id, end_id=spec.end_id)

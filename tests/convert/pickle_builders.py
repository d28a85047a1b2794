"""Make tokenizer pickles, friendly and hostile, without Keras.

A friendly one references `Tokenizer` at a real Keras module path, as the
tutorial's files do; pickle needs that class importable while dumping, so a
throwaway module is registered for the duration of the dump only.
"""

from __future__ import annotations

import collections
import pickle
import sys
import types
from pathlib import Path
from typing import Any


def pickle_fake_tokenizer(
    state: dict[str, Any], module: str = "keras_preprocessing.text", protocol: int = 4
) -> bytes:
    """Bytes of a pickle that looks exactly like a Keras Tokenizer with `state` as its __dict__."""
    tokenizer_class = type("Tokenizer", (), {"__module__": module})
    parts = module.split(".")
    added = []
    for depth in range(1, len(parts) + 1):  # stub missing packages so no real Keras gets imported
        name = ".".join(parts[:depth])
        if name not in sys.modules:
            sys.modules[name] = types.ModuleType(name)
            added.append(name)
    previous = getattr(sys.modules[module], "Tokenizer", None)
    sys.modules[module].Tokenizer = tokenizer_class  # type: ignore[attr-defined]
    try:
        tokenizer = tokenizer_class()
        tokenizer.__dict__.update(state)
        return pickle.dumps(tokenizer, protocol=protocol)
    finally:
        if previous is not None:
            sys.modules[module].Tokenizer = previous  # type: ignore[attr-defined]
        for name in reversed(added):
            del sys.modules[name]


# The words the tutorial and its forks wrap every caption in.
MARKERS = frozenset({"start", "end", "startseq", "endseq", "<start>", "<end>"})


def tokenizer_state(
    words: list[str],
    num_words: int | None = None,
    documents: int = 3,
    markers: frozenset[str] = MARKERS,
) -> dict[str, Any]:
    """A Keras Tokenizer's attributes after fit_on_texts, for the given words in frequency order.

    `documents` captions were fitted; the `markers` among the words are in
    every one of them (as start/end are in the tutorial's), the rest in one.
    """
    word_index = {word: index for index, word in enumerate(words, start=1)}
    word_docs: collections.defaultdict[str, int] = collections.defaultdict(int)
    word_docs.update({word: documents if word in markers else 1 for word in words})
    return {
        "word_counts": collections.OrderedDict(
            (word, documents if word in markers else 1) for word in words
        ),
        "word_docs": word_docs,
        "filters": '!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n',
        "split": " ",
        "lower": True,
        "num_words": num_words,
        "document_count": documents,
        "char_level": False,
        "oov_token": None,
        "index_docs": collections.defaultdict(int),
        "word_index": word_index,
        "index_word": {index: word for word, index in word_index.items()},
    }


def write_fake_tokenizer(path: Path, words: list[str], **kwargs: Any) -> Path:
    path.write_bytes(pickle_fake_tokenizer(tokenizer_state(words), **kwargs))
    return path

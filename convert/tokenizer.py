"""Read a pickled Keras `Tokenizer` without Keras and without running its code.

`pickle.load` on a file from the internet runs whatever the file asks for, and
the tutorial's `tokenizer.p` also names the Keras module it was made with
(five different paths across Keras versions, none of which exists in Keras 3).
A restricted unpickler solves both: it admits only the Tokenizer class (mapped
to an inert stand-in that merely receives the pickled attributes) and the few
plain containers the real files use, and refuses every other global BEFORE it
is imported or called.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capgen.convert.source_files import check_source_file
from capgen.runtime.errors import TokenizerError, UnsafePickleError

TOKENIZER_MODULES = frozenset(
    {
        "keras_preprocessing.text",
        "keras.preprocessing.text",
        "keras.src.preprocessing.text",
        "keras.src.legacy.preprocessing.text",
        "tf_keras.src.preprocessing.text",
        "tf_keras.preprocessing.text",
        "tensorflow.keras.preprocessing.text",
        "tensorflow.python.keras.preprocessing.text",
    }
)

# word_counts is an OrderedDict; word_docs/index_docs are defaultdict(int).
_PLAIN_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): collections.defaultdict,
    ("builtins", "int"): int,
    ("builtins", "list"): list,
}


class _InertTokenizer:
    """Stands in for keras Tokenizer: pickle's BUILD step fills its __dict__, nothing else runs."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles use Python 2 names (__builtin__.long = int); map them as pickle does.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if name == "Tokenizer" and module in TOKENIZER_MODULES:
            return _InertTokenizer
        allowed = _PLAIN_GLOBALS.get((module, name))
        if allowed is not None:
            return allowed
        raise UnsafePickleError(
            f"refused to load the tokenizer: the pickle asks for {module}.{name}, "
            "which is not part of a Keras Tokenizer (nothing was executed)"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refused to load the tokenizer: it uses pickle persistent ids")


@dataclass(frozen=True)
class TokenizerState:
    """The parts of a Keras Tokenizer that decide which id means which word."""

    word_index: dict[str, int]
    num_words: int | None
    oov_token: str | None
    lower: bool
    filters: str
    split: str
    char_level: bool
    # Evidence for which words wrap every caption (see delimiters.py); None where
    # the file does not record them.
    document_count: int | None = None
    word_docs: dict[str, int] | None = None
    word_counts: dict[str, int] | None = None

    @property
    def index_word(self) -> dict[int, str]:
        return {index: word for word, index in self.word_index.items()}


def _loads_restricted(data: bytes) -> Any:
    return _RestrictedUnpickler(io.BytesIO(data)).load()


def _state_from(state: dict[str, Any], path: Path) -> TokenizerState:
    """Validate a Tokenizer's attributes (from a pickle's __dict__ or tokenizer.to_json())."""
    word_index = state.get("word_index")
    if not isinstance(word_index, dict) or not word_index:
        raise TokenizerError(f"{path}: the Tokenizer has no word_index (was it fitted on texts?)")
    clean: dict[str, int] = {}
    for word, index in word_index.items():
        if not isinstance(word, str) or isinstance(index, bool) or not isinstance(index, int):
            raise TokenizerError(f"{path}: word_index has a non word->id entry {word!r}: {index!r}")
        if index < 1:
            raise TokenizerError(
                f"{path}: word_index gives {word!r} the id {index}; ids start at 1"
            )
        clean[word] = index
    num_words = state.get("num_words")
    if num_words is not None and (isinstance(num_words, bool) or not isinstance(num_words, int)):
        raise TokenizerError(f"{path}: num_words is {num_words!r}, not an integer")
    oov_token = state.get("oov_token")
    document_count = state.get("document_count")
    if document_count is not None and not _is_count(document_count):
        raise TokenizerError(f"{path}: document_count is {document_count!r}, not a count")
    return TokenizerState(
        word_index=clean,
        num_words=num_words,
        oov_token=oov_token if isinstance(oov_token, str) else None,
        lower=bool(state.get("lower", True)),
        filters=str(state.get("filters", "")),
        split=str(state.get("split", " ")),
        char_level=bool(state.get("char_level", False)),
        document_count=document_count,
        word_docs=_word_counts(state, "word_docs", path),
        word_counts=_word_counts(state, "word_counts", path),
    )


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _word_counts(state: dict[str, Any], key: str, path: Path) -> dict[str, int] | None:
    """word -> count (`word_docs`, `word_counts`), as pickled or as to_json()'s JSON string."""
    counts = state.get(key)
    if counts is None:
        return None
    if isinstance(counts, str):
        try:
            counts = json.loads(counts)
        except (ValueError, RecursionError) as error:
            raise TokenizerError(f"{path}: {key} is not readable JSON ({error})") from None
    if not isinstance(counts, dict) or not all(
        isinstance(word, str) and _is_count(count) for word, count in counts.items()
    ):
        raise TokenizerError(f"{path}: {key} is not a mapping of words to counts")
    return dict(counts)


def _attributes_from_json(data: bytes, path: Path) -> dict[str, Any]:
    """`tokenizer.to_json()` output: its config holds word_index as a JSON string."""
    try:
        document = json.loads(data.decode("utf-8"))
        config = document["config"] if document.get("class_name") == "Tokenizer" else None
        if not isinstance(config, dict):
            raise TokenizerError(f"{path} is JSON but not a Keras tokenizer.to_json() document")
        word_index = config.get("word_index")
        return {
            **config,
            "word_index": json.loads(word_index) if isinstance(word_index, str) else word_index,
        }
    except (ValueError, AttributeError, KeyError, TypeError, RecursionError) as error:
        raise TokenizerError(f"{path} is not a readable tokenizer JSON ({error})") from error


def _attributes_from_pickle(data: bytes, path: Path) -> dict[str, Any]:
    try:
        obj = _loads_restricted(data)
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError) as error:
        raise TokenizerError(
            f"{path} is not a readable pickle (truncated or not a pickle: {error})"
        ) from error
    except Exception as error:  # malformed opcodes surface as assorted builtin errors
        raise TokenizerError(
            f"{path} is not a readable tokenizer pickle ({type(error).__name__}: {error})"
        ) from error
    if not isinstance(obj, _InertTokenizer):
        raise TokenizerError(f"{path} holds a pickled {type(obj).__name__}, not a Keras Tokenizer")
    return vars(obj)


def read_tokenizer(path: Path) -> TokenizerState:
    """Load a tutorial `tokenizer.p` (or a tokenizer.to_json() file) safely.

    Every failure is a one-line TokenizerError (UnsafePickleError for hostile pickles).
    """
    path = check_source_file(Path(path), "tokenizer", empty_error=TokenizerError)
    data = path.read_bytes()
    if data.lstrip()[:1] == b"{":
        return _state_from(_attributes_from_json(data, path), path)
    return _state_from(_attributes_from_pickle(data, path), path)


def build_vocabulary(tokenizer: TokenizerState, vocab_size: int) -> list[str | None]:
    """index -> word for ids 0..vocab_size-1 (None for padding id 0 and ids with no word).

    The tutorial sizes its output layer as len(word_index) + 1; a tokenizer
    with num_words only ever emits ids below num_words. Anything else means the
    tokenizer was not the one the model was trained with.
    """
    largest_id = max(tokenizer.word_index.values())
    fits_all_words = largest_id + 1 == vocab_size
    fits_num_words = (
        tokenizer.num_words is not None
        and tokenizer.num_words == vocab_size
        and (largest_id + 1 >= vocab_size)
    )
    if not (fits_all_words or fits_num_words):
        limit = f" (num_words={tokenizer.num_words})" if tokenizer.num_words is not None else ""
        raise TokenizerError(
            f"tokenizer does not match the model: it has {len(tokenizer.word_index):,} words "
            f"(ids up to {largest_id:,}, so a vocabulary of {largest_id + 1:,} counting padding id 0)"
            f"{limit}, but the model's output layer predicts {vocab_size:,} ids; "
            "use the tokenizer.p saved with this model"
        )
    vocabulary: list[str | None] = [None] * vocab_size
    for word, index in tokenizer.word_index.items():
        if index < vocab_size and vocabulary[index] is None:
            vocabulary[index] = word
    return vocabulary

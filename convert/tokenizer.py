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
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capgen.convert.pickle_nesting import MAX_TUPLE_DEPTH, deepest_tuple
from capgen.convert.source_files import check_source_file
from capgen.convert.untrusted import describe
from capgen.runtime.errors import InputError, TokenizerError, UnsafePickleError

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

# Ids are int32 in every Keras sequence; anything larger is not a word id.
MAX_WORD_ID = 2**31 - 1
# The tutorial's 7,576-word tokenizer.p is 300 kB (about 40 bytes a word with
# its counts); 64 MB holds over a million words, more than any caption model.
MAX_TOKENIZER_BYTES = 64 << 20

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


def loads_restricted(data: bytes) -> Any:
    """Unpickle with the allow-list only: no tokenizer file runs code while it is read."""
    return _RestrictedUnpickler(io.BytesIO(data)).load()


def _text_field(state: dict[str, Any], key: str, default: str, path: Path) -> str:
    value = state.get(key, default)
    if not isinstance(value, str):
        raise TokenizerError(f"{path}: the Tokenizer's {key} is {describe(value)}, not text")
    return value


def _flag_field(state: dict[str, Any], key: str, default: bool, path: Path) -> bool:
    value = state.get(key, default)
    if not isinstance(value, int) or value not in (0, 1):  # bools, and 0/1 from old files
        raise TokenizerError(f"{path}: the Tokenizer's {key} is {describe(value)}, not True/False")
    return bool(value)


def _word_entry(word: Any, index: Any, path: Path) -> tuple[str, int]:
    if not isinstance(word, str):
        raise TokenizerError(f"{path}: word_index has {describe(word)} where a word should be")
    if isinstance(index, bool) or not isinstance(index, int):
        raise TokenizerError(
            f"{path}: word_index gives {describe(word)} {describe(index)}, not an integer id"
        )
    if not 1 <= index <= MAX_WORD_ID:
        raise TokenizerError(
            f"{path}: word_index gives {describe(word)} the id {describe(index)}; "
            f"ids run from 1 to {MAX_WORD_ID:,}"
        )
    return word, index


def _state_from(state: dict[str, Any], path: Path) -> TokenizerState:
    """Validate a Tokenizer's attributes (from a pickle's __dict__ or tokenizer.to_json()).

    Every value is checked for its type and range before it is used or shown,
    and shown through `describe`: a hostile file's values (lists nested 200,000
    deep, 40,000-digit integers, bytes for text) make repr and f-strings raise.
    """
    word_index = state.get("word_index")
    if not isinstance(word_index, dict) or not word_index:
        raise TokenizerError(f"{path}: the Tokenizer has no word_index (was it fitted on texts?)")
    clean = dict(_word_entry(word, index, path) for word, index in word_index.items())
    num_words = state.get("num_words")
    if num_words is not None and (
        isinstance(num_words, bool) or not isinstance(num_words, int) or num_words < 0
    ):
        raise TokenizerError(
            f"{path}: num_words is {describe(num_words)}, not a non-negative integer"
        )
    if num_words is not None and num_words > MAX_WORD_ID + 1:
        raise TokenizerError(
            f"{path}: num_words is {describe(num_words)}, more than the {MAX_WORD_ID + 1:,} ids "
            "a tokenizer can have"
        )
    oov_token = state.get("oov_token")
    if oov_token is not None and not isinstance(oov_token, str):
        raise TokenizerError(f"{path}: oov_token is {describe(oov_token)}, not text")
    document_count = state.get("document_count")
    if document_count is not None and not _is_count(document_count):
        raise TokenizerError(f"{path}: document_count is {describe(document_count)}, not a count")
    return TokenizerState(
        word_index=clean,
        num_words=num_words,
        oov_token=oov_token,
        lower=_flag_field(state, "lower", True, path),
        filters=_text_field(state, "filters", "", path),
        split=_text_field(state, "split", " ", path),
        char_level=_flag_field(state, "char_level", False, path),
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
        # Before anything is built: hashing a deeply nested tuple crashes the
        # interpreter itself (see pickle_nesting), beyond any except clause.
        depth = deepest_tuple(data)
    except Exception as error:  # pickletools reports malformed opcodes as assorted errors
        raise TokenizerError(
            f"{path} is not a readable pickle ({type(error).__name__}: {error})"
        ) from error
    if depth > MAX_TUPLE_DEPTH:
        raise TokenizerError(
            f"{path} nests tuples more than {MAX_TUPLE_DEPTH} deep; no Keras Tokenizer does "
            "(refused before unpickling)"
        )
    try:
        obj = loads_restricted(data)
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
    path = check_source_file(
        Path(path), "tokenizer", empty_error=TokenizerError, max_bytes=MAX_TOKENIZER_BYTES
    )
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InputError(f"cannot read tokenizer {path}: {error.strerror or error}") from error
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
            _check_printable(word, index)
            vocabulary[index] = word
    return vocabulary


# Unicode categories no caption word may hold: control characters (\n, \t, ESC,
# U+0085), line/paragraph separators, and lone surrogates (not encodable as UTF-8).
_UNPRINTABLE_CATEGORIES = frozenset({"Cc", "Zl", "Zp", "Cs"})


def _check_printable(word: str, index: int) -> None:
    """Refuse a word that would split capgen's one-line outputs or drive the terminal.

    A vocabulary word is printed in `path<TAB>caption` lines, JSON Lines and
    one-line error reports; a tab, newline or escape sequence inside it would
    break those lines or inject terminal commands into every caption using it.
    """
    for character in word:
        if unicodedata.category(character) in _UNPRINTABLE_CATEGORIES:
            raise TokenizerError(
                f"the tokenizer's word {describe(word)} (id {index}) holds the control or "
                f"separator character U+{ord(character):04X}; capgen refuses words that would "
                "break its one-line outputs"
            )

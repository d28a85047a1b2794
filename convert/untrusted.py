"""Name a value read from an untrusted file in a one-line error, whatever its shape.

`repr` is the obvious way and the wrong one here: a pickle or JSON file can
hold a list nested 200,000 deep (repr raises RecursionError), an integer of
40,000 digits (repr raises ValueError past Python's 4,300-digit limit) or a
string of megabytes. `describe` never recurses, never converts a huge integer
to decimal and never returns more than a line.
"""

from __future__ import annotations

from typing import Any

_TEXT_LIMIT = 60
_INT_DIGITS_LIMIT = 30


def describe(value: Any) -> str:
    """A short, always-computable description of `value` for an error message."""
    if value is None or isinstance(value, (bool, float)):
        return repr(value)
    if isinstance(value, int):
        if value.bit_length() > _INT_DIGITS_LIMIT * 3:  # ~27+ digits: say how big, not what
            sign = "-" if value < 0 else ""
            return f"a {sign}{value.bit_length():,}-bit integer"
        return repr(value)
    if isinstance(value, (str, bytes, bytearray)):
        shown = repr(value[:_TEXT_LIMIT])
        return shown if len(value) <= _TEXT_LIMIT else f"{shown}... ({len(value):,} long)"
    if isinstance(value, (list, tuple, dict, set, frozenset)):
        return f"a {type(value).__name__} of {len(value):,} items"
    return f"a {type(value).__name__}"

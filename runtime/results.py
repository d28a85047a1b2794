"""The JSON Lines record format of `capgen caption --json` / `--output`, and how to recognise it.

`success_record` and `error_record` are the only shapes capgen writes, so
`is_capgen_record` can tell capgen's own file from another tool's JSON Lines
by every key and type (not just a `path` key): `--output` and `--resume`
touch a file only when every line of it has one of these shapes.
"""

from __future__ import annotations

import json
import math
from typing import Any

from capgen.runtime.decoding import DecodingResult

SUCCESS_KEYS = frozenset({"path", "caption", "log_probability", "finished", "tokens", "timings"})
ERROR_KEYS = frozenset({"path", "error"})
# to_line's first bytes for every record: a crash mid-write leaves a prefix of this.
LINE_START = b'{"path": "'


def success_record(path: str, result: DecodingResult, raw: bool = False) -> dict[str, Any]:
    record: dict[str, Any] = {
        "path": path,
        "caption": result.raw if raw else result.text,
        "log_probability": round(result.log_probability, 6),
        "finished": result.finished,
        "tokens": list(result.tokens),
        "timings": {name: round(seconds * 1000.0, 3) for name, seconds in result.timings.items()},
    }
    if result.alternatives:
        record["alternatives"] = [
            {
                "caption": alt.raw if raw else alt.text,
                "log_probability": round(alt.log_probability, 6),
            }
            for alt in result.alternatives
        ]
    return record


def error_record(path: str, message: str) -> dict[str, Any]:
    return {"path": path, "error": message}


def _json_safe(value: Any) -> Any:
    """`value` with every float that is inf or NaN replaced by None (JSON null).

    Python's json writes those as `NaN`/`Infinity`, which no JSON parser accepts;
    a score that is not a number is written as null instead.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def to_line(record: dict[str, Any]) -> str:
    # ensure_ascii keeps undecodable file names (lone surrogates) as \udcXX escapes,
    # which json.loads turns back into the very same str for --resume. allow_nan=False:
    # _json_safe has replaced every non-finite float, so strict JSON comes out or nothing.
    return json.dumps(_json_safe(record), ensure_ascii=True, allow_nan=False) + "\n"


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_score(value: object) -> bool:
    """A log-probability as to_line writes it: a number, or null where it was not one."""
    return value is None or _is_number(value)


def _is_alternative(value: object) -> bool:
    return (
        isinstance(value, dict)
        and set(value) == {"caption", "log_probability"}
        and isinstance(value["caption"], str)
        and _is_score(value["log_probability"])
    )


def is_success_record(record: object) -> bool:
    """True only for the exact shape `success_record` writes (keys and value types)."""
    if not isinstance(record, dict):
        return False
    keys = set(record)
    if keys != SUCCESS_KEYS and keys != SUCCESS_KEYS | {"alternatives"}:
        return False
    timings, tokens = record["timings"], record["tokens"]
    alternatives = record.get("alternatives", [])
    return (
        isinstance(record["path"], str)
        and isinstance(record["caption"], str)
        and _is_score(record["log_probability"])
        and isinstance(record["finished"], bool)
        and isinstance(tokens, list)
        and all(isinstance(t, int) and not isinstance(t, bool) for t in tokens)
        and isinstance(timings, dict)
        and all(isinstance(k, str) and _is_number(v) for k, v in timings.items())
        and isinstance(alternatives, list)
        and all(_is_alternative(alt) for alt in alternatives)
    )


def is_error_record(record: object) -> bool:
    """True only for `{"path": str, "error": str}`, what `error_record` writes."""
    return (
        isinstance(record, dict)
        and set(record) == ERROR_KEYS
        and isinstance(record["path"], str)
        and isinstance(record["error"], str)
    )


def parse_line(line: bytes) -> dict[str, Any] | None:
    """The record on one line if it is one capgen writes, else None (never raises).

    A `NaN` score (which capgen before issue 24 wrote) still reads as capgen's line.
    """
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
        return None
    if is_success_record(record) or is_error_record(record):
        return record
    return None

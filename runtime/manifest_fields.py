"""How manifest.json's fields are read: each check names the field it refuses.

The typed reading of one JSON value (present or not, null or not, the right
type, positive, under capgen's limit), used by runtime/manifest.py's parsers
for every section; a failure is a ModelError naming the field (`encoder.input.width`).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from capgen.runtime.errors import ModelError

# A file record's onnxruntime field: the versions that load the file.
_REQUIREMENT = re.compile(r">=\d+\.\d+(\.\d+)?")

# A dataclass field that is no key of its manifest.json section (a key read from a
# nested object, the folder, the unknown keys kept as they are).
NOT_A_KEY = {"key": False}


def required(data: dict[str, Any], key: str, kind: type, where: str, positive: bool = True) -> Any:
    """The field `where` + `key` of `data`, of type `kind` (an int must be positive if `positive`)."""
    if not isinstance(data, dict) or key not in data:
        raise ModelError(f"manifest.json: missing field {where}{key}")
    value = data[key]
    # bool is an int in Python; a manifest saying `true` for a size is still wrong.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ModelError(
            f"manifest.json: field {where}{key} should be {kind.__name__}, got {value!r}"
        )
    if kind is int and positive and data[key] <= 0:
        raise ModelError(f"manifest.json: field {where}{key} must be positive, got {value}")
    return value


def bounded(value: int, limit: int, where: str) -> int:
    if value > limit:
        raise ModelError(
            f"manifest.json: field {where} is {value}, more than capgen's limit of {limit}"
        )
    return value


def optional_str(data: dict[str, Any], key: str, where: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise ModelError(f"manifest.json: field {where}{key} should be str, got {value!r}")
    return value


def optional(data: dict[str, Any], key: str, kind: type, where: str) -> Any:
    """A descriptive field: absent is fine, present must have the right type."""
    if key not in data:
        return None
    return required(data, key, kind, where)


def nullable(data: dict[str, Any], key: str, kind: type, where: str, positive: bool = True) -> Any:
    """A field that must be present but may be null."""
    if isinstance(data, dict) and data.get(key, ...) is None:
        return None
    return required(data, key, kind, where, positive)


def requirement(record: dict[str, Any], where: str) -> str | None:
    """A file record's onnxruntime field: absent, or the versions that load it ('>=1.20')."""
    text = optional(record, "onnxruntime", str, where)
    if text is not None and _REQUIREMENT.fullmatch(text) is None:
        raise ModelError(f"manifest.json: {where}onnxruntime must look like '>=1.20', got {text!r}")
    return text


def unknown_keys(data: dict[str, Any], spec: type, *keys: str) -> dict[str, Any]:
    """The keys capgen does not know, in their order: kept so a rewrite loses nothing.

    The known keys are the fields of the section's dataclass `spec` (but those
    marked `NOT_A_KEY`) and `keys`, keys without a field of their own.
    """
    fields = dataclasses.fields(spec)
    known = {item.name for item in fields if item.metadata.get("key", True)} | {*keys}
    return {key: value for key, value in data.items() if key not in known}


def without_none(entries: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in entries.items() if value is not None}

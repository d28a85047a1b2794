"""The answers' shapes, for the OpenAPI description only (answers are built from runtime/results.py)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class Alternative(BaseModel):
    caption: str
    log_probability: float


class CaptionRecord(BaseModel):
    """One captioned image: the fields of `capgen caption --json`."""

    path: str
    caption: str
    log_probability: float
    finished: bool
    tokens: list[int]
    timings: dict[str, float]
    alternatives: list[Alternative] | None = None


class ErrorRecord(BaseModel):
    """One image of several that failed: `capgen caption --json`'s error line."""

    path: str
    error: str


class CaptionsAnswer(BaseModel):
    results: list[CaptionRecord | ErrorRecord]


class ErrorAnswer(BaseModel):
    code: str
    message: str


_INTEGER = {"type": "integer"}
OPTION_PARAMETERS: list[dict[str, Any]] = [
    {
        "name": "beam_size",
        "in": "query",
        "schema": _INTEGER,
        "description": "1 = greedy; default 3",
    },
    {"name": "max_length", "in": "query", "schema": _INTEGER, "description": "most words"},
    {
        "name": "n_best",
        "in": "query",
        "schema": _INTEGER,
        "description": "alternatives, <= beam_size",
    },
]
CAPTIONS_OPENAPI: dict[str, Any] = {
    "parameters": OPTION_PARAMETERS,
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "beam_size": _INTEGER,
                        "max_length": _INTEGER,
                        "n_best": _INTEGER,
                    },
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    },
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorAnswer, "description": description}
    for status, description in {
        400: "an HTTP request the server cannot parse (bad_http_request)",
        401: "missing or wrong API key (unauthorized)",
        413: "body over --max-body-mb (body_too_large)",
        415: "not multipart/form-data nor image/* (unsupported_media_type)",
        422: "bad_image, bad_option, unknown_option, no_image, too_many_images, bad_form",
        499: "the client left before the answer (client_closed_request)",
        500: "a fault in the server (internal_error)",
        503: "queue_full, busy, draining, not_ready, model_failed (with Retry-After)",
        504: "not done within --timeout-s (timeout)",
        507: "no disk space left to receive the upload (insufficient_storage)",
    }.items()
}

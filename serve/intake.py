"""Reading one caption request: its images and its options, within the limits.

Images come as multipart form files (any field name, in order) or as the
whole body with `Content-Type: image/*`. Nothing here fetches a URL: a
caption service that fetches URLs is an SSRF hole, so there is no such field.
Options (`beam_size`, `max_length`, `n_best`) come from the query string or
from form fields; their checks and messages are `DecodingOptions`' own, and
`bound_options` then holds them to what this model and server allow (a
caption is never longer than the model's own max_length, and beams are
bounded by `--max-beam`), because those two multiply the decoder's work.

A form starlette cannot parse (broken, nameless parts, too many files or
fields) is a 422 `bad_form`/`too_many_images` with the real limit, a client
that leaves mid-upload is a 499 (its fault, not the server's), and a disk
too full to spool an upload is a 507.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterable

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from capgen.runtime.decoding import DecodingOptions
from capgen.runtime.errors import InputError
from capgen.serve.errors import ApiError

OPTION_NAMES = ("beam_size", "max_length", "n_best")
RAW_BODY_NAME = "body"  # the `path` of the one image sent as the raw body
_INTEGER = re.compile(r"[+-]?[0-9]{1,12}")
MAX_FORM_FIELDS = 16
MAX_FIELD_BYTES = 1024

UNSUPPORTED = (
    "send images as multipart/form-data files or one image as the body with "
    "Content-Type image/* (URLs are not fetched)"
)


def parse_options(pairs: Iterable[tuple[str, str]]) -> DecodingOptions:
    """DecodingOptions from (name, text) pairs; unknown, repeated or bad values are 422s."""
    given: dict[str, str] = {}
    for name, text in pairs:
        if name not in OPTION_NAMES:
            raise ApiError(
                422,
                "unknown_option",
                f"unknown option {name!r} (options: {', '.join(OPTION_NAMES)})",
            )
        if name in given and given[name] != text:
            raise ApiError(422, "bad_option", f"{name} given twice ({given[name]!r} and {text!r})")
        given[name] = text
    values: dict[str, object] = {
        name: int(text) if _INTEGER.fullmatch(text.strip()) else text
        for name, text in given.items()
    }
    try:
        return DecodingOptions(**values)  # type: ignore[arg-type]
    except InputError as error:
        raise ApiError(422, "bad_option", str(error)) from None


def bound_options(
    options: DecodingOptions, model_max_length: int, max_beam: int
) -> DecodingOptions:
    """`options` if this model and server allow them, else 422 bad_option saying the bound."""
    if options.max_length is not None and options.max_length > model_max_length:
        raise ApiError(
            422,
            "bad_option",
            f"max_length must be an integer from 1 to {model_max_length} (this model's "
            f"max_length), got {options.max_length}",
        )
    if options.beam_size > max_beam:
        raise ApiError(
            422,
            "bad_option",
            f"beam_size must be an integer from 1 to {max_beam} (this server's --max-beam), "
            f"got {options.beam_size}",
        )
    return options


def client_left() -> ApiError:
    """499 (nginx's "client closed request"): the client went away; nothing is answered."""
    return ApiError(499, "client_closed_request", "the client disconnected before the answer")


async def read_images(
    request: Request, max_images: int
) -> tuple[list[tuple[str, bytes]], list[tuple[str, str]]]:
    """([(name, bytes)] in order, [(form field, text)]); the body limit is the middleware's."""
    try:
        return await _read_images(request, max_images)
    except ClientDisconnect:
        raise client_left() from None
    except OSError as error:  # spooling a large upload to a temporary file
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ApiError(
                507, "insufficient_storage", "no disk space left to receive the upload"
            ) from None
        raise


async def _read_images(
    request: Request, max_images: int
) -> tuple[list[tuple[str, bytes]], list[tuple[str, str]]]:
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media == "multipart/form-data":
        return await _read_form(request, max_images)
    if media.startswith("image/"):
        body = await request.body()
        if not body:
            raise ApiError(422, "no_image", "the request body is empty; send the image's bytes")
        return [(RAW_BODY_NAME, body)], []
    raise ApiError(
        415, "unsupported_media_type", f"Content-Type {media or 'missing'}: {UNSUPPORTED}"
    )


async def _read_form(
    request: Request, max_images: int
) -> tuple[list[tuple[str, bytes]], list[tuple[str, str]]]:
    try:
        form = await request.form(
            max_files=max_images, max_fields=MAX_FORM_FIELDS, max_part_size=MAX_FIELD_BYTES
        )
    except HTTPException as error:  # starlette's own class (FastAPI's is a subclass of it)
        detail = str(error.detail).rstrip(".")
        if detail.startswith("Too many files"):
            raise ApiError(
                422, "too_many_images", f"more than {max_images} images in one request"
            ) from None
        if detail.startswith("Too many fields"):
            detail = f"more than {MAX_FORM_FIELDS} form fields"
        raise ApiError(422, "bad_form", f"malformed multipart form: {detail}") from None
    images: list[tuple[str, bytes]] = []
    fields: list[tuple[str, str]] = []
    try:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                images.append((value.filename or f"file{len(images)}", await value.read()))
            else:
                fields.append((name, value))
    finally:
        await form.close()
    if not images:
        raise ApiError(422, "no_image", "the form holds no file; send each image as a file field")
    if len(images) > max_images:
        raise ApiError(422, "too_many_images", f"more than {max_images} images in one request")
    return images, fields

"""Every refusal of the service: an HTTP status, a stable `code` and a one-line `message`.

Clients branch on `code` (documented in README's "Serve" section), people
read `message`; the message of an image or option problem is the runtime's
own, the same reason `capgen caption` prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from capgen.runtime.errors import CapgenError, ImageError


def one_line(text: str, limit: int = 500) -> str:
    """Collapse whitespace (newlines included) so a message is always one line."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


@dataclass(eq=False)
class ApiError(Exception):
    """Raised anywhere in a request; the app turns it into the JSON error answer."""

    status: int
    code: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": one_line(self.message)}


def from_capgen_error(error: CapgenError) -> ApiError:
    """A bad image -> 422 bad_image; a bad option -> 422 bad_option (the runtime's words)."""
    if isinstance(error, ImageError):
        return ApiError(422, "bad_image", str(error))
    return ApiError(422, "bad_option", str(error))


def service_unavailable(code: str, message: str, retry_after_s: int = 1) -> ApiError:
    return ApiError(503, code, message, {"Retry-After": str(retry_after_s)})

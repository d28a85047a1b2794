"""One headless Chromium for the browser tests: capgen.benchmarks.chromium's, or a skip saying why.

Shared by tests/serve/test_serve_page.py and tests/web/test_web_site.py; the
session itself (chromedriver's WebDriver HTTP API driven with httpx) is the
bench's web section's (benchmarks/chromium.py), one copy for both.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from capgen.benchmarks import chromium
from capgen.benchmarks.static_site import free_port

__all__ = ["chromium_session", "free_port"]


@contextmanager
def chromium_session(profile: Path, wait_s: float) -> Iterator[tuple[Any, str]]:
    """(a client of chromedriver, the session path) for one headless Chromium using `profile`."""
    reason = chromium.missing()
    if reason is not None:
        pytest.skip(reason)
    with chromium.chromium_session(profile, wait_s) as session:
        yield session

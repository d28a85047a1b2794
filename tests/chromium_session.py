"""One headless Chromium for the browser tests: capgen.benchmarks.chromium's, or a skip saying why.

Shared by tests/serve/test_serve_page.py and tests/web/test_web_site.py; the
session itself (chromedriver's WebDriver HTTP API driven with httpx) is the
bench's web section's (benchmarks/chromium.py), one copy for both.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from capgen.benchmarks import chromium


def chromium_session(profile: Path, wait_s: float) -> AbstractContextManager[tuple[Any, str]]:
    """(a client of chromedriver, the session path) for one headless Chromium using `profile`."""
    reason = chromium.missing()
    if reason is not None:
        pytest.skip(reason)
    return chromium.chromium_session(profile, wait_s)

"""Assertions shared by the hostile-user tests (a module of its own: `conftest` names clash across folders)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

# conftest's `run` fixture: capgen ARGS... -> the finished process
Run = Callable[..., subprocess.CompletedProcess[bytes]]


def assert_one_line_error(
    done: subprocess.CompletedProcess[bytes], exit_code: int, *fragments: str
) -> str:
    """The whole of stderr is one `capgen: error: …` line holding each fragment; returns it."""
    stderr = done.stderr.decode("utf-8", "replace")
    assert b"Traceback" not in done.stderr, stderr
    assert done.returncode == exit_code, (done.returncode, stderr)
    assert stderr.startswith("capgen: error: ") and stderr.count("\n") == 1, stderr
    for fragment in fragments:
        assert fragment in stderr, (fragment, stderr)
    return stderr

"""`make test`'s `--dist loadgroup` really keeps each xdist_group on one worker.

tests/conftest.py groups the tests that share an expensive session fixture (a
venv, the Ray cluster, Keras exports) so it is built once; pytest 9.2.0 with
pytest-xdist 3.8.0 silently dropped every group (xdist writes the group into
`item._nodeid`, which pytest 9.2 no longer reads: pytest-dev/pytest-xdist#1386),
so both workers built each of them. This runs a small suite the way `make test`
runs ours and checks where the grouped tests ran.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

GROUPED = """
import pytest

@pytest.mark.xdist_group("shared")
@pytest.mark.parametrize("i", range(4))
def test_grouped(i):
    pass
"""
SPREAD = """
import pytest

@pytest.mark.parametrize("i", range(16))
def test_spread(i):
    pass
"""


def test_grouped_tests_run_on_one_worker(tmp_path: Path) -> None:
    (tmp_path / "test_a.py").write_text(GROUPED)
    (tmp_path / "test_b.py").write_text(GROUPED)
    (tmp_path / "test_c.py").write_text(SPREAD)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-v",
         "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ran = re.findall(r"\[(gw\d)\] .*?PASSED (\S+)", done.stdout)
    assert len(ran) == 24, done.stdout[-3000:]
    grouped = [(worker, test) for worker, test in ran if "test_grouped" in test]
    assert len(grouped) == 8
    assert all(test.endswith("@shared") for _, test in grouped), grouped
    assert len({worker for worker, _ in grouped}) == 1, grouped
    assert {worker for worker, _ in ran} == {"gw0", "gw1"}, ran  # both workers ran tests

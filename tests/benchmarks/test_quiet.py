"""The quietness probe sees another process's CPU use, and a noisy section is re-run (issue 14).

No timing is asserted: a busy child process of the test is NOT "other", a busy
process the test starts outside its own tree is, and the retry logic is
checked with a section whose noise the test controls.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

pytest.importorskip("psutil", reason="psutil is in the bench and dev extras")

from capgen.benchmarks import quiet

# Spins for a fixed amount of CPU time, however busy the machine is.
SPIN = "import time\nwhile time.process_time() < 3: pass\n"


def test_a_busy_process_outside_our_tree_counts_as_other_load() -> None:
    # setsid + double fork: the spinner is re-parented away from us, so it is "other".
    spinner = subprocess.Popen(
        ["setsid", "sh", "-c", f'{sys.executable} -c "{SPIN}" & exit 0'],
    )
    spinner.wait()
    time.sleep(0.3)
    load = quiet.OtherLoad()
    time.sleep(1.5)
    assert load.cores() > 0.3


def test_our_own_children_count_as_ours() -> None:
    """What this process's children spend is subtracted, so a benchmark arm is not "noise"."""
    before = quiet._own_seconds()
    subprocess.run([sys.executable, "-c", SPIN.replace("3", "1")], check=True)
    assert quiet._own_seconds() - before >= 0.9


def test_a_noisy_section_is_rerun_and_the_quietest_attempt_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    readings = iter([0.9, 0.05])  # first attempt noisy, second quiet
    monkeypatch.setattr(quiet, "wait_until_quiet", lambda *args, **kwargs: (True, 0.0))
    monkeypatch.setattr(quiet.OtherLoad, "cores", lambda self: next(readings))
    calls: list[int] = []
    messages: list[str] = []
    result, how = quiet.measured_quietly(
        lambda: calls.append(1) or len(calls), messages.append, "section", 0.0, retries=1
    )
    assert (result, how.attempts, how.quiet, how.other_cores) == (2, 2, True, 0.05)
    assert "running it again" in messages[0]


def test_a_section_that_stays_noisy_is_reported_noisy(monkeypatch: pytest.MonkeyPatch) -> None:
    readings = iter([0.9, 0.7])
    monkeypatch.setattr(quiet, "wait_until_quiet", lambda *args, **kwargs: (False, 5.0))
    monkeypatch.setattr(quiet.OtherLoad, "cores", lambda self: next(readings))
    messages: list[str] = []
    _, how = quiet.measured_quietly(lambda: "x", messages.append, "s", 5.0, retries=1)
    assert (how.quiet, how.other_cores, how.attempts, how.waited_seconds) == (False, 0.7, 2, 10.0)
    assert "reported as noisy" in messages[-1]

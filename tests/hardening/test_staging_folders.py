"""Issue 24, finding 6: a staging folder is pruned only when no live writer holds its lock.

A second conversion into the same parent from another pid namespace (same
host name, same boot id) read the first one's pid as dead and deleted its
live staging folder. The writer now holds a lock on its marker for its whole
life, and a pruner deletes only what it can lock.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from staging_helpers import killed_staging

from capgen.runtime.staging import MARKER, prune_stale

_WRITER = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "from capgen.runtime.staging import create_staging\n"
    "staging = create_staging(Path(sys.argv[1]))\n"
    "print(staging, flush=True)\n"
    "sys.stdin.read()\n"  # alive until the test closes our stdin
)


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(done.stdout)


def test_a_live_writer_from_another_pid_namespace_keeps_its_staging(tmp_path: Path) -> None:
    out_dir = tmp_path / "model"
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(out_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None
        staging = Path(writer.stdout.readline().strip())
        (staging / "encoder.onnx").write_bytes(b"x" * 1024)
        marker = staging / MARKER
        owner = json.loads(marker.read_text())
        # What the writer's marker says when it runs in another pid namespace: a pid
        # that is nobody here (same host name and boot id). Rewritten in place.
        owner["pid"] = _dead_pid()
        with marker.open("r+", encoding="utf-8") as handle:
            handle.truncate(0)
            handle.write(json.dumps(owner))
        assert prune_stale(out_dir) == []
        assert (staging / "encoder.onnx").exists()
    finally:
        assert writer.stdin is not None
        writer.stdin.close()
        writer.wait(timeout=60)
    # Once the writer is gone (its lock with it), the leftover is pruned.
    assert prune_stale(out_dir) == [staging]
    assert not staging.exists()


def test_killed_writers_leftovers_still_go(tmp_path: Path) -> None:
    out_dir = tmp_path / "model"
    stale = killed_staging(out_dir)
    assert prune_stale(out_dir) == [stale]

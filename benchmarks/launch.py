"""Run one command and report its wall time and its own peak RSS, as JSON on stdout.

Why a separate launcher: on Linux a child's peak-RSS record survives fork
and exec, so a process started by the benchmark (which itself holds large
models) would report the benchmark's own peak. This launcher is a fresh,
small interpreter; what it starts inherits only its few megabytes.

Run: python benchmarks/launch.py STDOUT_FILE STDERR_FILE -- COMMAND...
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def main() -> None:
    stdout_path, stderr_path, separator, *command = sys.argv[1:]
    if separator != "--" or not command:
        raise SystemExit("usage: launch.py STDOUT_FILE STDERR_FILE -- COMMAND...")
    with open(stdout_path, "w") as out, open(stderr_path, "a") as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
    # ru_maxrss is in KiB on Linux.
    report = {
        "wall_seconds": wall,
        "peak_rss_kib": usage.ru_maxrss,
        "exit_code": os.waitstatus_to_exitcode(status),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()

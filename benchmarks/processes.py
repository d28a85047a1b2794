"""Child processes the benchmark measures: one-shot cold starts and long-lived workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capgen.benchmarks.fixtures import BenchModel

LAUNCHER = Path(__file__).with_name("launch.py")


def in_turn(names: Sequence[str], turn: int) -> list[str]:
    """The arms' order on turn `turn`: who goes first rotates, so none is always first."""
    shift = turn % max(len(names), 1)
    return [*names[shift:], *names[:shift]]


@dataclass(frozen=True)
class ColdRun:
    wall_seconds: float
    peak_rss_mb: float
    stdout: str


def run_cold(
    command: list[str], log: Path, environment: Mapping[str, str] | None = None
) -> ColdRun:
    """Run a fresh process to completion (through launch.py); wall time and its own peak RSS.

    `environment`: the whole environment to run it in (default: this one's), e.g. a
    scratch CAPGEN_HOME holding a decision tuned in the same run.
    """
    environment = {**(environment or os.environ), "TF_CPP_MIN_LOG_LEVEL": "2"}
    out_path = log.with_suffix(".out")
    launcher = [sys.executable, str(LAUNCHER), str(out_path), str(log), "--", *command]
    finished = subprocess.run(
        launcher, capture_output=True, text=True, env=environment, check=False
    )
    if finished.returncode != 0:
        raise RuntimeError(f"launcher failed: {finished.stderr.strip()[-500:]}")
    report = json.loads(finished.stdout)
    if report["exit_code"] != 0:
        tail = "\n".join(log.read_text().strip().splitlines()[-5:])
        raise RuntimeError(
            f"{' '.join(command[:3])} ... exited with {report['exit_code']}:\n{tail}"
        )
    return ColdRun(report["wall_seconds"], report["peak_rss_kib"] / 1024.0, out_path.read_text())


class JsonLinesProcess:
    """A long-lived child that answers each JSON request line with one JSON line, in turn.

    Its stderr goes to `log`; `environment` is the whole environment it runs in. The
    first line it writes (its readiness report) is `ready`.
    """

    def __init__(self, command: list[str], log: Path, environment: Mapping[str, str]) -> None:
        self.log_path = log
        self._log = log.open("a")
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=dict(environment),
        )
        self.ready = self._answer()

    def _died(self) -> str:
        """The error when it exits instead of answering (after it has exited)."""
        return f"exited with {self._process.returncode}; see {self.log_path}"

    def _answer(self) -> dict[str, Any]:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            self._process.wait()
            raise RuntimeError(self._died())
        return dict(json.loads(line))

    def send(self, request: Mapping[str, Any]) -> dict[str, Any]:
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps(request) + "\n")
        self._process.stdin.flush()
        return self._answer()

    def close(self) -> None:
        if self._process.poll() is None:
            try:
                assert self._process.stdin is not None
                self._process.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self._process.stdin.close()
                self._process.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self._process.kill()
                self._process.wait()
        self._log.close()


class Worker(JsonLinesProcess):
    """A `capgen.benchmarks.worker` process; requests are answered one at a time."""

    def __init__(
        self,
        arm: str,
        model: BenchModel,
        log: Path,
        weights: Path | None = None,
        int8: bool = False,
        fast_decoder: bool = False,
        provider: str | None = None,
        python: Path | None = None,
        precision: str | None = None,
        environment: dict[str, str] | None = None,
    ) -> None:
        """`python`: the interpreter to run it with (another venv's); this one by default.

        `precision`: capgen's `--precision` mode; `environment`: extra variables (a scratch
        CAPGEN_HOME holding a tuned decision for `auto`)."""
        command = [
            str(python or sys.executable),
            "-m",
            "capgen.benchmarks.worker",
            arm,
            json.dumps(model.to_json()),
        ]
        if weights is not None:
            command += ["--weights", str(weights)]
        if int8:
            command.append("--int8")
        if fast_decoder:
            command.append("--fast-decoder")
        if provider is not None:
            command += ["--provider", provider]
        if precision is not None:
            command += ["--precision", precision]
        suffix = f"{'-int8' if int8 else ''}{'-fast' if fast_decoder else ''}"
        suffix += f"-{precision}" if precision else ""
        self.name = f"{arm}{suffix}{'-' + provider if provider else ''}:{model.name}"
        environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(environment or {})}
        super().__init__(command, log, environment)

    def _died(self) -> str:
        return f"worker {self.name} died (exit {self._process.returncode}); see {self._log.name}"

    def request(self, op: str, **arguments: Any) -> dict[str, Any]:
        return self.send({"op": op, **arguments})

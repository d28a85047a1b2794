"""Where each outcome of `capgen caption` goes: stdout, stderr, --output, --annotate, the progress bar.

One object owns these sinks so the command itself reads as setup + one loop,
and every outcome, good or bad, is written the moment it is known.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capgen.runtime import results
from capgen.runtime.console import printable, say
from capgen.runtime.decoding import DecodingResult
from capgen.runtime.errors import CapgenError, InputError


class StdoutUnwritable(InputError):
    """Standard output refused a caption (a full disk behind `> file`); a closed pipe is not this."""


@dataclass
class CaptionSinks:
    json_lines: bool
    raw: bool
    show_path: bool
    writer: results.JsonlWriter | None = None
    annotate_dir: Path | None = None
    progress: Any = None  # a tqdm bar when stderr is a terminal
    failures: int = 0
    _annotated: set[Path] = field(default_factory=set)

    def _stdout(self, line: str) -> None:
        if self.progress is not None:
            self.progress.write(line, file=sys.stdout)  # keeps the bar below the output
        else:
            try:
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
            except BrokenPipeError:
                raise
            except OSError as exc:
                raise StdoutUnwritable(
                    f"cannot write to standard output ({exc.strerror or exc}); stopped"
                ) from None

    def failed(self, path: str, message: str) -> None:
        self.failures += 1
        say(f"capgen: {printable(path)}: {message}")

    def handle(self, path: str, outcome: DecodingResult | CapgenError) -> None:
        if isinstance(outcome, CapgenError):
            self.failed(path, str(outcome))
            record = results.error_record(path, str(outcome))
            if self.json_lines:
                self._stdout(results.to_line(record).rstrip("\n"))
        else:
            record = results.success_record(path, outcome, raw=self.raw)
            if self.json_lines:
                self._stdout(results.to_line(record).rstrip("\n"))
            else:
                self._stdout(
                    f"{printable(path)}\t{record['caption']}"
                    if self.show_path
                    else record["caption"]
                )
            if self.annotate_dir is not None:
                self._annotate(path, record["caption"])
        if self.writer is not None:
            self.writer.write(record)
        if self.progress is not None:
            self.progress.update(1)

    def _annotate(self, path: str, caption: str) -> None:
        from capgen.runtime.annotate import annotated_path, save_annotated

        assert self.annotate_dir is not None
        try:
            save_annotated(path, caption, annotated_path(self.annotate_dir, path, self._annotated))
        except CapgenError as err:  # the caption stands; only its picture failed
            self.failed(path, f"annotate: {err}")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        if self.writer is not None:
            self.writer.close()

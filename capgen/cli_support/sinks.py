"""Where each outcome of `capgen caption` goes: stdout, stderr, --output/--output-dir, --annotate, the progress bar.

One object owns these sinks so the command itself reads as setup + one loop,
and every outcome, good or bad, is written the moment it is known.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from capgen.cli_support.console import detail, escape_controls, printable, say, write_stdout
from capgen.cli_support.exit_codes import ExitCode, exit_code_for
from capgen.cli_support.output_formats import CaptionFileRefused, OutputWriter
from capgen.cli_support.outputs import AnnotateFolder
from capgen.runtime import results
from capgen.runtime.decoding import DecodingResult
from capgen.runtime.errors import CapgenError

# Plain output's mark on a caption that ran into max_length before its end word: it
# would otherwise look finished (--json says it as "finished": false).
CUT_OFF_MARK = " [max length reached]"


def cut_off_mark(result: DecodingResult, raw: bool) -> str:
    """CUT_OFF_MARK for a caption cut at max_length; "" otherwise and for --raw (the tutorial's string)."""
    if raw or result.finished or result.stop_reason != "max_length":
        return ""
    return CUT_OFF_MARK


def _timing_line(path: str, timings_ms: dict[str, float]) -> str:
    """-v's line per image: where its time went, in milliseconds."""
    stages = ", ".join(f"{name} {ms:.1f} ms" for name, ms in timings_ms.items())
    return f"capgen: {printable(path)}: {stages}"


@dataclass
class CaptionSinks:
    json_lines: bool
    raw: bool
    show_path: bool
    writer: OutputWriter | None = None  # --output (any --format) or --output-dir
    annotate: AnnotateFolder | None = None
    progress: Any = None  # a tqdm bar when stderr is a terminal
    failure_codes: list[int] = field(default_factory=list)
    captioned: int = 0  # images with a caption (-v's summary line counts these, not attempts)

    def _stdout(self, line: str) -> None:
        if self.progress is not None:
            self.progress.write(line, file=sys.stdout)  # keeps the bar below the output
        else:
            write_stdout(line + "\n", then="; stopped")

    def failed(self, path: str, error: CapgenError, prefix: str = "") -> None:
        self.failure_codes.append(exit_code_for(error))
        say(f"capgen: {printable(path)}: {prefix}{error}")

    def exit_code(self, single_image: bool) -> int:
        """0; else the failure's own code for one image given alone, 1 when some of several failed."""
        if not self.failure_codes:
            return ExitCode.OK
        return self.failure_codes[0] if single_image else ExitCode.SOME_FAILED

    def handle(self, path: str, outcome: DecodingResult | CapgenError, picture: Any = None) -> None:
        """Report one image's outcome everywhere; `picture`: its decoded image, for --annotate."""
        if isinstance(outcome, CapgenError):
            self.failed(path, outcome)
            record = results.error_record(path, str(outcome))
            if self.json_lines:
                self._stdout(results.to_line(record).rstrip("\n"))
        else:
            self.captioned += 1
            record = results.success_record(path, outcome, raw=self.raw)
            if self.json_lines:
                self._stdout(results.to_line(record).rstrip("\n"))
            else:
                caption = escape_controls(record["caption"]) + cut_off_mark(outcome, self.raw)
                self._stdout(f"{printable(path)}\t{caption}" if self.show_path else caption)
            if self.annotate is not None:
                self._annotate(path, record["caption"], picture)
            detail(_timing_line(path, record["timings"]))
        if self.writer is not None:
            try:
                self.writer.write(record)
            except CaptionFileRefused as err:
                self.failed(path, err)  # one image's .txt: the caption stands, the batch goes on
        if self.progress is not None:
            self.progress.update(1)

    def _annotate(self, path: str, caption: str, picture: Any) -> None:
        from capgen.cli_support.annotate import annotate, for_annotation

        assert self.annotate is not None
        try:
            if picture is None:
                from capgen.runtime.preprocess import load_image

                picture = for_annotation(load_image(path))
            self.annotate.save(path, annotate(picture, caption))
        except CapgenError as err:  # the caption stands; only its picture failed
            self.failed(path, err, prefix="annotate: ")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        if self.writer is not None:
            self.writer.close()

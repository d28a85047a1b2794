"""One output row per image: the fields of `capgen caption --json`, as fixed columns.

A row is built from the very record `capgen caption --json` writes
(runtime/results.py), with the fields a record lacks set to None, so
successes and errors share one Arrow schema (a block of only errors must
not get other column types than a block of captions, or Parquet writers
refuse the dataset). `record_from_row` turns a row back into that exact
record, which is what `--output`/`--resume` read and write.
"""

from __future__ import annotations

from typing import Any

from capgen.runtime import results
from capgen.runtime.decoding import DecodingResult
from capgen.runtime.errors import CapgenError

TIMING_NAMES = ("preprocess", "encode", "decode", "total")
COLUMNS = ("path", "caption", "log_probability", "finished", "tokens", "timings", "error")


def arrow_schema() -> Any:
    """The pyarrow schema of every output block (pyarrow comes with ray[data])."""
    import pyarrow as pa

    timings = pa.struct([(name, pa.float64()) for name in TIMING_NAMES])
    return pa.schema(
        [
            ("path", pa.string()),
            ("caption", pa.string()),
            ("log_probability", pa.float64()),
            ("finished", pa.bool_()),
            ("tokens", pa.list_(pa.int64())),
            ("timings", timings),
            ("error", pa.string()),
        ]
    )


def row_from_outcome(path: str | None, outcome: DecodingResult | CapgenError) -> dict[str, Any]:
    """The row for one image: `capgen caption --json`'s record, every column present."""
    name = path if path is not None else ""
    if isinstance(outcome, CapgenError):
        record = results.error_record(name, str(outcome))
    else:
        record = results.success_record(name, outcome)
        record.pop("alternatives", None)  # n_best is 1 on Ray: one caption per row
    row = dict.fromkeys(COLUMNS)
    row.update(record)
    return row


def record_from_row(row: dict[str, Any]) -> dict[str, Any]:
    """The exact `capgen caption --json` record a row came from (for JSON Lines and --resume)."""
    if row.get("error") is not None:
        return results.error_record(row["path"], row["error"])
    record = {name: row[name] for name in COLUMNS if name != "error"}
    record["tokens"] = [int(token) for token in record["tokens"]]
    record["finished"] = bool(record["finished"])
    record["log_probability"] = float(record["log_probability"])
    record["timings"] = {name: float(value) for name, value in dict(record["timings"]).items()}
    return record

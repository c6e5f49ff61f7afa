"""Per-edit records on disk: append-only JSONL, one durable line per record.

Each record is written as one line and flushed and fsynced before `append` returns, so a run
killed at any moment leaves every finished record intact and at most one torn line at the end.
Resuming drops that torn tail and appends after the last complete record; nothing already
written is ever rewritten. Every line is strict JSON: a non-finite number is written as null.

A record (written by `sake.runner`) holds the run's identity (`method`, `model`,
`fingerprint`), the protocol and position (`case_id`; sequential: `sequence`, `step`,
`edit_index`, `gap`), the edit (`attribute`, `y_o`, `y_e`), what the edit cost and reported
(`edit`: `steps`, `final_loss`, `seconds`, `extras` such as MEMIT's `regularizer/layer<i>`)
and one entry per probe (`probes`: inputs, pre- and post-edit outputs, choices, verdicts, and
on locality probes the `specificity` scores of `sake.evaluation.specificity`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

RECORDS_FILE = "records.jsonl"

Record = dict[str, Any]


class RecordWriter:
    """Appends records to a JSONL file; `existing` holds what a resumed file already had."""

    def __init__(self, path: Path, *, resume: bool = False) -> None:
        self.path = Path(path)
        has_records = self.path.is_file() and self.path.stat().st_size > 0
        if has_records and not resume:
            raise FileExistsError(
                f"{self.path} already holds records; pass resume=true to continue that run, "
                "or start a new run directory"
            )
        self.existing: list[Record] = []
        if has_records:
            self.existing, end = scan_records(self.path)
            os.truncate(self.path, end)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, record: Mapping[str, Any]) -> Record:
        """Write one record durably; return it as written (and as a resumed run reads it)."""
        written = strict_json(record)
        line = json.dumps(written, ensure_ascii=False, allow_nan=False)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        return written


def strict_json(value: Any) -> Any:
    """`value` with every NaN or infinity replaced by None, so that each line is strict JSON
    (which has no such numbers) and aggregation skips them as values that do not apply."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    return value


def scan_records(path: Path) -> tuple[list[Record], int]:
    """Complete records of a JSONL file and the byte offset just after the last of them.

    A final line without its newline is a write cut short and is left out; a malformed line
    anywhere else means the file was edited or corrupted, which is an error.
    """
    records: list[Record] = []
    end = 0
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.endswith(b"\n"):
                break
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: line {number} is not a JSON record: {error}") from None
            end += len(line)
    return records, end


def read_records(path: Path) -> list[Record]:
    """The complete records of a file written by `RecordWriter`."""
    return scan_records(Path(path))[0]


def record_key(record: Mapping[str, Any]) -> Hashable:
    """What identifies a record within a run: the case (single) or (sequence, step, edit)."""
    if record["protocol"] == "single":
        return ("single", record["case_id"])
    return ("sequential", record["sequence"], record["step"], record["edit_index"])

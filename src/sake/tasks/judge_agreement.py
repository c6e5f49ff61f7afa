"""`python evaluate.py task=judge_agreement a=<run> b=<run|labels>`: how far two judges agree.

`a` is a run directory (or its `records.jsonl`): an edit run, or a re-scored copy of one
(`<run>/rescore-<judge>/`). `b` is another such run over the same outputs, or a file of
human labels. Every probe of every record is one item; its label is the verdict behind the
probe's score (correct for reliability, generality and portability, consistent for the two
localities). The task reports percent agreement and Cohen's κ over all items and per metric,
writes `agreement.md`, `agreement.json`, `disagreements.jsonl` (the items the two sides label
differently, with both outputs) and `annotation_sheet.csv` (every item of `a` with an empty
`label` column for human annotators), and logs the table to the tracker.

Item ids are `<case id>/<probe name>` (`<case id>@step<k>/<probe name>` in sequential runs;
a second probe of the same name in a record gets `#2`, and so on), e.g.
`test/Animal/0/generality/type1`. Human labels: a CSV with `id` and `label` columns (the
annotation sheet, filled in), a JSONL file of `{"id": ..., "label": ...}` or a JSON object
id -> label. Labels read as True: true, correct, consistent, yes, 1; as False: false,
incorrect, inconsistent, no, 0; an empty label leaves the item out.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from sake.evaluation.judges.agreement import (
    OVERALL,
    Agreement,
    agreement_by_metric,
    agreement_metrics,
    item_ids,
    json_safe,
    verdict_labels,
)
from sake.evaluation.records import RECORDS_FILE, read_records
from sake.evaluation.report import markdown_table
from sake.utils.run import RunContext, atomic_write_text

Record = Mapping[str, Any]
Labels = dict[str, bool | None]

POSITIVE = frozenset({"true", "correct", "consistent", "yes", "1"})
NEGATIVE = frozenset({"false", "incorrect", "inconsistent", "no", "0"})
SHEET_COLUMNS = (
    "id",
    "metric",
    "question",
    "answer",
    "pre_output",
    "post_output",
    "judge_label",
    "label",
)


def judge_agreement_task(cfg: DictConfig, run: RunContext) -> dict[str, float]:
    a, b = cfg.get("a"), cfg.get("b")
    if not a or not b:
        raise ValueError(
            "name both sides: python evaluate.py task=judge_agreement a=<run dir> "
            "b=<run dir | labels file (.csv with id,label | .jsonl | .json)>"
        )
    records_a = read_run(Path(str(a)))
    labels_a, metric_of = verdict_labels(records_a)
    labels_b = read_side(Path(str(b)))
    results = agreement_by_metric(labels_a, labels_b, metric_of)
    write_outputs(run.output_dir, (str(a), str(b)), records_a, labels_b, results)
    metrics = agreement_metrics(results)
    tracker = instantiate(cfg.logger)
    tracker.start({"a": str(a), "b": str(b)})
    try:
        tracker.log_table("judge_agreement", *agreement_table(results))
        tracker.log_summary(metrics)
    finally:
        tracker.finish()
    print(agreement_markdown(str(a), str(b), results))
    return metrics


# --------------------------------------------------------------------------- labels


def read_run(path: Path) -> list[Record]:
    """The records of a run directory or of a records file."""
    records_path = path / RECORDS_FILE if path.is_dir() else path
    if not records_path.is_file():
        raise FileNotFoundError(
            f"{records_path} does not exist; name a run directory holding {RECORDS_FILE}"
        )
    return read_records(records_path)


def read_side(path: Path) -> Labels:
    """Labels of side b: a run (directory or records file) or a human labels file."""
    if path.is_dir() or (path.suffix == ".jsonl" and _holds_records(path)):
        return verdict_labels(read_run(path))[0]
    return read_human_labels(path)


def _holds_records(path: Path) -> bool:
    with open(path, encoding="utf-8") as handle:
        first = handle.readline()
    return bool(first.strip()) and "probes" in json.loads(first)


def read_human_labels(path: Path) -> Labels:
    """Human labels from CSV (id, label), JSONL or a JSON object (see the module docstring)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; name a run directory or a labels file")
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        if rows and not {"id", "label"} <= set(rows[0]):
            raise ValueError(f"{path}: a labels CSV needs the columns 'id' and 'label'")
        pairs = [(row["id"], row["label"]) for row in rows]
    elif path.suffix == ".jsonl":
        lines = path.read_text(encoding="utf-8").splitlines()
        pairs = [(item["id"], item.get("label")) for item in map(json.loads, filter(None, lines))]
    elif path.suffix == ".json":
        pairs = list(json.loads(path.read_text(encoding="utf-8")).items())
    else:
        raise ValueError(f"{path}: labels must be a .csv, .jsonl or .json file")
    return {str(item): parse_label(label, path) for item, label in pairs}


def parse_label(label: Any, path: Path) -> bool | None:
    if label is None or isinstance(label, bool):
        return label
    text = str(label).strip().casefold()
    if not text:
        return None
    if text in POSITIVE:
        return True
    if text in NEGATIVE:
        return False
    raise ValueError(
        f"{path}: unknown label {label!r}; write one of "
        f"{', '.join(sorted(POSITIVE | NEGATIVE))}, or leave it empty"
    )


# --------------------------------------------------------------------------- outputs


def agreement_table(results: Mapping[str, Agreement]) -> tuple[list[str], list[list[Any]]]:
    columns = ["metric", "compared", "agreed", "percent", "kappa", "undecided", "unmatched"]
    rows = [
        [
            name,
            found.compared,
            found.agreed,
            _number(found.percent, 1),
            _number(found.kappa, 3),
            found.undecided,
            found.unmatched,
        ]
        for name, found in results.items()
    ]
    return columns, rows


def _number(value: float, digits: int) -> float | None:
    return round(value, digits) if math.isfinite(value) else None


def agreement_markdown(a: str, b: str, results: Mapping[str, Agreement]) -> str:
    columns, rows = agreement_table(results)
    cells = [["–" if cell is None else cell for cell in row] for row in rows]
    return (
        "\n\n".join(
            [
                "# Judge agreement",
                f"a: `{a}`  \nb: `{b}`",
                "Percent agreement and Cohen's κ over the items both sides label; κ is undefined "
                "(–) when both give one and the same label to every item.",
                markdown_table(columns, cells),
            ]
        )
        + "\n"
    )


def write_outputs(
    directory: Path,
    sides: tuple[str, str],
    records_a: Sequence[Record],
    labels_b: Mapping[str, bool | None],
    results: Mapping[str, Agreement],
) -> None:
    """agreement.md / .json, disagreements.jsonl and the annotation sheet of side a."""
    report = {name: json_safe(found.as_dict()) for name, found in results.items()}
    atomic_write_text(directory / "agreement.json", json.dumps(report, indent=2))
    atomic_write_text(directory / "agreement.md", agreement_markdown(*sides, results))
    sheet, disagreements = [], []
    for record in records_a:
        for item, judged in zip(item_ids(record), record["probes"], strict=True):
            row = _sheet_row(item, judged)
            sheet.append(row)
            other = labels_b.get(item)
            if other is not None and other != bool(judged["score"]):
                disagreements.append({**row, "label_b": other, "verdict_a": judged["verdict"]})
    atomic_write_text(
        directory / "disagreements.jsonl",
        "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in disagreements),
    )
    write_sheet(directory / "annotation_sheet.csv", sheet)
    print(f"{len(disagreements)} of {results[OVERALL].compared} compared items disagree")


def _sheet_row(item: str, judged: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": item,
        "metric": judged["kind"],
        "question": judged["question"],
        "answer": judged["answer"],
        "pre_output": judged["pre_output"],
        "post_output": judged["post_output"],
        "judge_label": bool(judged["score"]),
        "label": "",
    }


def write_sheet(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SHEET_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())

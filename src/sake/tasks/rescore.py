"""`python evaluate.py run=<run dir> [judge=…]`: judge a finished run's saved outputs again.

Nothing is edited and no model is loaded: every probe's saved pre- and post-edit outputs go
to the configured judge (`judge=option`, the default, or `judge=llm_http` / `judge=llm_local`)
in one batch. The results go beside the run's own files, into `<run dir>/rescore-<judge>/`:
`records.jsonl` (the records with the new verdicts), `metrics.json`, `report.md` with its
figures, and `agreement.json` (percent agreement and Cohen's κ between the saved verdicts and
the new ones, overall and per metric). The run's own `metrics.json` is never touched.

This is the default task of `evaluate.py`; with `sweep=<multirun dir>` instead of `run=` it
aggregates every job of a sweep (`sake.tasks.sweep`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from sake.evaluation.judges.agreement import (
    agreement_by_metric,
    agreement_metrics,
    json_safe,
    verdict_labels,
)
from sake.evaluation.records import RECORDS_FILE
from sake.evaluation.rejudging import build_judge, rejudge, run_metrics
from sake.evaluation.report import case_table, load_job, log_report, write_report
from sake.tasks.sweep import sweep_task
from sake.utils.run import RunContext, atomic_write_text
from sake.utils.tracking import start_tracker

log = logging.getLogger(__name__)

Record = Mapping[str, Any]
USAGE = (
    "name what to evaluate: python evaluate.py run=<run dir> [judge=option|llm_http|llm_local] "
    "re-judges one edit run; python evaluate.py sweep=<multirun dir> aggregates a sweep; other "
    "tasks: task=probe, task=corpus, task=lambda_sweep, task=judge_agreement"
)


def rescore_task(cfg: DictConfig, run: RunContext) -> dict[str, float]:
    if cfg.get("run"):
        return rescore_run(cfg, run)
    if cfg.get("sweep"):
        return sweep_task(cfg, run)
    raise ValueError(USAGE)


def rescore_run(cfg: DictConfig, run: RunContext) -> dict[str, float]:
    directory = Path(str(cfg.run))
    saved = load_job(directory)
    judge = build_judge(cfg, saved.protocol)
    out = directory / f"rescore-{judge.name}"
    job = replace(saved, records=rejudge(saved.records, judge), directory=out)
    write_records(out / RECORDS_FILE, job.records)
    metrics = run_metrics(job.protocol, job.records, job.aggregation)
    RunContext(out).write_metrics(metrics)
    changes = write_verdict_changes(out / "agreement.json", saved.records, job.records)
    report = write_report([job], out, f"{saved.label} re-judged by the {judge.name} judge")
    tracker = start_tracker(cfg, f"rescore-{judge.name}-{directory.name}")
    try:
        log_report(report, tracker, case_table([job]))
    finally:
        tracker.finish()
    print(report.headline)
    log.info("re-judged %d records of %s; report: %s", len(job.records), directory, report.path)
    return {**metrics, **{f"saved_verdicts/{k}": v for k, v in changes.items()}}


def write_verdict_changes(
    path: Path, saved: Sequence[Record], rescored: Sequence[Record]
) -> dict[str, float]:
    """Agreement of the saved verdicts with the new ones, written to `path` and returned."""
    saved_labels, metric_of = verdict_labels(saved)
    changes = agreement_by_metric(saved_labels, verdict_labels(rescored)[0], metric_of)
    report = {name: json_safe(found.as_dict()) for name, found in changes.items()}
    atomic_write_text(path, json.dumps(report, indent=2))
    return agreement_metrics(changes)


def write_records(path: Path, records: Sequence[Record]) -> None:
    lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    atomic_write_text(path, lines)

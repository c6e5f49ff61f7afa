"""`python edit.py`: edit a model case by case (or sequence by sequence) and measure the edits.

The task builds the method first (so a wrong method fails before anything is loaded), then
the dataset, the model and the tracker, runs the protocol named by `eval.protocol`, and
returns the SAKE metrics for `metrics.json`. Per-edit records go to `records.jsonl` in the run
directory, phase timings to `timing.json`; the tracker gets the summary metrics and one table
row per record.

To continue a killed run, start it again in the same directory with `resume=true`
(`python edit.py ... hydra.run.dir=<run dir> resume=true`): finished records are kept and
only the missing ones are computed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from time import perf_counter
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from sake.data.schema import ATTRIBUTES
from sake.evaluation.judges.base import OptionJudge
from sake.evaluation.metrics import (
    METRICS,
    case_scores,
    sequential_table,
    summary_table,
)
from sake.evaluation.pre_edit import PreEditCache
from sake.evaluation.records import RECORDS_FILE, Record, RecordWriter
from sake.evaluation.rejudging import run_metrics
from sake.evaluation.report import portability_categories, publish_run_report
from sake.methods.base import Editor, build_editor
from sake.methods.saved import EditSaver
from sake.models.base import LALM
from sake.runner import EditRunner, EvalSettings, eval_settings
from sake.utils.resolvers import config_options
from sake.utils.run import RunContext

log = logging.getLogger(__name__)

TIMING_FILE = "timing.json"
EDITS_DIR = "edits"


def edit_task(cfg: DictConfig, run: RunContext) -> dict[str, float]:
    started = perf_counter()
    if cfg.task.get("threads"):
        torch.set_num_threads(int(cfg.task.threads))
    settings = eval_settings(cfg.eval)
    editor = build_editor(cfg.method, available=config_options("method"))
    dataset = instantiate(cfg.dataset)
    lalm: LALM = instantiate(cfg.model.load)
    editor.prepare(lalm, dataset.release.splits.get("train", []))
    tracker = instantiate(cfg.logger)
    tracker.start(run_config(cfg))
    try:
        records = run_protocol(cfg, run, settings, editor, lalm, dataset)
        metrics = run_metrics(settings.protocol, records, str(cfg.eval.aggregation))
        tracker.log_summary(metrics)
        columns, rows = records_table(records)
        tracker.log_table("records", columns, rows)
        categories = portability_categories(dataset.release.all_cases())
        publish_run_report(run.output_dir, records, tracker, categories, str(cfg.eval.aggregation))
    finally:
        tracker.finish()
    print(format_summary(settings.protocol, metrics))
    log.info("%s finished in %.1f s", editor.name, perf_counter() - started)
    return metrics


def run_protocol(
    cfg: DictConfig,
    run: RunContext,
    settings: EvalSettings,
    editor: Editor,
    lalm: LALM,
    dataset: Any,
) -> list[Record]:
    """Run the configured protocol, write `timing.json`, return every record of the run."""
    cache_root = Path(cfg.paths.cache_dir) if cfg.eval.get("pre_edit_cache", True) else None
    writer = RecordWriter(run.output_dir / RECORDS_FILE, resume=bool(cfg.get("resume", False)))
    fingerprint = lalm.fingerprint()
    runner = EditRunner(
        lalm,
        editor,
        settings=settings,
        pre_edit=PreEditCache(
            cache_root,
            fingerprint,
            settings.max_new_tokens,
            keep_logits=bool(cfg.eval.get("pre_edit_logits", True)),
        ),
        writer=writer,
        model_name=str(cfg.model.name),
        audio_root=getattr(dataset, "audio_root", None),
        judge=instantiate(cfg.judge) if cfg.get("judge") else OptionJudge(),
        saver=edit_saver(cfg, run, fingerprint),
    )
    with runner.timings.measure("total"):
        if settings.protocol == "single":
            records = runner.run_single(
                settings.shard_of(dataset.cases(cfg.task.get("split") or None))
            )
        else:
            records = runner.run_sequential(settings.shard_of(dataset.sequences()))
    timing = {
        **runner.timings.as_dict(),
        "pre_edit/cache_hits": runner.pre_edit.hits,
        "pre_edit/generated": runner.pre_edit.generated,
        "records/new": len(records) - len(writer.existing),
    }
    run.write_metrics(timing, name=TIMING_FILE)
    return records


def edit_saver(cfg: DictConfig, run: RunContext, fingerprint: str) -> EditSaver | None:
    """With `save_edits=true`, what writes every edit under `<run>/edits/`."""
    if not cfg.get("save_edits"):
        return None
    method = OmegaConf.to_container(cfg.method, resolve=True)
    return EditSaver(run.output_dir / EDITS_DIR, fingerprint, str(cfg.model.name), method)


def format_summary(protocol: str, metrics: Mapping[str, float]) -> str:
    if protocol == "single":
        return summary_table(metrics, ATTRIBUTES)
    return sequential_table(metrics)


def records_table(records: Sequence[Record]) -> tuple[list[str], list[list[Any]]]:
    """One row per record: what was edited, the edit's cost and its scores per metric."""
    sequential = bool(records) and records[0]["protocol"] == "sequential"
    position = ["sequence", "step", "edit_index", "gap"] if sequential else []
    columns = [
        "case_id",
        *position,
        "attribute",
        "y_o",
        "y_e",
        "steps",
        "edit_seconds",
        *METRICS,
    ]
    rows = []
    for record in records:
        scores = case_scores(record)
        rows.append(
            [
                record["case_id"],
                *[record[key] for key in position],
                record["attribute"],
                record["y_o"],
                record["y_e"],
                record["edit"]["steps"],
                record["edit"]["seconds"],
                *[scores.get(metric) for metric in METRICS],
            ]
        )
    return columns, rows


def run_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config without Hydra's own section, for the tracker."""
    return {
        key: OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        for key, value in cfg.items()
        if key != "hydra"
    }

"""`python evaluate.py task=text_portability`: the reference's text-based portability diagnostic
(see `sake.evaluation.text_portability`). Writes one JSON line per item, `metrics.json` and a
short `report.md`, and logs the metrics to the tracker."""

from __future__ import annotations

import json
import logging

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from sake.evaluation.judges.base import Judge, OptionJudge
from sake.evaluation.report import markdown_table
from sake.evaluation.text_portability import (
    KEY,
    TextPortabilityPrompts,
    answer_items,
    judge_items,
    text_portability_items,
    text_portability_metrics,
)
from sake.tasks.rescore import start_tracker
from sake.utils.run import REPORT_FILE, RunContext, atomic_write_text

log = logging.getLogger(__name__)
OUTPUTS_FILE = "text_portability.jsonl"


def text_portability_task(cfg: DictConfig, run: RunContext) -> dict[str, float]:
    prompts = TextPortabilityPrompts.load(str(cfg.paths.reference_prompts))
    judge = diagnostic_judge(cfg)
    dataset = instantiate(cfg.dataset)
    lalm = instantiate(cfg.model.load)
    items = text_portability_items(dataset.cases(cfg.task.get("split") or None), prompts)
    if not items:
        raise ValueError("the split has no portability probe to ask")
    outputs = answer_items(
        lalm,
        items,
        batch_size=int(cfg.eval.batch_size),
        max_new_tokens=int(cfg.eval.max_new_tokens),
    )
    records = judge_items(items, outputs, judge)
    lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    atomic_write_text(run.output_dir / OUTPUTS_FILE, lines)
    metrics = text_portability_metrics(records)
    atomic_write_text(run.output_dir / REPORT_FILE, report_text(metrics, judge.name))
    tracker = start_tracker(cfg, f"text-portability-{cfg.model.name}")
    try:
        tracker.log_summary(metrics)
    finally:
        tracker.finish()
    log.info("text-based portability over %d items: %.3f", len(records), metrics[KEY])
    return metrics


def diagnostic_judge(cfg: DictConfig) -> Judge:
    """The configured judge; `judge=sake` as the reference's text-portability evaluator."""
    if not cfg.get("judge"):
        return OptionJudge()
    overrides = {
        key: value for key, value in cfg.task.get("judge_overrides", {}).items() if key in cfg.judge
    }
    return instantiate(cfg.judge, **OmegaConf.to_container(OmegaConf.create(overrides)))


def report_text(metrics: dict[str, float], judge: str) -> str:
    scopes = sorted(key for key in metrics if not key.endswith("/skipped"))
    rows = [
        [
            "all" if scope == KEY else scope.split("/", 1)[1],
            f"{100 * metrics[scope]:.1f}",
            int(metrics[f"{scope}/skipped"]),
        ]
        for scope in scopes
    ]
    return (
        "\n\n".join(
            [
                "# Text-based portability",
                f"Accuracy in percent ({judge} judge); empty outputs skipped, as the "
                "reference counts.",
                markdown_table(["attribute", "accuracy", "skipped"], rows),
            ]
        )
        + "\n"
    )

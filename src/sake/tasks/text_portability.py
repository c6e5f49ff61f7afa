"""`python evaluate.py task=text_portability|target_portability`: the reference's two
portability controls (see `sake.evaluation.text_portability`). Writes one JSON line per item,
`metrics.json` and a short `report.md`, and logs the metrics to the tracker."""

from __future__ import annotations

import json
import logging

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from sake.evaluation.judges.base import Judge, OptionJudge
from sake.evaluation.report import markdown_table
from sake.evaluation.text_portability import (
    KEY,
    TARGET_KEY,
    TextPortabilityItem,
    TextPortabilityPrompts,
    answer_items,
    judge_items,
    target_audio_items,
    text_portability_items,
    text_portability_metrics,
)
from sake.utils.run import REPORT_FILE, RunContext, atomic_write_text
from sake.utils.tracking import start_tracker

log = logging.getLogger(__name__)
OUTPUTS_FILE = "text_portability.jsonl"


MODES = {"text": KEY, "target_audio": TARGET_KEY}


def text_portability_task(cfg: DictConfig, run: RunContext) -> dict[str, float]:
    mode = str(cfg.task.get("mode", "text"))
    if mode not in MODES:
        raise ValueError(f"task.mode must be one of {tuple(MODES)}, got {mode!r}")
    judge = diagnostic_judge(cfg)
    dataset = instantiate(cfg.dataset)
    cases = dataset.cases(cfg.task.get("split") or None)
    items = portability_items(cfg, mode, cases)
    if not items:
        raise ValueError(f"the split has no portability probe to ask ({mode} mode)")
    lalm = instantiate(cfg.model.load)
    outputs = answer_items(
        lalm,
        items,
        batch_size=int(cfg.eval.batch_size),
        max_new_tokens=int(cfg.eval.max_new_tokens),
    )
    records = judge_items(items, outputs, judge)
    lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    atomic_write_text(run.output_dir / OUTPUTS_FILE, lines)
    key = MODES[mode]
    metrics = text_portability_metrics(records, key)
    atomic_write_text(run.output_dir / REPORT_FILE, report_text(metrics, judge.name, key))
    tracker = start_tracker(cfg, f"{key.replace('_', '-')}-{cfg.model.name}")
    try:
        tracker.log_summary(metrics)
    finally:
        tracker.finish()
    log.info("%s over %d items: %.3f", key, len(records), metrics[key])
    return metrics


def portability_items(cfg: DictConfig, mode: str, cases: list) -> list[TextPortabilityItem]:
    if mode == "target_audio":
        return target_audio_items(cases)
    prompts = TextPortabilityPrompts.load(str(cfg.paths.reference_prompts))
    return text_portability_items(cases, prompts)


def diagnostic_judge(cfg: DictConfig) -> Judge:
    """The configured judge; `judge=sake` as the reference's text-portability evaluator."""
    if not cfg.get("judge"):
        return OptionJudge()
    overrides = {
        key: value for key, value in cfg.task.get("judge_overrides", {}).items() if key in cfg.judge
    }
    return instantiate(cfg.judge, **OmegaConf.to_container(OmegaConf.create(overrides)))


TITLES = {KEY: "Text-based portability", TARGET_KEY: "Target-audio portability"}


def report_text(metrics: dict[str, float], judge: str, key: str = KEY) -> str:
    scopes = sorted(name for name in metrics if not name.endswith("/skipped"))
    rows = [
        [
            "all" if scope == key else scope.split("/", 1)[1],
            f"{100 * metrics[scope]:.1f}",
            int(metrics[f"{scope}/skipped"]),
        ]
        for scope in scopes
    ]
    return (
        "\n\n".join(
            [
                f"# {TITLES[key]}",
                f"Accuracy in percent ({judge} judge); empty outputs skipped, as the "
                "reference counts.",
                markdown_table(["attribute", "accuracy", "skipped"], rows),
            ]
        )
        + "\n"
    )

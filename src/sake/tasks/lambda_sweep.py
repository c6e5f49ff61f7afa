"""`python evaluate.py task=lambda_sweep sweep=<multirun dir>`: λ-sweep sensitivity analysis.

Reads every job of a finished multirun (`python edit.py -m method=memit
method.lam=1.5e2,1.5e3,...`), writes `lambda_sweep.md`, `lambda_sweep.json` and
`lambda_sweep.png` into the run directory, logs the table, the sensitivities and the plot to
the tracker, and returns Kendall's tau, coverage and standard deviation per metric.
"""

from __future__ import annotations

import json
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from sake.evaluation.lambda_sweep import (
    analyse_sweep,
    markdown,
    report_json,
    sensitivity_table,
    summary_metrics,
    table,
    write_plot,
)
from sake.utils.run import RunContext, atomic_write_text

REPORT_NAME = "lambda_sweep"


def lambda_sweep_task(cfg: DictConfig, run: RunContext) -> dict[str, float]:
    sweep = cfg.get("sweep")
    if not sweep:
        raise ValueError(
            "name the multirun directory to analyse: "
            "python evaluate.py task=lambda_sweep sweep=outputs/edit/multirun/<date>/<time>"
        )
    analysis = analyse_sweep(Path(str(sweep)), cfg.task.get("param"))
    report = markdown(analysis)
    atomic_write_text(run.output_dir / f"{REPORT_NAME}.md", report)
    atomic_write_text(
        run.output_dir / f"{REPORT_NAME}.json", json.dumps(report_json(analysis), indent=2)
    )
    plot = write_plot(analysis, run.output_dir / f"{REPORT_NAME}.png")
    metrics = summary_metrics(analysis)
    tracker = instantiate(cfg.logger)
    tracker.start({"sweep": str(sweep), "parameter": analysis.parameter})
    try:
        tracker.log_table(f"{REPORT_NAME}/table", *table(analysis))
        tracker.log_table(f"{REPORT_NAME}/sensitivity", *sensitivity_table(analysis))
        tracker.log_image(f"{REPORT_NAME}/plot", plot)
        tracker.log_summary(metrics)
    finally:
        tracker.finish()
    print(report)
    return metrics

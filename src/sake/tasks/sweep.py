"""`python evaluate.py sweep=<multirun dir> [judge=…]`: every job of a sweep in one report.

Reads every job directory of a Hydra multirun (`python edit.py -m method=ft_llm,i_ike,...`)
that holds records, judges the saved outputs with the configured judge (the option judge by
default, which reproduces the verdicts the runs wrote; `judge=llm_http` re-judges the whole
sweep), and writes one report into this run's directory: `report.md` with SAKE's Table 2
layout (jobs as columns) and every other section of `sake.evaluation.report`, its figures,
and `metrics.json` with every job's metrics under the job's label. The tracker gets the
summary, the tables, one row per record of every job, the figures and the report.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from omegaconf import DictConfig

from sake.evaluation.judges.base import Judge
from sake.evaluation.lambda_sweep import job_directories
from sake.evaluation.rejudging import build_judge, rejudge
from sake.evaluation.report import Job, case_table, load_job, log_report, write_report
from sake.evaluation.shards import merge_shards
from sake.utils.run import RunContext
from sake.utils.tracking import start_tracker

log = logging.getLogger(__name__)


def sweep_task(cfg: DictConfig, run: RunContext) -> dict[str, float]:
    sweep = cfg.get("sweep")
    if not sweep:
        raise ValueError(
            "name the multirun directory to aggregate: "
            "python evaluate.py sweep=outputs/edit/multirun/<date>/<time>"
        )
    directory = Path(str(sweep))
    loaded = merge_shards([load_job(job) for job in sweep_jobs(directory)])
    judges = {protocol: build_judge(cfg, protocol) for protocol in {j.protocol for j in loaded}}
    jobs = [rejudged(job, judges[job.protocol]) for job in loaded]
    name = next(iter(judges.values())).name
    report = write_report(jobs, run.output_dir, f"Sweep {directory.name} ({name} judge)")
    tracker = start_tracker(cfg, f"sweep-{directory.name}")
    try:
        log_report(report, tracker, case_table(jobs))
    finally:
        tracker.finish()
    print(report.headline)
    log.info("aggregated %d jobs of %s; report: %s", len(jobs), directory, report.path)
    return report.summary


def sweep_jobs(directory: Path) -> list[Path]:
    """The job directories of a multirun that hold records."""
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory; name a multirun directory")
    jobs = job_directories(directory)
    if not jobs:
        raise FileNotFoundError(
            f"no job directory under {directory} holds records.jsonl; name the directory that "
            "`python edit.py -m ...` printed (outputs/edit/multirun/<date>/<time>_<id>)"
        )
    return jobs


def rejudged(job: Job, judge: Judge) -> Job:
    return replace(job, records=rejudge(job.records, judge))

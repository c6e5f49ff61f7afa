"""Which locality metric tracks a method's specificity regularizer: λ-sweep analysis.

A sweep is a Hydra multirun of single-editing jobs that differ in one method hyperparameter
(MEMIT's `lam`, WISE's `alpha`, UnKE's `preservation_weight`, a `c_loc` or a KL weight). For
every job the analysis reads its records and computes the SAKE metrics, the specificity
metrics (`sake.evaluation.specificity`, pooled over every locality probe) and the regularizer
the editor reported per edit (`record["edit"]["extras"]["regularizer/..."]`, e.g. MEMIT's
sqrt(E|delta k_j|^2) per layer), averaged over edits. When the editor reports no regularizer
the swept value itself stands in for it (`regularizer_source: "value"`).

Per metric, over the jobs: Kendall's tau-b against the mean regularizer, the coverage
(max - min) / range, with range the metric's natural span (1 for accuracies, 100 for top-k
overlap; for KL, which is unbounded, the largest value observed), and the population
standard deviation. A metric that tracks the regularizer has |tau| near 1 and a coverage
well above zero.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from sake.evaluation.metrics import saved_aggregation, single_metrics
from sake.evaluation.records import RECORDS_FILE, read_records
from sake.evaluation.specificity import specificity_metrics

REGULARIZER_PREFIX = "regularizer/"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class TrackedMetric:
    """A column of the sweep table: its id, its key in a job's metrics, label and span."""

    id: str
    key: str
    label: str
    span: float | None


TRACKED: tuple[TrackedMetric, ...] = (
    TrackedMetric("s_acc", "single/locality/s_acc", "S-acc", 1.0),
    TrackedMetric("t_acc", "single/locality/t_acc", "T-acc", 1.0),
    TrackedMetric("c_acc", "single/locality/c_acc", "C-acc", 1.0),
    TrackedMetric("kl", "single/locality/kl", "KL", None),
    TrackedMetric("top1", "single/locality/top1", "top-1", 100.0),
    TrackedMetric("top5", "single/locality/top5", "top-5", 100.0),
    TrackedMetric("top10", "single/locality/top10", "top-10", 100.0),
    TrackedMetric("locality_audio", "single/locality_audio", "Loc-A", 1.0),
    TrackedMetric("locality_text", "single/locality_text", "Loc-T", 1.0),
    TrackedMetric("efficacy", "single/reliability", "efficacy", 1.0),
    TrackedMetric("generality", "single/generality", "generality", 1.0),
)


@dataclass(frozen=True)
class SweepJob:
    """One job of the sweep: the swept value, its metrics and its mean regularizer."""

    directory: Path
    value: float
    metrics: dict[str, float]
    regularizer: dict[str, float]


@dataclass(frozen=True)
class Sensitivity:
    """How one metric moves with the regularizer over the sweep."""

    metric: TrackedMetric
    tau: float
    coverage: float
    std: float
    n: int


@dataclass(frozen=True)
class SweepAnalysis:
    parameter: str
    regularizer_source: str
    jobs: list[SweepJob]
    sensitivities: list[Sensitivity]

    def regularizer_of(self, job: SweepJob) -> float:
        return job.regularizer["mean"] if self.regularizer_source == "measured" else job.value


# --------------------------------------------------------------------------- statistics


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b (ties in either variable accounted for), as scipy.stats.kendalltau.

    NaN when fewer than two pairs are untied in one of the variables.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in length: {x.shape} vs {y.shape}")
    upper = np.triu_indices(len(x), k=1)
    sx = np.sign(x[:, None] - x[None, :])[upper]
    sy = np.sign(y[:, None] - y[None, :])[upper]
    untied_x, untied_y = np.count_nonzero(sx), np.count_nonzero(sy)
    if untied_x == 0 or untied_y == 0:
        return math.nan
    return float(np.sum(sx * sy) / math.sqrt(untied_x * untied_y))


def coverage(values: Sequence[float], span: float | None) -> float:
    """(max - min) / span; for unbounded metrics (span None) relative to the largest value."""
    values = np.asarray(values, dtype=float)
    spread = float(values.max() - values.min())
    if span is not None:
        return spread / span
    largest = float(np.abs(values).max())
    return spread / largest if largest > 0 else 0.0


def sensitivities(
    jobs: Sequence[SweepJob], regularizers: Sequence[float], tracked: Sequence[TrackedMetric]
) -> list[Sensitivity]:
    """Tau, coverage and standard deviation of every metric present in at least two jobs."""
    found = []
    for metric in tracked:
        pairs = [
            (reg, job.metrics[metric.key])
            for job, reg in zip(jobs, regularizers, strict=True)
            if metric.key in job.metrics
        ]
        if len(pairs) < 2:
            continue
        reg, values = zip(*pairs, strict=True)
        found.append(
            Sensitivity(
                metric,
                kendall_tau(reg, values),
                coverage(values, metric.span),
                float(np.std(values)),
                len(pairs),
            )
        )
    return found


# --------------------------------------------------------------------------- loading


def job_directories(sweep_dir: Path) -> list[Path]:
    """Every job directory of a multirun: those holding a records file."""
    return sorted(path.parent for path in Path(sweep_dir).glob(f"*/{RECORDS_FILE}"))


def saved_config(directory: Path) -> dict[str, Any]:
    """The resolved config a job ran with (its `config.yaml`)."""
    return dict(OmegaConf.to_container(OmegaConf.load(directory / CONFIG_FILE), resolve=False))


def method_config(directory: Path) -> dict[str, Any]:
    """The resolved method config a job ran with."""
    return dict(saved_config(directory).get("method") or {})


def swept_parameter(methods: Sequence[Mapping[str, Any]]) -> str:
    """The one numeric method field whose value differs between the jobs."""
    names = {name for method in methods for name in method}
    varying = sorted(name for name in names if len({json.dumps(m.get(name)) for m in methods}) > 1)
    numeric = [
        name
        for name in varying
        if all(
            isinstance(m.get(name), (int, float)) and not isinstance(m.get(name), bool)
            for m in methods
        )
    ]
    if len(numeric) != 1 or len(varying) != 1:
        raise ValueError(
            f"cannot tell which hyperparameter the sweep varies (differing fields: "
            f"{varying or 'none'}); name it with task.param=<field>"
        )
    return numeric[0]


def mean_regularizer(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Per regularizer key (without the prefix), its mean over the records that report it."""
    values: dict[str, list[float]] = defaultdict(list)
    for record in records:
        for key, value in ((record.get("edit") or {}).get("extras") or {}).items():
            if key.startswith(REGULARIZER_PREFIX) and value is not None:
                values[key.removeprefix(REGULARIZER_PREFIX)].append(float(value))
    return {key: float(np.mean(found)) for key, found in sorted(values.items())}


def load_job(directory: Path, parameter: str) -> SweepJob:
    records = read_records(directory / RECORDS_FILE)
    if not records:
        raise ValueError(f"{directory} holds no records")
    if records[0]["protocol"] != "single":
        raise ValueError(f"{directory}: λ-sweeps analyse single-editing runs")
    stored = directory / METRICS_FILE
    metrics = json.loads(stored.read_text("utf-8")) if stored.is_file() else {}
    config = saved_config(directory)
    metrics.update(single_metrics(records, saved_aggregation(config)))
    metrics.update(specificity_metrics(records))
    value = (config.get("method") or {}).get(parameter)
    if not isinstance(value, (int, float)):
        raise ValueError(f"{directory}: method.{parameter} is {value!r}, not a number")
    return SweepJob(directory, float(value), metrics, mean_regularizer(records))


def analyse_sweep(
    sweep_dir: Path | str,
    parameter: str | None = None,
    tracked: Sequence[TrackedMetric] = TRACKED,
) -> SweepAnalysis:
    """Load every job of a multirun directory and relate each metric to the regularizer."""
    directories = job_directories(Path(sweep_dir))
    if len(directories) < 2:
        raise FileNotFoundError(
            f"{sweep_dir} holds {len(directories)} job(s) with records; a sweep needs at least "
            "two (run `python edit.py -m method=<m> method.<param>=v1,v2,...`)"
        )
    if parameter is None:
        parameter = swept_parameter([method_config(d) for d in directories])
    jobs = sorted((load_job(d, parameter) for d in directories), key=lambda job: job.value)
    measured = all("mean" in job.regularizer for job in jobs)
    source = "measured" if measured else "value"
    regularizers = [job.regularizer["mean"] if measured else job.value for job in jobs]
    return SweepAnalysis(parameter, source, jobs, sensitivities(jobs, regularizers, tracked))


# --------------------------------------------------------------------------- reports


def table(analysis: SweepAnalysis) -> tuple[list[str], list[list[float | None]]]:
    """One row per job: the swept value, regularizer per layer and mean, every metric."""
    layers = sorted(
        {key for job in analysis.jobs for key in job.regularizer if key != "mean"},
        key=_layer_order,
    )
    columns = [
        analysis.parameter,
        *(f"reg/{key}" for key in layers),
        "reg/mean",
        *(metric.label for metric in TRACKED),
    ]
    rows = []
    for job in analysis.jobs:
        rows.append(
            [
                job.value,
                *(job.regularizer.get(key) for key in layers),
                analysis.regularizer_of(job),
                *(job.metrics.get(metric.key) for metric in TRACKED),
            ]
        )
    return columns, rows


def sensitivity_table(analysis: SweepAnalysis) -> tuple[list[str], list[list[Any]]]:
    columns = ["metric", "kendall_tau", "coverage", "std", "n"]
    rows = [[s.metric.label, s.tau, s.coverage, s.std, s.n] for s in analysis.sensitivities]
    return columns, rows


def summary_metrics(analysis: SweepAnalysis) -> dict[str, float]:
    """`sweep/<metric>/{tau,coverage,std}` for metrics.json and the tracker; an undefined tau
    (a metric constant over the sweep) is left out."""
    metrics: dict[str, float] = {}
    for s in analysis.sensitivities:
        values = {"tau": s.tau, "coverage": s.coverage, "std": s.std}
        for name, value in values.items():
            if math.isfinite(value):
                metrics[f"sweep/{s.metric.id}/{name}"] = value
    return metrics


def markdown(analysis: SweepAnalysis) -> str:
    columns, rows = table(analysis)
    s_columns, s_rows = sensitivity_table(analysis)
    return "\n".join(
        [
            f"# λ-sweep over `method.{analysis.parameter}`",
            "",
            f"{len(analysis.jobs)} jobs; regularizer: {_source_text(analysis)}.",
            "",
            _markdown_table(columns, rows),
            "",
            "## Sensitivity to the mean regularizer",
            "",
            _markdown_table(s_columns, s_rows),
            "",
        ]
    )


def report_json(analysis: SweepAnalysis) -> dict[str, Any]:
    return _finite(
        {
            "parameter": analysis.parameter,
            "regularizer_source": analysis.regularizer_source,
            "jobs": [
                {
                    "directory": str(job.directory),
                    "value": job.value,
                    "regularizer": job.regularizer,
                    "metrics": {m.id: job.metrics.get(m.key) for m in TRACKED},
                }
                for job in analysis.jobs
            ],
            "sensitivity": {
                s.metric.id: {
                    "label": s.metric.label,
                    "key": s.metric.key,
                    "kendall_tau": s.tau,
                    "coverage": s.coverage,
                    "std": s.std,
                    "n": s.n,
                }
                for s in analysis.sensitivities
            },
        }
    )


def write_plot(analysis: SweepAnalysis, path: Path) -> Path:
    """Left: mean regularizer against the swept value; right: every metric scaled to its span."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    values = [job.value for job in analysis.jobs]
    figure, (left, right) = pyplot.subplots(1, 2, figsize=(11, 4.2))
    left.plot(values, [analysis.regularizer_of(job) for job in analysis.jobs], "o-")
    left.set_xscale("log" if min(values) > 0 else "linear")
    left.set_xlabel(analysis.parameter)
    left.set_ylabel(f"mean regularizer ({analysis.regularizer_source})")
    colours = pyplot.get_cmap("tab10").colors
    for number, s in enumerate(analysis.sensitivities):
        present = [
            (job.value, job.metrics[s.metric.key])
            for job in analysis.jobs
            if s.metric.key in job.metrics
        ]
        xs, ys = zip(*present, strict=True)
        scale = s.metric.span or max(abs(v) for v in ys) or 1.0
        right.plot(
            xs,
            [v / scale for v in ys],
            "o-" if number < len(colours) else "s--",
            color=colours[number % len(colours)],
            label=f"{s.metric.label} (τ={s.tau:.2f})",
        )
    right.set_xscale("log" if min(values) > 0 else "linear")
    right.set_xlabel(analysis.parameter)
    right.set_ylabel("metric / range")
    right.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    pyplot.close(figure)
    return path


def _source_text(analysis: SweepAnalysis) -> str:
    if analysis.regularizer_source == "measured":
        return "as reported by the editor, mean over edits"
    return f"the swept value method.{analysis.parameter} (the editor reports none)"


def _layer_order(key: str) -> tuple[int, str]:
    digits = "".join(c for c in key if c.isdigit())
    return (int(digits) if digits else -1, key)


def _markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}"
    return str(value)


def _finite(value: Any) -> Any:
    """NaN and infinities become None, so that the report is standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value

"""Reports of edit runs: SAKE's tables and figures as `report.md` with PNG figures beside it.

A report covers one or more jobs (one edit run each, e.g. the jobs of a sweep); each job is a
column. Sections, each present when the records allow it:

- the main table in the layout of SAKE's Table 2: reliability, generality, audio locality,
  text locality and portability as rows, jobs as columns, the best value of a row in bold
  and the second best underlined, a Wilson 95% interval beside every number;
- per-attribute tables with every generality and audio-locality type (SAKE's Tables 8-10),
  ground-truth accuracy of the locality probes before and after the edit, and the type
  profiles as a figure (SAKE's Figure 3);
- portability per knowledge category with the standard deviation and the range over the
  categories of an attribute (SAKE's Tables 3 and 14-17), where the data name categories;
- sequential editing: every metric by gap 0-5, a table and a line plot per metric (Figure 4);
- the share of degenerate outputs per job (SAKE's Table 18, rules in
  `sake.evaluation.degeneration`), after and before the edit;
- GT-free specificity of the locality probes, where the records carry it.

Numbers are percentages. Intervals are Wilson score intervals at 95% over the probes behind
a number: exact for one attribute; for a mean over attributes (or over the records of a
gap) they are Wilson's interval at that mean with n the number of probes pooled, which is
exact when every attribute contributes equally many probes.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from omegaconf import OmegaConf

from sake.data.readers import load_release
from sake.data.schema import ATTRIBUTES, EditCase, locality_audio_types
from sake.evaluation import report_figures
from sake.evaluation.degeneration import detect_degeneration
from sake.evaluation.estimates import Estimate
from sake.evaluation.metrics import (
    GAPS,
    LOCALITY_KINDS,
    SAKE_METRICS,
    SPECIFICITY_METRICS,
    case_scores,
    saved_aggregation,
    sequential_metrics,
    single_metrics,
)
from sake.evaluation.overfitting import overfitting_counts
from sake.evaluation.records import RECORDS_FILE, read_records
from sake.evaluation.rejudging import run_metrics
from sake.utils.run import REPORT_FILE, atomic_write_text

Record = Mapping[str, Any]
Table = tuple[list[str], list[list[Any]]]


CONFIG_FILE = "config.yaml"
# Audio-locality types whose probes the reference's entanglement scatter plots (type 3 asks
# about a clip of the edited label, where the edit's answer is the right one).
ENTANGLEMENT_TYPES = (1, 2, 4)
RADAR_MIN_JOBS = 3  # fewer spokes make no polygon

HEADLINE: tuple[tuple[str, str], ...] = tuple((m.key, m.title) for m in SAKE_METRICS)
SPECIFICITY_LABELS: dict[str, str] = {
    "kl": "KL(pre‖post), nats",
    "top1": "top-1 overlap",
    "top5": "top-5 overlap",
    "top10": "top-10 overlap",
    "s_acc": "S-acc",
    "t_acc": "T-acc",
    "c_acc": "C-acc",
}


class Tracker(Protocol):
    """What a report needs of an experiment tracker (`sake.utils.tracking`)."""

    def log_summary(self, metrics: Mapping[str, float]) -> None: ...

    def log_table(
        self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None: ...

    def log_image(self, key: str, path: Path) -> None: ...

    def log_file(self, path: Path) -> None: ...


# --------------------------------------------------------------------------- statistics


def _probe_keys(judged: Mapping[str, Any]) -> list[str]:
    """The metric keys one judged probe counts towards (as `sake.evaluation.metrics`)."""
    kind = judged["kind"]
    groups = [kind] if judged["type"] is None else [kind, f"{kind}/type{judged['type']}"]
    keys = list(groups)
    if kind in LOCALITY_KINDS:
        keys += [f"{group}/{side}" for group in groups for side in ("gt_pre", "gt_post")]
    return keys


def single_estimates(
    records: Sequence[Record], aggregation: str = "reference"
) -> dict[str, Estimate]:
    """Every probe-score key of `single_metrics` with the number of probes behind it."""
    counts: dict[str, int] = Counter()
    for record in records:
        for judged in record["probes"]:
            for key in _probe_keys(judged):
                counts[f"single/{record['attribute']}/{key}"] += 1
                counts[f"single/{key}"] += 1
    values = single_metrics(records, aggregation)
    return {key: Estimate(values[key], n) for key, n in counts.items() if key in values}


def sequential_estimates(
    records: Sequence[Record], aggregation: str = "reference"
) -> dict[str, Estimate]:
    """`sequential/<metric>/gap<g>` of `sequential_metrics` with the probes behind each."""
    counts: dict[str, int] = Counter()
    for record in records:
        if record["gap"] not in GAPS:
            continue
        for judged in record["probes"]:
            kind = judged["kind"]
            counts[f"sequential/{kind}/gap{record['gap']}"] += 1
            if kind in LOCALITY_KINDS:
                counts[f"sequential/{kind}/gt_post/gap{record['gap']}"] += 1
    values = sequential_metrics(records, aggregation=aggregation)
    return {key: Estimate(values[key], n) for key, n in counts.items() if key in values}


def category_spread(estimates: Mapping[str, Estimate]) -> tuple[float, float]:
    """Population standard deviation and range (max - min) of the category accuracies."""
    values = [estimate.value for estimate in estimates.values()]
    if not values:
        return math.nan, math.nan
    return float(np.std(values)), float(max(values) - min(values))


@dataclass(frozen=True)
class DegenerationCount:
    """Degenerate outputs of a job after and before its edits, and which rules fired."""

    post: Estimate
    pre: Estimate
    reasons: dict[str, int]


def degeneration_counts(records: Sequence[Record]) -> DegenerationCount:
    """Over every probe of every record: degenerate post- and pre-edit outputs."""
    post_reasons: Counter[str] = Counter()
    pre_degenerate = total = 0
    for record in records:
        for judged in record["probes"]:
            total += 1
            reason = detect_degeneration(judged["post_output"]).reason
            if reason is not None:
                post_reasons[reason] += 1
            pre_degenerate += detect_degeneration(judged["pre_output"]).degenerate
    return DegenerationCount(
        post=Estimate(_share(sum(post_reasons.values()), total), total),
        pre=Estimate(_share(pre_degenerate, total), total),
        reasons=dict(post_reasons),
    )


def _share(count: int, total: int) -> float:
    return count / total if total else math.nan


# --------------------------------------------------------------------------- jobs


@dataclass(frozen=True)
class Job:
    """One edit run as a report sees it: a column label, its records, where it came from.

    `categories` maps a case id to the knowledge categories of its portability probes, in
    probe order (from the dataset; a judged probe's own `category` field wins); `aggregation`
    is the run's `eval.aggregation`; `rank` where the job's rows and columns go
    (`method_display`); `config` the run's saved config (empty when it has none).
    """

    label: str
    records: list[Record]
    directory: Path | None = None
    categories: Mapping[str, tuple[str | None, ...]] = field(default_factory=dict)
    aggregation: str = "reference"
    rank: float = math.inf
    config: Mapping[str, Any] = field(default_factory=dict)

    @cached_property
    def single(self) -> dict[str, Estimate]:
        return single_estimates(self.records, self.aggregation)

    @cached_property
    def sequential(self) -> dict[str, Estimate]:
        return sequential_estimates(self.records, self.aggregation)

    @cached_property
    def degeneration(self) -> DegenerationCount:
        return degeneration_counts(self.records)

    @property
    def protocol(self) -> str:
        return str(self.records[0]["protocol"]) if self.records else "single"

    def field_of(self, key: str) -> str:
        return str(self.records[0].get(key, "")) if self.records else ""


def method_display(config: Mapping[str, Any], method: str) -> tuple[str, float]:
    """How a run's method is named in tables and where its row goes: its config's `display`
    block (`method.display.name`, `.rank`); a run without one keeps the method's own name
    and goes last."""
    display = (config.get("method") or {}).get("display") or {}
    return str(display.get("name", method)), float(display.get("rank", math.inf))


def portability_categories(cases: Iterable[EditCase]) -> dict[str, tuple[str | None, ...]]:
    """Case id -> knowledge categories of its portability probes, in order."""
    return {case.case_id: tuple(probe.category for probe in case.portability) for case in cases}


def dataset_categories(config: Mapping[str, Any]) -> dict[str, tuple[str | None, ...]]:
    """Portability categories of the cases a run's resolved config names; {} when unreadable.

    Only a dataset already on disk is read: a report never generates a corpus.
    """
    dataset = config.get("dataset") or {}
    root = dataset.get("root")
    if not root or not (Path(str(root)) / "data").is_dir():
        return {}
    split = (config.get("task") or {}).get("split") or dataset.get("split") or "test"
    sequential = (config.get("eval") or {}).get("protocol") == "sequential"
    release = load_release(
        Path(str(root)), splits=() if sequential else (split,), with_sequences=sequential
    )
    return portability_categories(release.all_cases())


def read_config(directory: Path) -> dict[str, Any]:
    """A run directory's resolved `config.yaml` as plain data ({} when it has none)."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        return {}
    loaded = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    return loaded if isinstance(loaded, dict) else {}


def load_job(directory: Path, records_file: str = RECORDS_FILE) -> Job:
    """A run directory (records, config, dataset categories) as a report job."""
    directory = Path(directory)
    path = directory / records_file
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist; name a run directory written by `python edit.py` "
            "(it holds records.jsonl)"
        )
    records = read_records(path)
    if not records:
        raise ValueError(f"{path} holds no records; the run finished no edit")
    config = read_config(directory) or read_config(directory.parent)
    label, rank = method_display(config, str(records[0].get("method", directory.name)))
    categories = dataset_categories(config)
    return Job(label, records, directory, categories, saved_aggregation(config), rank, config)


def distinct_labels(jobs: Sequence[Job]) -> list[Job]:
    """Jobs in their methods' display order; jobs sharing a label get what sets them apart.

    That is the command-line overrides (`.hydra/overrides.yaml`) the job does not share with
    the others of its label, or else its directory name.
    """
    overrides = {id(job): set(job_overrides(job.directory)) for job in jobs}
    renamed = []
    for job in jobs:
        twins = [other for other in jobs if other.label == job.label]
        if len(twins) == 1:
            renamed.append(job)
            continue
        shared = set.intersection(*(overrides[id(twin)] for twin in twins))
        own = sorted(overrides[id(job)] - shared)
        detail = ", ".join(own) or (job.directory.name if job.directory else str(twins.index(job)))
        renamed.append(replace(job, label=f"{job.label} ({detail})"))
    return sorted(renamed, key=_job_order)


def job_overrides(directory: Path | None) -> list[str]:
    """The command-line overrides Hydra recorded for a job ([] when it recorded none)."""
    path = None if directory is None else Path(directory) / ".hydra" / "overrides.yaml"
    if path is None or not path.is_file():
        return []
    return [str(item) for item in OmegaConf.load(path)]


def _job_order(job: Job) -> tuple[float, str]:
    return job.rank, job.label


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class Ranked:
    """A table cell: an estimate and whether it is the best or second best of its row."""

    estimate: Estimate | None
    rank: int | None = None


def ranked_row(estimates: Sequence[Estimate | None]) -> list[Ranked]:
    """Mark the best and second-best values of a row (equal after rounding: equal rank)."""
    shown = sorted({round(100 * e.value, 1) for e in estimates if e is not None}, reverse=True)
    return [
        Ranked(e, None if e is None else _rank(shown, round(100 * e.value, 1))) for e in estimates
    ]


def _rank(shown: Sequence[float], value: float) -> int | None:
    position = shown.index(value)
    return position + 1 if position < 2 and len(shown) > 1 else None


def format_cell(cell: Ranked, *, interval: bool = True) -> str:
    """`81.3 [78.0, 84.2]`, bold for the best value, underlined for the second best."""
    if cell.estimate is None:
        return "–"
    text = f"{100 * cell.estimate.value:.1f}"
    if cell.rank == 1:
        text = f"**{text}**"
    elif cell.rank == 2:
        text = f"<ins>{text}</ins>"
    if interval:
        low, high = cell.estimate.interval
        text += f" [{100 * low:.1f}, {100 * high:.1f}]"
    return text


def main_rows(jobs: Sequence[Job]) -> list[tuple[str, list[Estimate | None]]]:
    """SAKE's Table 2: one row per headline metric, one estimate per single-editing job."""
    return [
        (title, [job.single.get(f"single/{metric}") for job in jobs]) for metric, title in HEADLINE
    ]


def type_rows(attribute: str | None) -> list[tuple[str, str]]:
    """(metric key, row title) of a per-attribute table (None: over all attributes)."""
    loc_types = locality_audio_types(attribute) if attribute else (1, 2, 3, 4)
    types = {"generality": (1, 2, 3), "locality_audio": loc_types}
    rows = []
    for metric, title in HEADLINE:
        rows += [(f"{metric}/type{t}", f"{title} type {t}") for t in types.get(metric, ())]
        rows.append((metric, title))
        if metric in LOCALITY_KINDS:
            rows += [
                (f"{metric}/gt_pre", f"{title}, GT accuracy before"),
                (f"{metric}/gt_post", f"{title}, GT accuracy after"),
            ]
    return rows


def attribute_rows(
    jobs: Sequence[Job], attribute: str | None
) -> list[tuple[str, list[Estimate | None]]]:
    prefix = "single" if attribute is None else f"single/{attribute}"
    return [
        (title, [job.single.get(f"{prefix}/{key}") for job in jobs])
        for key, title in type_rows(attribute)
    ]


def portability_by_category(job: Job) -> dict[str, dict[str, Estimate]]:
    """Attribute -> knowledge category -> accuracy of its portability probes."""
    tallies: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for record in job.records:
        known = job.categories.get(record["case_id"], ())
        portability = [j for j in record["probes"] if j["kind"] == "portability"]
        for index, judged in enumerate(portability):
            category = judged.get("category") or (known[index] if index < len(known) else None)
            if category:
                tallies[record["attribute"]][category].append(float(judged["score"]))
    return {
        attribute: {
            category: Estimate(float(np.mean(scores)), len(scores))
            for category, scores in sorted(categories.items())
        }
        for attribute, categories in sorted(tallies.items())
    }


def sequential_rows(jobs: Sequence[Job], metric: str) -> list[tuple[str, list[Estimate | None]]]:
    return [
        (str(gap), [job.sequential.get(f"sequential/{metric}/gap{gap}") for job in jobs])
        for gap in GAPS
    ]


# --------------------------------------------------------------------------- markdown


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def ranked_table(
    corner: str,
    labels: Sequence[str],
    rows: Sequence[tuple[str, list[Estimate | None]]],
    *,
    interval: bool = True,
) -> str:
    body = [
        [title, *(format_cell(cell, interval=interval) for cell in ranked_row(estimates))]
        for title, estimates in rows
    ]
    return markdown_table([corner, *labels], body)


def _jobs_section(jobs: Sequence[Job]) -> str:
    rows = [
        [
            job.label,
            job.field_of("method"),
            job.field_of("model"),
            job.protocol,
            len(job.records),
            "–" if job.directory is None else f"`{job.directory.name}`",
        ]
        for job in jobs
    ]
    table = markdown_table(["job", "method", "model", "protocol", "records", "run"], rows)
    return "## Jobs\n\n" + table


def _figure(title: str, name: str) -> str:
    return f"![{title}]({name})"


def _main_section(jobs: Sequence[Job], figures: Mapping[str, str]) -> str:
    labels = [job.label for job in jobs]
    parts = [
        "## Single editing (SAKE Table 2 layout)",
        "Mean over attributes, in percent, with Wilson 95% intervals; **best**, "
        "<ins>second best</ins>.",
        ranked_table("metric", labels, main_rows(jobs)),
        _figure("headline metrics", figures["main"]),
    ]
    return "\n\n".join(parts)


def _attribute_section(jobs: Sequence[Job], figures: Mapping[str, str]) -> str:
    labels = [job.label for job in jobs]
    present = sorted({r["attribute"] for job in jobs for r in job.records}, key=_attribute_order)
    parts = [
        "## Per attribute and type (SAKE Tables 8-10, Figure 3)",
        "### All attributes",
        ranked_table("metric", labels, attribute_rows(jobs, None)),
        _figure("generality and locality types", figures["types"]),
    ]
    if "type_radar" in figures:
        parts.append(_figure("type breakdown radar", figures["type_radar"]))
    for attribute in present:
        parts += [
            f"### {attribute}",
            ranked_table("metric", labels, attribute_rows(jobs, attribute)),
        ]
    return "\n\n".join(parts)


def _attribute_order(attribute: str) -> tuple[int, str]:
    return (ATTRIBUTES.index(attribute) if attribute in ATTRIBUTES else len(ATTRIBUTES), attribute)


def _portability_section(jobs: Sequence[Job], figures: Mapping[str, str]) -> str:
    by_job = [portability_by_category(job) for job in jobs]
    attributes = sorted({a for found in by_job for a in found}, key=_attribute_order)
    heading = "## Portability by knowledge category (SAKE Tables 3, 14-17)"
    if not attributes:
        return f"{heading}\n\nThe data name no knowledge categories for portability probes."
    labels = [job.label for job in jobs]
    parts = [heading]
    spread_rows = []
    for attribute in attributes:
        categories = sorted({c for found in by_job for c in found.get(attribute, {})})
        rows = [
            (
                f"{category} (n={_category_n(by_job, attribute, category)})",
                [found.get(attribute, {}).get(category) for found in by_job],
            )
            for category in categories
        ]
        parts += [f"### {attribute}", ranked_table("category", labels, rows, interval=False)]
        spreads = [category_spread(found.get(attribute, {})) for found in by_job]
        spread_rows.append([f"{attribute} std", *(_percent(std) for std, _ in spreads)])
        spread_rows.append([f"{attribute} range", *(_percent(span) for _, span in spreads)])
    parts += [
        "### Spread over categories",
        "Population standard deviation and range (max − min) of the category accuracies.",
        markdown_table(["attribute", *labels], spread_rows),
        _figure("portability by category", figures["portability"]),
    ]
    return "\n\n".join(parts)


def _category_n(
    by_job: Sequence[Mapping[str, Mapping[str, Estimate]]], attribute: str, category: str
) -> int:
    return max(found.get(attribute, {}).get(category, Estimate(0.0, 0)).n for found in by_job)


def _percent(value: float) -> str:
    return "–" if math.isnan(value) else f"{100 * value:.1f}"


def _sequential_section(jobs: Sequence[Job], figures: Mapping[str, str]) -> str:
    labels = [job.label for job in jobs]
    parts = [
        "## Sequential editing by gap (SAKE Figure 4)",
        "Gap = evaluation step − edit step, over the first five edits of each sequence; "
        "Wilson 95% intervals.",
    ]
    for metric, title in HEADLINE:
        parts += [
            f"### {title}",
            ranked_table("gap", labels, sequential_rows(jobs, metric)),
            _figure(f"{title} by gap", figures[f"sequential_{metric}"]),
        ]
    parts.append(
        _figure("interference heatmap, every metric by gap", figures["sequential_heatmap"])
    )
    return "\n\n".join(parts)


def _degeneration_section(jobs: Sequence[Job], figures: Mapping[str, str]) -> str:
    counts = [job.degeneration for job in jobs]
    reasons = sorted({reason for count in counts for reason in count.reasons})
    rows = [
        ["degenerate after edit", *(format_cell(Ranked(c.post)) for c in counts)],
        ["degenerate before edit", *(format_cell(Ranked(c.pre)) for c in counts)],
        ["outputs", *(c.post.n for c in counts)],
        *([f"rule: {reason}", *(c.reasons.get(reason, 0) for c in counts)] for reason in reasons),
    ]
    parts = [
        "## Degeneration (SAKE Table 18)",
        "Share of outputs, over every probe of every record, that loop, stall or are empty "
        "(rules: `sake.evaluation.degeneration`); rule rows count post-edit outputs.",
        markdown_table(["", *(job.label for job in jobs)], rows),
        _figure("degeneration ratio", figures["degeneration"]),
    ]
    return "\n\n".join(parts)


def _specificity_section(jobs: Sequence[Job]) -> str | None:
    metrics = [single_metrics(job.records, job.aggregation) for job in jobs]
    present = [m for m in SPECIFICITY_METRICS if any(f"single/locality/{m}" in f for f in metrics)]
    if not present:
        return None
    rows = [
        [SPECIFICITY_LABELS[m], *(_plain(found.get(f"single/locality/{m}")) for found in metrics)]
        for m in present
    ]
    return "\n\n".join(
        [
            "## Specificity of the locality probes",
            "GT-free (KL, top-k overlap in percent) and GT-based (S-, T-, C-acc) scores, pooled "
            "over audio and text locality probes.",
            markdown_table(["metric", *(job.label for job in jobs)], rows),
        ]
    )


def _overfitting_section(jobs: Sequence[Job]) -> str:
    counts = [overfitting_counts(job.records) for job in jobs]
    types = sorted({type_ for found in counts for type_ in found})
    rows = [
        [
            f"type {type_}",
            *(_share_text(*found[type_]) if type_ in found else "–" for found in counts),
        ]
        for type_ in types
    ]
    return "\n\n".join(
        [
            "## Audio-locality overfitting",
            "Of the audio-locality probes an edit made inconsistent, the share answered with "
            "exactly the edited reliability answer (the reference's "
            "`calculate_audio_loc_overfitting.py`; it reports type 2).",
            markdown_table(["type", *(job.label for job in jobs)], rows)
            if rows
            else "No audio-locality probe became inconsistent.",
        ]
    )


def _analysis_section(figures: Mapping[str, str]) -> str:
    return "\n\n".join(
        [
            "## Analyses of the SAKE paper",
            "Generality type 3 (other clips of the edited label) against audio locality type 2 "
            "(other clips of the original label), one point per job with the least-squares "
            "line; and, per audio-locality type, its locality against its entanglement (the "
            "share of its inconsistent probes answered with the edit's answer).",
            _figure("generality type 3 vs audio locality type 2", figures["generality3_locality2"]),
            _figure("audio-locality entanglement", figures["entanglement"]),
        ]
    )


def _share_text(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f} ({part}/{whole})"


def _plain(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def render_markdown(title: str, jobs: Sequence[Job], figures: Mapping[str, str]) -> str:
    single = [job for job in jobs if job.protocol == "single"]
    sequential = [job for job in jobs if job.protocol == "sequential"]
    sections = [f"# {title}", _jobs_section(jobs)]
    if single:
        sections += [
            _main_section(single, figures),
            _attribute_section(single, figures),
            _portability_section(single, figures),
        ]
        specificity = _specificity_section(single)
        if specificity:
            sections.append(specificity)
        sections.append(_overfitting_section(single))
        sections.append(_analysis_section(figures))
    if sequential:
        sections.append(_sequential_section(sequential, figures))
    sections.append(_degeneration_section(jobs, figures))
    return "\n\n".join(sections) + "\n"


# --------------------------------------------------------------------------- figures


def write_figures(jobs: Sequence[Job], directory: Path) -> dict[str, Path]:
    """Every figure the report shows, as PNGs in `directory`; key -> path."""
    single = [job for job in jobs if job.protocol == "single"]
    sequential = [job for job in jobs if job.protocol == "sequential"]
    figures: dict[str, Path] = {}
    if single:
        labels = [job.label for job in single]
        figures["main"] = report_figures.grouped_bars(
            [title for _, title in HEADLINE],
            dict(zip(labels, _columns(main_rows(single)), strict=True)),
            "Single editing",
            directory / "main.png",
        )
        figures["types"] = report_figures.type_profiles(
            labels, attribute_rows(single, None), directory / "types.png"
        )
        by_job = dict(zip(labels, (portability_by_category(job) for job in single), strict=True))
        if any(by_job.values()):
            figures["portability"] = report_figures.portability_categories(
                by_job, directory / "portability.png"
            )
        figures.update(_analysis_figures(single, directory))
    for metric, title in HEADLINE if sequential else ():
        rows = sequential_rows(sequential, metric)
        series = dict(zip([job.label for job in sequential], _columns(rows), strict=True))
        figures[f"sequential_{metric}"] = report_figures.gap_lines(
            series, title, directory / f"sequential_{metric}.png"
        )
    if sequential:
        figures["sequential_heatmap"] = report_figures.sequential_heatmap(
            [job.label for job in sequential],
            {
                title: [row for _, row in sequential_rows(sequential, metric)]
                for metric, title in HEADLINE
            },
            directory / "sequential_heatmap.png",
        )
    figures["degeneration"] = report_figures.grouped_bars(
        ["after edit", "before edit"],
        {job.label: [job.degeneration.post, job.degeneration.pre] for job in jobs},
        "Degenerate outputs",
        directory / "degeneration.png",
    )
    return figures


def _analysis_figures(jobs: Sequence[Job], directory: Path) -> dict[str, Path]:
    """The SAKE paper's analyses of single editing (`model_outputs/paper_utils/plot_scripts/`)."""
    figures = {
        "generality3_locality2": report_figures.trend_scatter(
            {
                job.label: (
                    _percent_of(job.single.get("single/generality/type3")),
                    _percent_of(job.single.get("single/locality_audio/type2")),
                )
                for job in jobs
            },
            ("Generality type 3 (%)", "Audio locality type 2 (%)"),
            "Generality to other clips vs locality of the original label",
            directory / "generality3_locality2.png",
        ),
        "entanglement": report_figures.entanglement_scatter(
            entanglement_points(jobs), directory / "entanglement.png"
        ),
    }
    if len(jobs) >= RADAR_MIN_JOBS:
        figures["type_radar"] = report_figures.type_radar(
            [job.label for job in jobs], attribute_rows(jobs, None), directory / "type_radar.png"
        )
    return figures


def entanglement_points(jobs: Sequence[Job]) -> dict[int, dict[str, tuple[float, float]]]:
    """Per audio-locality type the reference plots: job -> (locality, entanglement) in percent.

    Entanglement is the share of the type's inconsistent probes answered with the edit's
    answer; NaN where no probe of the type became inconsistent.
    """
    counts = {job.label: overfitting_counts(job.records) for job in jobs}
    points: dict[int, dict[str, tuple[float, float]]] = {}
    for type_ in ENTANGLEMENT_TYPES:
        for job in jobs:
            overfit, failed = counts[job.label].get(type_, (0, 0))
            locality = _percent_of(job.single.get(f"single/locality_audio/type{type_}"))
            if not math.isnan(locality):
                entangled = 100 * overfit / failed if failed else math.nan
                points.setdefault(type_, {})[job.label] = (locality, entangled)
    return points


def _percent_of(estimate: Estimate | None) -> float:
    return math.nan if estimate is None else 100 * estimate.value


def _columns(rows: Sequence[tuple[str, list[Estimate | None]]]) -> list[list[Estimate | None]]:
    """Per job, its estimates down the rows."""
    return [list(column) for column in zip(*(estimates for _, estimates in rows), strict=True)]


# --------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class Report:
    """What `write_report` wrote and what a tracker gets of it."""

    path: Path
    figures: dict[str, Path]
    tables: dict[str, Table]
    summary: dict[str, float]
    headline: str


def write_report(jobs: Sequence[Job], directory: Path, title: str) -> Report:
    """Write `report.md` and its figures into `directory`; every job needs records."""
    if not jobs:
        raise ValueError("a report needs at least one job with records")
    jobs = distinct_labels(jobs)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    figures = write_figures(jobs, directory)
    names = {key: path.name for key, path in figures.items()}
    path = directory / REPORT_FILE
    atomic_write_text(path, render_markdown(title, jobs, names))
    return Report(path, figures, report_tables(jobs), summary_metrics(jobs), headline(jobs))


def headline(jobs: Sequence[Job]) -> str:
    """The main table (single editing) and reliability by gap (sequential), for a console."""
    single = [job for job in jobs if job.protocol == "single"]
    sequential = [job for job in jobs if job.protocol == "sequential"]
    parts = []
    if single:
        parts.append(ranked_table("metric", [j.label for j in single], main_rows(single)))
    if sequential:
        labels = [job.label for job in sequential]
        rows = sequential_rows(sequential, "reliability")
        parts.append(ranked_table("reliability by gap", labels, rows))
    return "\n\n".join(parts)


def report_tables(jobs: Sequence[Job]) -> dict[str, Table]:
    """The report's main tables as (columns, rows) of numbers, for a tracker."""
    tables: dict[str, Table] = {}
    single = [job for job in jobs if job.protocol == "single"]
    sequential = [job for job in jobs if job.protocol == "sequential"]
    if single:
        tables["report/main"] = _numeric_table(single, main_rows(single))
        tables["report/types"] = _numeric_table(single, attribute_rows(single, None))
    for metric, _ in HEADLINE if sequential else ():
        tables[f"report/sequential/{metric}"] = _numeric_table(
            sequential, sequential_rows(sequential, metric)
        )
    return tables


def _numeric_table(jobs: Sequence[Job], rows: Sequence[tuple[str, list[Estimate | None]]]) -> Table:
    columns = ["row", *(job.label for job in jobs)]
    body = [[title, *(None if e is None else e.value for e in found)] for title, found in rows]
    return columns, body


def summary_metrics(jobs: Sequence[Job]) -> dict[str, float]:
    """Every job's metrics with Wilson bounds of the headline numbers and its degeneration.

    A single job's keys are its metric names; several jobs are prefixed with their labels.
    """
    summary: dict[str, float] = {}
    for job in jobs:
        prefix = "" if len(jobs) == 1 else f"{job.label}/"
        summary.update({f"{prefix}{key}": value for key, value in _job_summary(job).items()})
    return summary


def _job_summary(job: Job) -> dict[str, float]:
    """The run's metrics (as `run_metrics` gives them), the headline's 95% intervals, and the
    share of degenerate outputs."""
    if job.protocol == "single":
        estimates = job.single
        headline = [f"single/{metric}" for metric, _ in HEADLINE]
    else:
        estimates = job.sequential
        headline = [f"sequential/{m}/gap{g}" for m, _ in HEADLINE for g in GAPS]
    summary = run_metrics(job.protocol, job.records, job.aggregation)
    for key in headline:
        if key in estimates:
            low, high = estimates[key].interval
            summary[f"{key}/ci95_low"], summary[f"{key}/ci95_high"] = low, high
    count = job.degeneration
    summary[f"{job.protocol}/degeneration/post"] = count.post.value
    summary[f"{job.protocol}/degeneration/pre"] = count.pre.value
    return {key: value for key, value in summary.items() if math.isfinite(value)}


def case_table(jobs: Sequence[Job]) -> Table:
    """One row per record of every job: what was edited and its score per headline metric."""
    columns = [
        "job",
        "case_id",
        "sequence",
        "step",
        "gap",
        "attribute",
        "y_o",
        "y_e",
        *(metric for metric, _ in HEADLINE),
        "degenerate_outputs",
    ]
    rows = []
    for job in jobs:
        for record in job.records:
            scores = case_scores(record)
            degenerate = sum(
                detect_degeneration(j["post_output"]).degenerate for j in record["probes"]
            )
            rows.append(
                [
                    job.label,
                    record["case_id"],
                    record.get("sequence"),
                    record.get("step"),
                    record.get("gap"),
                    record["attribute"],
                    record["y_o"],
                    record["y_e"],
                    *(scores.get(metric) for metric, _ in HEADLINE),
                    degenerate,
                ]
            )
    return columns, rows


def log_report(report: Report, tracker: Tracker, cases: Table | None = None) -> None:
    """Give a tracker the report's summary, tables, figures and the Markdown file itself."""
    tracker.log_summary(report.summary)
    for key, (columns, rows) in report.tables.items():
        tracker.log_table(key, columns, rows)
    if cases is not None:
        tracker.log_table("report/cases", *cases)
    for key, path in report.figures.items():
        tracker.log_image(f"report/figure/{key}", path)
    tracker.log_file(report.path)


def publish_run_report(
    directory: Path,
    records: Sequence[Record],
    tracker: Tracker,
    categories: Mapping[str, tuple[str | None, ...]] | None = None,
    aggregation: str = "reference",
) -> Report | None:
    """The report of one edit run, written into its directory and logged (no records: none).

    The per-case table is left to the caller, which logs its own records table.
    """
    if not records:
        return None
    label, rank = method_display(read_config(Path(directory)), str(records[0]["method"]))
    job = Job(label, list(records), Path(directory), categories or {}, aggregation, rank)
    report = write_report([job], directory, f"{job.label} on {job.field_of('model')}")
    log_report(report, tracker)
    return report

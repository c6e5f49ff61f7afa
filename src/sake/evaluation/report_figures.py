"""The figures of a report (`sake.evaluation.report`), drawn with matplotlib's Agg backend.

Every function takes estimates (a proportion and the probes behind it, with a Wilson 95%
interval), draws them in percent with the interval as an error bar or band, writes one PNG
and returns its path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sake.evaluation.metrics import GAPS

if TYPE_CHECKING:
    from sake.evaluation.report import Estimate

Series = Mapping[str, Sequence["Estimate | None"]]
DPI = 120


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def _percent(estimate: Estimate | None) -> tuple[float, float, float]:
    """Value, distance to the lower and to the upper bound, in percent (NaN when absent)."""
    if estimate is None:
        return math.nan, 0.0, 0.0
    low, high = estimate.interval
    value = 100 * estimate.value
    return value, max(value - 100 * low, 0.0), max(100 * high - value, 0.0)


def _bars(axes: Any, groups: Sequence[str], series: Series) -> None:
    width = 0.8 / max(len(series), 1)
    positions = np.arange(len(groups))
    for number, (label, estimates) in enumerate(series.items()):
        values, below, above = zip(*(_percent(e) for e in estimates), strict=True)
        offset = (number - (len(series) - 1) / 2) * width
        axes.bar(positions + offset, values, width, yerr=[below, above], capsize=2, label=label)
    axes.set_xticks(positions, groups, fontsize=8)
    axes.set_ylabel("%")
    axes.set_ylim(0, 105)


def _save(figure: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    _pyplot().close(figure)
    return path


def grouped_bars(groups: Sequence[str], series: Series, title: str, path: Path) -> Path:
    """One bar per series within each group, with Wilson intervals."""
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(figsize=(max(6.0, 1.4 * len(groups) + 2), 4.0))
    _bars(axes, groups, series)
    axes.set_title(title)
    axes.legend(fontsize=7, ncol=min(len(series), 4))
    return _save(figure, path)


def type_profiles(
    labels: Sequence[str],
    rows: Sequence[tuple[str, Sequence[Estimate | None]]],
    path: Path,
) -> Path:
    """SAKE's Figure 3: generality types (left) and audio-locality types (right) per job."""
    by_title = dict(rows)
    panels = (
        ("Generality", [f"Generality type {t}" for t in (1, 2, 3)]),
        ("Audio locality", [f"Audio locality type {t}" for t in (1, 2, 3, 4)]),
    )
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(1, 2, figsize=(12, 4.0))
    for panel, (title, row_titles) in zip(axes, panels, strict=True):
        present = [row for row in row_titles if row in by_title]
        series = {
            label: [by_title[row][number] for row in present] for number, label in enumerate(labels)
        }
        _bars(panel, [f"type {row[-1]}" for row in present], series)
        panel.set_title(title)
    axes[0].legend(fontsize=7)
    return _save(figure, path)


def gap_lines(series: Series, title: str, path: Path) -> Path:
    """SAKE's Figure 4 for one metric: the metric by gap, one line (and band) per job."""
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(figsize=(6, 4.0))
    for label, estimates in series.items():
        values, below, above = np.array([_percent(e) for e in estimates]).T
        axes.plot(GAPS, values, "o-", label=label)
        axes.fill_between(GAPS, values - below, values + above, alpha=0.15)
    axes.set_xticks(GAPS)
    axes.set_xlabel("gap (evaluation step − edit step)")
    axes.set_ylabel(f"{title} (%)")
    axes.set_ylim(0, 105)
    axes.set_title(f"Sequential editing: {title}")
    axes.legend(fontsize=7)
    return _save(figure, path)


def portability_categories(
    by_job: Mapping[str, Mapping[str, Mapping[str, Estimate]]], path: Path
) -> Path:
    """Portability per knowledge category, one panel per attribute, one bar per job."""
    attributes = sorted({attribute for found in by_job.values() for attribute in found})
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(
        len(attributes), 1, figsize=(10, 3.2 * len(attributes)), squeeze=False
    )
    for panel, attribute in zip(axes[:, 0], attributes, strict=True):
        categories = sorted({c for found in by_job.values() for c in found.get(attribute, {})})
        series = {
            label: [found.get(attribute, {}).get(category) for category in categories]
            for label, found in by_job.items()
        }
        _bars(panel, categories, series)
        panel.set_title(f"Portability by category: {attribute}")
    axes[0, 0].legend(fontsize=7, ncol=min(len(by_job), 4))
    return _save(figure, path)

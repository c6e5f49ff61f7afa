"""The figures of a report (`sake.evaluation.report`), drawn with matplotlib's Agg backend.

Every function takes estimates (a proportion and the probes behind it, with a Wilson 95%
interval), draws them in percent with the interval as an error bar or band, writes one PNG
and returns its path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sake.evaluation.estimates import Estimate
from sake.evaluation.metrics import GAPS

Series = Mapping[str, Sequence[Estimate | None]]
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
    if figure.get_layout_engine() is None:
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


def type_radar(
    labels: Sequence[str],
    rows: Sequence[tuple[str, Sequence[Estimate | None]]],
    path: Path,
) -> Path:
    """The reference's type-breakdown radar: jobs as spokes, one polygon per probe type.

    Left, generality types 1-3; right, audio-locality types 1-4; a type a job lacks sits at 0.
    """
    by_title = dict(rows)
    panels = (
        ("Generality", [f"Generality type {t}" for t in (1, 2, 3)]),
        ("Audio locality", [f"Audio locality type {t}" for t in (1, 2, 3, 4)]),
    )
    angles = np.linspace(0, 2 * np.pi, len(labels), endpoint=False)
    closed = np.append(angles, angles[:1])
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(1, 2, figsize=(12, 5.5), subplot_kw={"polar": True})
    for panel, (title, row_titles) in zip(axes, panels, strict=True):
        panel.set_theta_offset(np.pi / 2)
        panel.set_theta_direction(-1)
        for row in (row for row in row_titles if row in by_title):
            values = np.nan_to_num([_percent(e)[0] for e in by_title[row]])
            polygon = np.append(values, values[:1])
            panel.plot(closed, polygon, "o-", linewidth=1.5, markersize=3, label=f"type {row[-1]}")
            panel.fill(closed, polygon, alpha=0.05)
        panel.set_xticks(angles)
        panel.set_xticklabels(labels, fontsize=8)
        panel.set_ylim(0, 105)
        panel.set_title(title, pad=18)
        panel.legend(fontsize=7, loc="upper right", bbox_to_anchor=(1.25, 1.1))
    return _save(figure, path)


def trend_scatter(
    points: Mapping[str, tuple[float, float]],
    axis_titles: tuple[str, str],
    title: str,
    path: Path,
) -> Path:
    """One labelled point per job, with the least-squares line and Pearson's r when it exists.

    The reference draws generality type 3 against audio-locality type 2 this way
    (`gen3_loc2_scatter.py`): a method that generalises to other clips of the edited label
    tends to change answers about other clips of the original label too.
    """
    shown = _finite(points)
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(figsize=(6, 6))
    for x, y in shown.values():  # one call per point: each job its own colour
        axes.scatter(x, y, s=60, edgecolors="black")
    _label_points(axes, shown)
    xs, ys = (
        (np.array(values) for values in zip(*shown.values(), strict=True)) if shown else ([], [])
    )
    if len(set(np.round(xs, 9))) >= 2:
        slope, intercept = np.polyfit(xs, ys, 1)
        line = np.array([0.0, 100.0])
        axes.plot(line, slope * line + intercept, "r--", linewidth=1.2)
        r = np.corrcoef(xs, ys)[0, 1] if len(set(np.round(ys, 9))) >= 2 else math.nan
        axes.text(
            0.04,
            0.95,
            f"y = {slope:.3f}x {'+' if intercept >= 0 else '-'} {abs(intercept):.1f}, r = {r:.2f}",
            transform=axes.transAxes,
            fontsize=9,
            va="top",
            bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "grey"},
        )
    _percent_plane(axes, *axis_titles, title)
    return _save(figure, path)


def entanglement_scatter(
    points: Mapping[int, Mapping[str, tuple[float, float]]], path: Path
) -> Path:
    """The reference's entanglement scatter: per audio-locality type (colour) and job (label),
    the type's locality score against the share of its failures answered with the edit's answer."""
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(figsize=(6, 6))
    for type_, by_job in sorted(points.items()):
        shown = _finite(by_job)
        if not shown:
            continue
        xs, ys = zip(*shown.values(), strict=True)
        axes.scatter(xs, ys, s=60, edgecolors="black", label=f"type {type_}")
        _label_points(axes, shown)
    _percent_plane(
        axes,
        "Audio locality of the type (%)",
        "Entanglement: failures answered with the edit's answer (%)",
        "Audio-locality entanglement",
    )
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize=8)
    return _save(figure, path)


def _finite(points: Mapping[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    """The points with both coordinates defined (a NaN marks a measure that does not exist)."""
    return {label: xy for label, xy in points.items() if not any(map(math.isnan, xy))}


def _label_points(axes: Any, points: Mapping[str, tuple[float, float]]) -> None:
    for label, (x, y) in points.items():
        axes.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)


def _percent_plane(axes: Any, x_title: str, y_title: str, title: str) -> None:
    """Both axes in percent, with room for the labels of points at 0 and 100."""
    axes.set_xlim(-3, 108)
    axes.set_ylim(-3, 108)
    axes.set_xlabel(x_title)
    axes.set_ylabel(y_title)
    axes.grid(True, linestyle="--", alpha=0.5)
    axes.set_title(title)


def sequential_heatmap(
    labels: Sequence[str], panels: Mapping[str, Sequence[Sequence[Estimate | None]]], path: Path
) -> Path:
    """The reference's interference heatmap: per metric, jobs (rows) by gap (columns), annotated.

    `panels` maps a metric title to its rows: one list per gap, one estimate per job.
    """
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(
        1,
        len(panels),
        figsize=(3.2 * len(panels) + 1.5, 0.5 * len(labels) + 2),
        squeeze=False,
        layout="constrained",
    )
    image = None
    for panel, (title, by_gap) in zip(axes[0], panels.items(), strict=True):
        grid = np.array([[_percent(e)[0] for e in row] for row in by_gap], dtype=float).T
        image = panel.imshow(grid, cmap="magma", vmin=0, vmax=100, aspect="auto")
        for (row, column), value in np.ndenumerate(grid):
            if not math.isnan(value):
                colour = "white" if value < 50 else "black"
                panel.text(
                    column, row, f"{value:.0f}", ha="center", va="center", color=colour, fontsize=7
                )
        panel.set_xticks(range(len(GAPS)), [str(gap) for gap in GAPS])
        panel.set_xlabel("gap")
        panel.set_yticks(range(len(labels)), labels if panel is axes[0][0] else [""] * len(labels))
        panel.set_title(title, fontsize=10)
    if image is not None:
        figure.colorbar(image, ax=list(axes[0]), fraction=0.02, pad=0.01, label="%")
    return _save(figure, path)

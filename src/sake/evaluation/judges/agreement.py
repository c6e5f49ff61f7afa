"""How far two judges, or a judge and human labels, agree: percent agreement and Cohen's κ.

Inputs are labels keyed by item id (`labels_by_id` turns verdicts into them); a label of
None means undecided. Only items that both sides label are compared; the others are
counted, so a report can say how much was left out. Labels may be any hashable values
(True/False from judges, or strings from a human annotation sheet) but must be spelled the
same on both sides.

Cohen's κ = (p_o - p_e) / (1 - p_e), with p_o the observed agreement and p_e the agreement
expected from each side's own label frequencies. When both sides give one and the same
label to every compared item, p_e = 1 and κ is undefined: it is reported as NaN.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sake.evaluation.judges.base import Verdict

Labels = Mapping[str, Hashable | None]
Record = Mapping[str, Any]
OVERALL = "overall"


@dataclass(frozen=True)
class Agreement:
    """Agreement over the items both sides decided, and how many were left out."""

    compared: int
    agreed: int
    percent: float
    kappa: float
    undecided: int
    unmatched: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def labels_by_id(verdicts: Iterable[Verdict]) -> dict[str, bool | None]:
    """Item id -> verdict label; an id judged twice keeps its last verdict."""
    return {verdict.item_id: verdict.label for verdict in verdicts}


def percent_agreement(pairs: Sequence[tuple[Hashable, Hashable]]) -> float:
    """Share of pairs with equal labels, in percent; NaN for no pairs."""
    if not pairs:
        return math.nan
    return 100.0 * sum(a == b for a, b in pairs) / len(pairs)


def cohens_kappa(pairs: Sequence[tuple[Hashable, Hashable]]) -> float:
    """Cohen's κ of paired labels; NaN when undefined (no pairs, or p_e = 1)."""
    total = len(pairs)
    agreed = sum(a == b for a, b in pairs)
    counts_a = Counter(a for a, _ in pairs)
    counts_b = Counter(b for _, b in pairs)
    chance = sum(counts_a[label] * counts_b[label] for label in counts_a)
    if total == 0 or chance == total * total:
        return math.nan
    return (agreed * total - chance) / (total * total - chance)


def agreement(a: Labels, b: Labels) -> Agreement:
    """Percent agreement and κ over the ids both `a` and `b` label."""
    shared = [item for item in a if item in b]
    pairs = [(a[item], b[item]) for item in shared if a[item] is not None and b[item] is not None]
    return Agreement(
        compared=len(pairs),
        agreed=sum(x == y for x, y in pairs),
        percent=percent_agreement(pairs),
        kappa=cohens_kappa(pairs),
        undecided=len(shared) - len(pairs),
        unmatched=len(set(a).symmetric_difference(b)),
    )


def agreement_by_metric(a: Labels, b: Labels, metric_of: Mapping[str, str]) -> dict[str, Agreement]:
    """`overall` over every item, then one entry per metric named in `metric_of` (id -> metric).

    Items without a metric count only towards `overall`.
    """
    results = {OVERALL: agreement(a, b)}
    for metric in sorted(set(metric_of.values())):
        ids = {item for item, name in metric_of.items() if name == metric}
        results[metric] = agreement(_restricted(a, ids), _restricted(b, ids))
    return results


def _restricted(labels: Labels, ids: set[str]) -> dict[str, Hashable | None]:
    return {item: label for item, label in labels.items() if item in ids}


# --------------------------------------------------------------------------- records


def item_ids(record: Record) -> list[str]:
    """The id of every probe of a record (see the module docstring)."""
    base = record["case_id"]
    if record.get("protocol") == "sequential":
        base = f"{base}@step{record['step']}"
    seen: Counter[str] = Counter()
    ids = []
    for judged in record["probes"]:
        seen[judged["name"]] += 1
        count = seen[judged["name"]]
        ids.append(f"{base}/{judged['name']}" + ("" if count == 1 else f"#{count}"))
    return ids


def verdict_labels(records: Sequence[Record]) -> tuple[dict[str, bool | None], dict[str, str]]:
    """Item id -> the verdict behind the probe's score, and item id -> its metric."""
    labels: dict[str, bool | None] = {}
    metric_of: dict[str, str] = {}
    for record in records:
        for item, judged in zip(item_ids(record), record["probes"], strict=True):
            labels[item] = bool(judged["score"])
            metric_of[item] = judged["kind"]
    return labels, metric_of


def agreement_metrics(results: Mapping[str, Agreement]) -> dict[str, float]:
    """`agreement/<overall|metric>/{percent,kappa,compared}` (NaN κ is left out)."""
    metrics: dict[str, float] = {}
    for name, found in results.items():
        metrics[f"agreement/{name}/compared"] = float(found.compared)
        for key, value in (("percent", found.percent), ("kappa", found.kappa)):
            if math.isfinite(value):
                metrics[f"agreement/{name}/{key}"] = value
    return metrics


def json_safe(values: Mapping[str, float | int]) -> dict[str, float | int | None]:
    """NaN (an undefined κ) becomes null, so that the file is standard JSON."""
    return {
        key: None if isinstance(value, float) and not math.isfinite(value) else value
        for key, value in values.items()
    }

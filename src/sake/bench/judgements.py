"""Whether two runs over the same cases judged every probe the same way."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sake.evaluation.records import Record, record_key

JUDGEMENT_FIELDS: tuple[str, ...] = (
    "pre_choice",
    "post_choice",
    "pre_correct",
    "post_correct",
    "consistent",
    "score",
)
OUTPUT_FIELDS: tuple[str, ...] = ("pre_output", "post_output")


@dataclass(frozen=True)
class ProbeDifference:
    """One probe judged differently: where it is, and both runs' outputs and verdicts."""

    record: Hashable
    probe: str
    ours: Mapping[str, Any]
    reference: Mapping[str, Any]

    def describe(self) -> str:
        fields = (*OUTPUT_FIELDS, *JUDGEMENT_FIELDS)
        differing = [name for name in fields if self.ours.get(name) != self.reference.get(name)]
        parts = [
            f"{name}: {self.ours.get(name)!r} vs {self.reference.get(name)!r}" for name in differing
        ]
        return f"{self.record} {self.probe}: " + "; ".join(parts)


@dataclass(frozen=True)
class JudgementComparison:
    """Probe-by-probe agreement of two record lists (ours first, then the reference)."""

    probes: int
    same_outputs: int
    differences: tuple[ProbeDifference, ...] = ()
    unmatched_records: tuple[Hashable, ...] = field(default=())

    @property
    def same_judgements(self) -> bool:
        return not self.differences and not self.unmatched_records and self.probes > 0


def compare_records(ours: Sequence[Record], reference: Sequence[Record]) -> JudgementComparison:
    """Match records by key and their probes by position; collect every verdict that differs."""
    ours_by_key = {record_key(record): record for record in ours}
    reference_by_key = {record_key(record): record for record in reference}
    unmatched = tuple(sorted(ours_by_key.keys() ^ reference_by_key.keys(), key=repr))
    probes = same_outputs = 0
    differences: list[ProbeDifference] = []
    for key in sorted(ours_by_key.keys() & reference_by_key.keys(), key=repr):
        pairs = _probe_pairs(ours_by_key[key], reference_by_key[key])
        if pairs is None:
            unmatched += (key,)
            continue
        for mine, theirs in pairs:
            probes += 1
            same_outputs += all(mine[name] == theirs[name] for name in OUTPUT_FIELDS)
            if any(mine[name] != theirs[name] for name in JUDGEMENT_FIELDS):
                differences.append(ProbeDifference(key, mine["name"], mine, theirs))
    return JudgementComparison(probes, same_outputs, tuple(differences), unmatched)


def _probe_pairs(
    ours: Record, reference: Record
) -> list[tuple[Mapping[str, Any], Mapping[str, Any]]] | None:
    """The two records' probes side by side, or None when they are not the same probes."""
    mine, theirs = ours["probes"], reference["probes"]
    same_probes = len(mine) == len(theirs) and all(
        a["name"] == b["name"] and a["question"] == b["question"]
        for a, b in zip(mine, theirs, strict=True)
    )
    return list(zip(mine, theirs, strict=True)) if same_probes else None

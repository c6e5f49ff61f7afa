"""Audio-locality overfitting, the SAKE reference's diagnostic
(`model_outputs/calculate_audio_loc_overfitting.py`).

Among the audio-locality probes of one type that an edit made inconsistent (post-edit output
judged inconsistent with the pre-edit one), the share whose post-edit output is, stripped,
the very text of the same record's post-edit reliability output: the edited model answers the
other clip with the edit's answer. Counts are pooled over all single-editing records (gender
has no type 2). The reference reports type 2 (same attribute, other label) by default;
`overfitting_metrics` gives every type.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from sake.data.schema import ProbeKind

Record = Mapping[str, Any]
AUDIO_LOCALITY = ProbeKind.LOCALITY_AUDIO.value
RELIABILITY = ProbeKind.RELIABILITY.value
KEY = "single/diagnostics/audio_locality_overfitting"


def overfitting_counts(records: Iterable[Record]) -> dict[int, tuple[int, int]]:
    """Per audio-locality type: (inconsistent probes answered with the edit's answer, all
    inconsistent probes)."""
    overfit: Counter[int] = Counter()
    failed: Counter[int] = Counter()
    for record in records:
        probes = record["probes"]
        reliability = next((p for p in probes if p["kind"] == RELIABILITY), None)
        if reliability is None:
            continue
        edited = reliability["post_output"].strip()
        for probe in probes:
            if probe["kind"] != AUDIO_LOCALITY or probe.get("consistent"):
                continue
            failed[probe["type"]] += 1
            overfit[probe["type"]] += probe["post_output"].strip() == edited
    return {type_: (overfit[type_], failed[type_]) for type_ in sorted(failed)}


def overfitting_metrics(records: Iterable[Record]) -> dict[str, float]:
    """`<KEY>/type<k>` (a fraction) and `<KEY>/type<k>/failed` (how many failed) for every type
    with an inconsistent probe (the reference would print 0 for the others)."""
    metrics: dict[str, float] = {}
    for type_, (overfit, failed) in overfitting_counts(records).items():
        metrics[f"{KEY}/type{type_}"] = overfit / failed
        metrics[f"{KEY}/type{type_}/failed"] = float(failed)
    return metrics

"""Judging probes and aggregating them the way SAKE (§3.2) does.

Each probe gets one score:
- reliability, generality, portability: the post-edit output is correct against the probe's
  answer (y_e, or the edited fact);
- audio and text locality: the post-edit output is consistent with the pre-edit output (the
  same option chosen, or no option on either side and the same normalised text).
Locality probes also get ground-truth accuracy before and after the edit (`gt_pre`,
`gt_post`: the pre- and post-edit outputs judged against the probe's own answer), which tells
an edit that keeps a wrong answer apart from one that keeps a right one.

Single editing, per attribute: every metric is the mean of its probes' scores (reliability
has one probe per case; audio locality is pooled over all its probes, types together);
`<metric>/type<k>` is the mean over probes of that type. Over all attributes, every key is
the unweighted mean of the per-attribute values of the attributes that have it (gender has no
audio-locality type 2, so `locality_audio/type2` averages the other three).

`aggregation="reference"` (the default, `eval.aggregation`) counts as the SAKE reference's
`model_outputs/calculate_acc_single.py` does: a correctness probe (reliability, generality,
portability) whose post-edit output is empty is left out of its metric, an output that is a
bare letter a-d scores by the option at that position, and the overall `locality_audio`
weighs each attribute by its number of audio-locality types (4, 4, 3, 4). In sequential
editing it pools the probes of every record at a gap (`calculate_acc_sequential.py`), where
`aggregation="project"` averages each record's mean; there the reference counts empty
outputs as wrong, as the project does everywhere.

Keys of `single_metrics`, all fractions in [0, 1]:
    single/reliability
    single/generality, single/generality/type1..3
    single/locality_audio, single/locality_audio/type1..4
    single/locality_audio/gt_pre, .../gt_post, single/locality_audio/type<k>/gt_pre, .../gt_post
    single/locality_text, single/locality_text/gt_pre, single/locality_text/gt_post
    single/portability
and the same under single/<Attribute>/... (Animal, Emotion, Gender, Language).

Sequential editing: `sequential/<metric>/gap<g>` pools, over every edit evaluated g steps
after it was applied (all sequences), the probes of that metric (`aggregation="project"`:
the mean over those edits of each edit's mean); `sequential/locality_audio/gt_post/gap<g>`
and the text equivalent give ground-truth accuracy after the edits at each gap.

Specificity (`sake.evaluation.specificity`), where the records carry it: every locality probe's
`specificity` scores are aggregated like the scores above, per group `locality` (audio and text
pooled), `locality_audio`, `locality_audio/type<k>` and `locality_text`:
    single/<group>/<m>, single/<Attribute>/<group>/<m>, sequential/<group>/<m>/gap<g>
with m one of `SPECIFICITY_METRICS`: `kl` in nats, `top1`/`top5`/`top10` in percent, `s_acc`,
`t_acc`, `c_acc` as fractions (`c_acc` only over the probes it applies to).

What editors report about each edit (`record["edit"]["extras"]`, e.g. MEMIT's regularizer
per layer `regularizer/layer<i>` and `regularizer/mean`) becomes `single/edit/<key>`, the mean
over edits, and `sequential/edit/<key>`, the mean over the distinct edits of the sequences.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sake.data.schema import Probe, ProbeKind
from sake.evaluation.judges.base import (
    ConsistencyItem,
    CorrectnessItem,
    Judge,
    OptionJudge,
    Verdict,
    is_missing,
)
from sake.evaluation.judges.option import choose_option
from sake.evaluation.probing import expected_answer


@dataclass(frozen=True)
class MetricName:
    """One SAKE metric: its key in metrics and records (a probe kind), its title in reports,
    its column head in terminal tables."""

    key: str
    title: str
    column: str


SAKE_METRICS: tuple[MetricName, ...] = (
    MetricName(ProbeKind.RELIABILITY.value, "Reliability", "Rel"),
    MetricName(ProbeKind.GENERALITY.value, "Generality", "Gen"),
    MetricName(ProbeKind.LOCALITY_AUDIO.value, "Audio locality", "Loc-A"),
    MetricName(ProbeKind.LOCALITY_TEXT.value, "Text locality", "Loc-T"),
    MetricName(ProbeKind.PORTABILITY.value, "Portability", "Port"),
)
METRICS: tuple[str, ...] = tuple(metric.key for metric in SAKE_METRICS)
METRIC_TITLES: dict[str, str] = {metric.key: metric.title for metric in SAKE_METRICS}
LOCALITY_KINDS: frozenset[str] = frozenset(
    {ProbeKind.LOCALITY_AUDIO.value, ProbeKind.LOCALITY_TEXT.value}
)
GAPS: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
TOP_K: tuple[int, ...] = (1, 5, 10)
SPECIFICITY_METRICS: tuple[str, ...] = (
    "kl",
    *(f"top{k}" for k in TOP_K),
    "s_acc",
    "t_acc",
    "c_acc",
)
POOLED_LOCALITY = "locality"
EDIT_GROUP = "edit"
AGGREGATIONS: tuple[str, ...] = ("reference", "project")
CORRECTNESS_KINDS: frozenset[str] = frozenset(METRICS) - LOCALITY_KINDS
LETTERS = "abcd"

Record = Mapping[str, Any]


def judge_probes(
    probes: Sequence[Probe],
    pre_outputs: Sequence[str],
    post_outputs: Sequence[str],
    judge: Judge | None = None,
) -> list[dict[str, Any]]:
    """What a record keeps about each probe: inputs, both outputs, choices and verdicts.

    The judge sees all probes of the call in one batch (the LLM judge sends them
    concurrently); an undecided verdict counts as not correct / not consistent and keeps its
    explanation in the record. The option readings (`pre_choice`, `post_choice` and their
    rule) are recorded whichever judge decides.
    """
    judge = judge or OptionJudge()
    rows = list(zip(probes, pre_outputs, post_outputs, strict=True))
    target = next((p.answer for p in probes if p.kind is ProbeKind.RELIABILITY), None)
    correct = judge.judge_correct(
        [
            CorrectnessItem(
                f"{i}/{side}",
                probe.question,
                probe.options,
                answer,
                output,
                edit_answer=target
                if side == "post" and probe.kind is ProbeKind.PORTABILITY
                else None,
            )
            for i, (probe, pre, post) in enumerate(rows)
            for side, answer, output in (
                ("pre", expected_answer(probe, edited=False), pre),
                ("post", probe.answer, post),
            )
        ]
    )
    consistent = judge.judge_consistent(
        [
            ConsistencyItem(str(i), probe.question, probe.options, pre, post)
            for i, (probe, pre, post) in enumerate(rows)
            if probe.kind.value in LOCALITY_KINDS
        ]
    )
    by_id = {verdict.item_id: verdict for verdict in consistent}
    return [
        _judged(probe, pre, post, correct[2 * i], correct[2 * i + 1], by_id.get(str(i)))
        for i, (probe, pre, post) in enumerate(rows)
    ]


def _judged(
    probe: Probe,
    pre_output: str,
    post_output: str,
    pre_verdict: Verdict,
    post_verdict: Verdict,
    consistency: Verdict | None,
) -> dict[str, Any]:
    pre_choice = choose_option(pre_output, probe.options)
    post_choice = choose_option(post_output, probe.options)
    consistent = None if consistency is None else bool(consistency.label)
    post_correct = bool(post_verdict.label)
    return {
        "name": probe.name,
        "kind": probe.kind.value,
        "type": probe.type,
        "question": probe.question,
        "options": list(probe.options),
        "answer": probe.answer,
        "pre_answer": expected_answer(probe, edited=False),
        "audio": None if probe.audio_path is None else str(probe.audio_path),
        "pre_output": pre_output,
        "post_output": post_output,
        "pre_choice": pre_choice.index,
        "pre_reason": pre_choice.reason,
        "post_choice": post_choice.index,
        "post_reason": post_choice.reason,
        "pre_correct": bool(pre_verdict.label),
        "post_correct": post_correct,
        "consistent": consistent,
        "score": post_correct if consistent is None else consistent,
        "verdict": (post_verdict if consistency is None else consistency).explanation,
    }


def _probe_groups(
    judged: Mapping[str, Any], reference_single: bool = False
) -> Iterable[tuple[str, float]]:
    """(metric key, value) pairs one judged probe contributes to.

    `reference_single` scores correctness probes as the reference's single-editing tally
    does (`reference_score`): a missing output counts nowhere, a bare letter by its option.
    """
    kind = judged["kind"]
    score: float | None = float(judged["score"])
    if reference_single and kind in CORRECTNESS_KINDS:
        score = reference_score(judged)
    if score is None:
        return
    keys = [kind] if judged["type"] is None else [kind, f"{kind}/type{judged['type']}"]
    for key in keys:
        yield key, score
        if kind in LOCALITY_KINDS:
            yield f"{key}/gt_pre", float(judged["pre_correct"])
            yield f"{key}/gt_post", float(judged["post_correct"])


def reference_score(judged: Mapping[str, Any]) -> float | None:
    """A correctness probe's score as `model_outputs/calculate_acc_single.py` counts it.

    An empty (or `<missing>`) post-edit output is skipped: left out of the denominator. An
    output that is one letter a-d (any case) is correct when it names the answer's position
    among the question's option lines; otherwise the judge's verdict stands.
    """
    output = judged["post_output"]
    if is_missing(output):
        return None
    letter = output.lower()
    if len(letter) == 1 and letter in LETTERS:
        options = judged["question"].split("Options:")[-1].strip().split("\n")
        if judged["answer"] in options:
            return float(letter == LETTERS[options.index(judged["answer"])])
    return float(judged["score"])


def specificity_values(judged: Mapping[str, Any]) -> Iterable[tuple[str, float]]:
    """(key, value) pairs of one judged probe's specificity: pooled, per kind, per type."""
    scores = judged.get("specificity")
    if not scores:
        return
    kind = judged["kind"]
    groups = [POOLED_LOCALITY, kind]
    if judged["type"] is not None:
        groups.append(f"{kind}/type{judged['type']}")
    for metric in SPECIFICITY_METRICS:
        value = scores.get(metric)
        if value is None:
            continue
        for group in groups:
            yield f"{group}/{metric}", float(value)


def _all_values(judged: Mapping[str, Any]) -> Iterable[tuple[str, float]]:
    yield from _probe_groups(judged)
    yield from specificity_values(judged)


def _reference_single_values(judged: Mapping[str, Any]) -> Iterable[tuple[str, float]]:
    yield from _probe_groups(judged, reference_single=True)
    yield from specificity_values(judged)


ProbeValues = Callable[[Mapping[str, Any]], Iterable[tuple[str, float]]]


def attribute_means(
    records: Iterable[Record], values: ProbeValues, *, weigh_audio_locality: bool = False
) -> dict[str, float]:
    """`single/<key>` (unweighted mean over attributes) and `single/<Attribute>/<key>`.

    Per attribute, a key's value is the mean over the probes that yield it under `values`.
    `weigh_audio_locality` weighs each attribute's `locality_audio` by the number of its
    audio-locality types in the overall mean, as the reference's table does (4, 4, 3, 4).
    """
    groups: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    audio_types: dict[str, set[Any]] = defaultdict(set)
    for record in records:
        for judged in record["probes"]:
            if judged["kind"] == ProbeKind.LOCALITY_AUDIO.value:
                audio_types[record["attribute"]].add(judged["type"])
            for key, value in values(judged):
                groups[record["attribute"]][key].append(value)
    per_attribute = {
        attribute: {key: float(np.mean(found)) for key, found in keys.items()}
        for attribute, keys in groups.items()
    }
    metrics: dict[str, float] = {}
    for key in sorted({key for found in per_attribute.values() for key in found}):
        present = [a for a, found in per_attribute.items() if key in found]
        weights = [1.0] * len(present)
        if weigh_audio_locality and key == ProbeKind.LOCALITY_AUDIO.value:
            weights = [float(len(audio_types[attribute])) for attribute in present]
        found = [per_attribute[attribute][key] for attribute in present]
        metrics[f"single/{key}"] = float(np.average(found, weights=weights))
    for attribute in sorted(per_attribute):
        for key, value in sorted(per_attribute[attribute].items()):
            metrics[f"single/{attribute}/{key}"] = value
    return metrics


def single_metrics(records: Iterable[Record], aggregation: str = "reference") -> dict[str, float]:
    """`single/...` metrics from single-editing records (see the module docstring)."""
    records = list(records)
    reference = _is_reference(aggregation)
    values = _reference_single_values if reference else _all_values
    return {
        **attribute_means(records, values, weigh_audio_locality=reference),
        **_edit_means(records, "single"),
    }


def saved_aggregation(config: Mapping[str, Any]) -> str:
    """The `eval.aggregation` of a run's saved config: `project` for runs that predate the
    setting (they aggregated per record), `reference` when there is no config at all."""
    if not config:
        return "reference"
    return str((config.get("eval") or {}).get("aggregation", "project"))


def _is_reference(aggregation: str) -> bool:
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"eval.aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    return aggregation == "reference"


def case_scores(record: Record) -> dict[str, float]:
    """Per metric, the mean score of one record's probes of that metric (absent: left out)."""
    values: dict[str, list[float]] = defaultdict(list)
    for judged in record["probes"]:
        values[judged["kind"]].append(float(judged["score"]))
        if judged["kind"] in LOCALITY_KINDS:
            values[f"{judged['kind']}/gt_post"].append(float(judged["post_correct"]))
    return {key: float(np.mean(scores)) for key, scores in values.items()}


def case_specificity(record: Record) -> dict[str, float]:
    """Per specificity key, the mean over one record's locality probes that have it."""
    values: dict[str, list[float]] = defaultdict(list)
    for judged in record["probes"]:
        for key, value in specificity_values(judged):
            values[key].append(value)
    return {key: float(np.mean(found)) for key, found in values.items()}


RecordValues = Callable[[Record], Mapping[str, float]]


def gap_means(
    records: Iterable[Record], values: RecordValues, gaps: Sequence[int] = GAPS
) -> dict[str, float]:
    """`sequential/<key>/gap<g>`: per key and gap, the mean over records of `values(record)`."""
    return _gap_means(
        (key, record["gap"], value)
        for record in records
        if record["gap"] in gaps
        for key, value in values(record).items()
    )


def sequential_metrics(
    records: Iterable[Record], gaps: Sequence[int] = GAPS, aggregation: str = "reference"
) -> dict[str, float]:
    """`sequential/<metric>/gap<g>` from sequential-editing records."""
    records = list(records)
    if _is_reference(aggregation):
        by_gap = gap_probe_means(records, _all_values, gaps)
    else:
        by_gap = gap_means(records, _case_values, gaps)
    return {**by_gap, **_edit_means(records, "sequential")}


def gap_probe_means(
    records: Iterable[Record], values: ProbeValues, gaps: Sequence[int] = GAPS
) -> dict[str, float]:
    """`sequential/<key>/gap<g>`: per key and gap, the mean over all probes of the records at
    that gap (pooled, as `model_outputs/calculate_acc_sequential.py` counts)."""
    return _gap_means(
        (key, record["gap"], value)
        for record in records
        if record["gap"] in gaps
        for judged in record["probes"]
        for key, value in values(judged)
    )


def _gap_means(values: Iterable[tuple[str, int, float]]) -> dict[str, float]:
    pooled: dict[tuple[str, int], list[float]] = defaultdict(list)
    for key, gap, value in values:
        pooled[(key, gap)].append(value)
    return {
        f"sequential/{key}/gap{gap}": float(np.mean(found))
        for (key, gap), found in sorted(pooled.items())
    }


def _case_values(record: Record) -> dict[str, float]:
    return {**case_scores(record), **case_specificity(record)}


def _edit_means(records: Sequence[Record], protocol: str) -> dict[str, float]:
    """`<protocol>/edit/<key>`: each reported edit quantity's mean over the distinct edits.

    A sequential edit is evaluated at several steps but applied once, so the records of one
    (sequence, edit) count once.
    """
    values: dict[str, list[float]] = defaultdict(list)
    seen: set[tuple[Any, ...]] = set()
    for record in records:
        edit = (record.get("sequence"), record.get("edit_index"), record.get("case_id"))
        if edit in seen:
            continue
        seen.add(edit)
        for key, value in ((record.get("edit") or {}).get("extras") or {}).items():
            if value is not None:
                values[key].append(float(value))
    return {
        f"{protocol}/{EDIT_GROUP}/{key}": float(np.mean(found))
        for key, found in sorted(values.items())
    }


def summary_table(metrics: Mapping[str, float], attributes: Sequence[str]) -> str:
    """Attributes by the five SAKE columns, in percent, under the overall row."""
    rows = [("all", "single")] + [(attribute, f"single/{attribute}") for attribute in attributes]
    return _table("", [(label, lambda m, p=prefix: f"{p}/{m}") for label, prefix in rows], metrics)


def sequential_table(metrics: Mapping[str, float], gaps: Sequence[int] = GAPS) -> str:
    """Gaps by the five SAKE columns, in percent."""
    rows = [(str(gap), lambda m, g=gap: f"sequential/{m}/gap{g}") for gap in gaps]
    return _table("gap", rows, metrics)


def _table(
    corner: str,
    rows: Sequence[tuple[str, Callable[[str], str]]],
    metrics: Mapping[str, float],
) -> str:
    lines = [f"{corner:<10}" + "".join(f"{m.column:>8}" for m in SAKE_METRICS)]
    for label, key in rows:
        values = [metrics.get(key(metric.key)) for metric in SAKE_METRICS]
        cells = "".join(f"{'-':>8}" if v is None else f"{100 * v:>8.1f}" for v in values)
        lines.append(f"{label:<10}{cells}")
    return "\n".join(lines)

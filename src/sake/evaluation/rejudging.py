"""Judging saved runs again: the configured judge, fresh verdicts for saved outputs, and the
metrics a run's protocol reports (the same for an edit run and for its re-judged copy)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from sake.data.schema import Probe, ProbeKind
from sake.evaluation.degeneration_by_gap import degeneration_by_gap
from sake.evaluation.judges.base import Judge, OptionJudge
from sake.evaluation.metrics import judge_probes, sequential_metrics, single_metrics
from sake.evaluation.overfitting import overfitting_metrics

Record = Mapping[str, Any]


def build_judge(cfg: DictConfig, protocol: str | None = None) -> Judge:
    """The judge the config selects (`judge=…`); the option judge when none is configured.

    A judge whose rules depend on the protocol (`judge=sake`) judges the records' protocol.
    """
    if not cfg.get("judge"):
        return OptionJudge()
    if protocol is not None and "protocol" in cfg.judge:
        return instantiate(cfg.judge, protocol=protocol)
    return instantiate(cfg.judge)


def saved_probe(judged: Mapping[str, Any]) -> Probe:
    """The probe a judged record entry was asked, as far as judging needs it."""
    return Probe(
        kind=ProbeKind(judged["kind"]),
        question=judged["question"],
        answer=judged["answer"],
        options=tuple(judged["options"]),
        type=judged["type"],
        audio_path=Path(judged["audio"]) if judged.get("audio") else None,
        original_answer=judged["pre_answer"],
    )


def rejudge(records: Sequence[Record], judge: Judge) -> list[dict[str, Any]]:
    """The records with every probe judged again, all in one batch; other fields are kept."""
    saved = [judged for record in records for judged in record["probes"]]
    fresh = iter(
        judge_probes(
            [saved_probe(judged) for judged in saved],
            [judged["pre_output"] for judged in saved],
            [judged["post_output"] for judged in saved],
            judge,
        )
    )
    return [
        {**record, "probes": [{**judged, **next(fresh)} for judged in record["probes"]]}
        for record in records
    ]


def run_metrics(
    protocol: str, records: Sequence[Record], aggregation: str = "reference"
) -> dict[str, float]:
    """SAKE's metrics of a run; single runs add audio-locality overfitting, sequential runs
    the share of degenerate outputs by gap."""
    if protocol == "single":
        return {**single_metrics(records, aggregation), **overfitting_metrics(records)}
    return {**sequential_metrics(records, aggregation=aggregation), **degeneration_by_gap(records)}

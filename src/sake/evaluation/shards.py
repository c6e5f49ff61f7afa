"""Shards of one run (`eval.shard` of `eval.num_shards`) merged back into that run.

A sweep over `eval.shard` splits a run's cases (single) or sequences (sequential) over jobs,
every `num_shards`-th one per job (`sake.runner.EvalSettings.shard_of`). Jobs whose saved
configs differ only in `SHARD_NEUTRAL_KEYS` are one run: their records are interleaved back
into the run's own order, so that the merged job equals the unsharded run, records and
metrics alike.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from itertools import zip_longest
from typing import Any

from sake.evaluation.report import Job

log = logging.getLogger(__name__)

# Settings in which shards of one run may differ: where they write and log, how many threads
# they use, and which shard they are (unlike a resume, shards must share `dataset.limit`).
SHARD_NEUTRAL_KEYS = (
    "resume",
    "logger",
    "paths",
    "hydra",
    "task.threads",
    "eval.shard",
    "eval.parallel_edits",
    "eval.memory_budget_gb",
)

Record = Mapping[str, Any]


def merge_shards(jobs: Sequence[Job]) -> list[Job]:
    """The jobs with every group of shards of one run merged into one job, in first-seen order."""
    groups: dict[str, list[tuple[int, int, Job]]] = {}
    for job in jobs:
        shard, count = shard_position(job.config)
        groups.setdefault(run_identity(job.config, job), []).append((shard, count, job))
    merged = []
    for members in groups.values():
        if len(members) == 1 and members[0][1] == 1:
            merged.append(members[0][2])
            continue
        members.sort(key=lambda member: member[0])
        count = members[0][1]
        present = [shard for shard, _, _ in members]
        if present != list(range(count)):
            log.warning(
                "%s: shards %s of %d found; the merged run lacks the others",
                members[0][2].label,
                present,
                count,
            )
        merged.append(merged_job([job for _, _, job in members]))
    return merged


def shard_position(config: Mapping[str, Any]) -> tuple[int, int]:
    settings = config.get("eval") or {}
    return int(settings.get("shard", 0)), int(settings.get("num_shards", 1))


def run_identity(config: Mapping[str, Any], job: Job) -> str:
    """What makes two jobs shards of one run: their configs without `SHARD_NEUTRAL_KEYS`
    (a job without a saved config is a run of its own)."""
    if not config:
        return f"directory:{job.directory}"
    return json.dumps(_without(config, SHARD_NEUTRAL_KEYS), sort_keys=True, default=str)


def _without(tree: Mapping[str, Any], dotted: Sequence[str], prefix: str = "") -> dict:
    return {
        key: _without(value, dotted, f"{prefix}{key}.") if isinstance(value, Mapping) else value
        for key, value in tree.items()
        if f"{prefix}{key}" not in dotted
    }


def merged_job(shards: Sequence[Job]) -> Job:
    """The shards' records in the run's own order (shard k held units k, k+N, ...)."""
    units = [_units(shard.records) for shard in shards]
    records = [
        record
        for round_ in zip_longest(*units)
        for unit in round_
        if unit is not None
        for record in unit
    ]
    return replace(shards[0], records=records)


def _units(records: Sequence[Record]) -> list[list[Record]]:
    """A shard's records per case (single) or per sequence (sequential), in order."""
    units: dict[Any, list[Record]] = {}
    for position, record in enumerate(records):
        key = (
            record.get("sequence", position) if record.get("protocol") == "sequential" else position
        )
        units.setdefault(key, []).append(record)
    return list(units.values())

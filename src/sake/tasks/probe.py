"""`evaluate.py task=probe`: how an unedited model answers every probe of a split.

Reliability and generality probes ask about y_o's audio and portability probes about the
clip's true label, so before any edit they are judged against the *original* answer; locality
probes are judged against their own answer.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from sake.data.options import parse_options
from sake.data.schema import EditCase, Probe, ProbeKind
from sake.evaluation.judges.option import is_correct
from sake.evaluation.probing import expected_answer, generate_answers
from sake.models.base import LALM
from sake.training.examples import knowledge_examples
from sake.utils.run import RunContext

RECOGNITION_KINDS = (ProbeKind.RELIABILITY, ProbeKind.GENERALITY)


def probe_task(cfg: DictConfig, run: RunContext) -> dict[str, float]:
    dataset = instantiate(cfg.dataset)
    lalm: LALM = instantiate(cfg.model.load)
    cases = dataset.cases(cfg.task.get("split") or None)
    items = [(case, probe) for case in cases for probe in case.probes()]
    outputs = generate_answers(
        lalm,
        [probe for _, probe in items],
        batch_size=int(cfg.eval.batch_size),
        max_new_tokens=int(cfg.eval.max_new_tokens),
    )
    verdicts = [
        is_correct(output, probe.options, expected_answer(probe, edited=False))
        for (_, probe), output in zip(items, outputs, strict=True)
    ]
    write_probe_records(run.output_dir / "probe_outputs.jsonl", items, outputs, verdicts)
    judged = [(case, probe, ok) for (case, probe), ok in zip(items, verdicts, strict=True)]
    metrics = probe_metrics(judged)
    if cfg.task.get("knowledge_probe"):
        metrics["probe/backbone_facts"] = backbone_fact_accuracy(lalm, cfg)
    return metrics


def probe_metrics(judged: Iterable[tuple[EditCase, Probe, bool]]) -> dict[str, float]:
    """Accuracy per probe name, per attribute, and pooled recognition per attribute."""
    groups: dict[str, list[bool]] = defaultdict(list)
    for case, probe, ok in judged:
        for scope in ("probe", f"probe/{case.attribute}"):
            groups[f"{scope}/{probe.name}"].append(ok)
            if probe.kind in (ProbeKind.GENERALITY, ProbeKind.LOCALITY_AUDIO):
                groups[f"{scope}/{probe.kind.value}"].append(ok)
        if probe.kind in RECOGNITION_KINDS:
            groups[f"probe/{case.attribute}/recognition"].append(ok)
    return {name: float(np.mean(values)) for name, values in sorted(groups.items())}


def backbone_fact_accuracy(lalm: LALM, cfg: DictConfig) -> float:
    """Text-only questions naming each label: does the backbone know the facts?"""
    examples = knowledge_examples(np.random.default_rng(int(cfg.seed)))
    probes = [
        Probe(
            kind=ProbeKind.PORTABILITY,
            question=example.question,
            answer=example.response,
            options=parse_options(example.question),
        )
        for example in examples
    ]
    outputs = generate_answers(
        lalm,
        probes,
        batch_size=int(cfg.eval.batch_size),
        max_new_tokens=int(cfg.eval.max_new_tokens),
    )
    verdicts = [is_correct(o, p.options, p.answer) for o, p in zip(outputs, probes, strict=True)]
    return float(np.mean(verdicts))


def write_probe_records(
    path: Path, items: Sequence[tuple[EditCase, Probe]], outputs: Sequence[str], verdicts
) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for (case, probe), output, ok in zip(items, outputs, verdicts, strict=True):
            record = {
                "case_id": case.case_id,
                "attribute": case.attribute,
                "probe": probe.name,
                "question": probe.question,
                "options": list(probe.options),
                "expected": expected_answer(probe, edited=False),
                "output": output,
                "correct": ok,
            }
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")

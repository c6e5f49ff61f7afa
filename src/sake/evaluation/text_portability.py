"""Text-based portability, the SAKE reference's diagnostic (`text_based_portability.py`,
`model_outputs/llm_evaluator_text_based_portability.py`, `calculate_acc_text_based_portability.py`).

No edit and no audio: the unedited model reads, as text, the edit (in an IKE system prompt,
one unquoted `pre → post` rule) and a caption of the clip naming its *original* label, then
answers the case's portability question. It tells how far a model carries an edit through
its own knowledge when the edit is simply stated, an upper reference for audio portability.

The reference's other control, target-audio portability (`target_audio_based_portability.py`),
asks the same portability question, with no system prompt and no edit, about a real clip of the
target label y_e (the case's type-3 audio-locality probe): how well the model answers when the
edited fact is simply true (`target_audio_items`).

Prompts (system prompt, rule, query template, one caption per attribute) come from the
reference prompt file. Judging: the reference's text-portability judge is `judge=sake` with
its `judge_text_portability` prompt and strict "Judgement:" reading; the option judge by
default. An empty output is skipped (left out of the accuracy), as the reference counts;
accuracy is per attribute and pooled over all items.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sake.data.reference_prompts import ReferencePrompts, fill
from sake.data.schema import EditCase, Probe, ProbeKind
from sake.evaluation.judges.base import CorrectnessItem, Judge, is_missing
from sake.evaluation.probing import generate_answers
from sake.models.base import LALM

KEY = "text_portability"
TARGET_KEY = "target_audio_portability"


@dataclass(frozen=True)
class TextPortabilityPrompts:
    """The reference's texts for the diagnostic."""

    system: str
    rule: str
    query: str
    captions: Mapping[str, str]

    @classmethod
    def load(cls, path: str) -> TextPortabilityPrompts:
        prompts = ReferencePrompts.load(path)
        captions = {
            attribute: prompts.text(f"text_portability_caption_{attribute.lower()}")
            for attribute in ("Animal", "Emotion", "Gender", "Language")
        }
        return cls(
            system=prompts.text("ike_system"),
            rule=prompts.text("ike_rule_format_unquoted_text_portability"),
            query=prompts.text("text_portability_query_template"),
            captions=captions,
        )

    def system_prompt(self, case: EditCase) -> str:
        return fill(self.system, edits=fill(self.rule, pre_edit=case.y_o, post_edit=case.y_e))

    def question(self, case: EditCase, probe: Probe) -> str:
        caption = self.captions[case.attribute].replace("[answer]", case.y_o)
        return self.query.replace("[caption]", caption).replace("[Instruction]", probe.question)


@dataclass(frozen=True)
class TextPortabilityItem:
    """One portability question of one case, asked as text."""

    case: EditCase
    probe: Probe  # the case's own portability probe
    system: str | None
    asked: Probe  # what the model answers


def text_portability_items(
    cases: Iterable[EditCase], prompts: TextPortabilityPrompts
) -> list[TextPortabilityItem]:
    items = []
    for case in cases:
        for probe in case.portability:
            asked = replace(
                probe,
                kind=ProbeKind.PORTABILITY,
                question=prompts.question(case, probe),
                file=None,
                audio_path=None,
            )
            items.append(TextPortabilityItem(case, probe, prompts.system_prompt(case), asked))
    return items


def target_audio_items(cases: Iterable[EditCase]) -> list[TextPortabilityItem]:
    """Each portability question asked about the case's clip of y_e (its type-3 audio-locality
    probe), with no system prompt; cases without such a clip are left out."""
    items = []
    for case in cases:
        target = next((p for p in case.locality_audio if p.type == 3), None)
        if target is None or target.file is None:
            continue
        for probe in case.portability:
            asked = replace(
                probe, file=target.file, audio_path=target.audio_path, track=target.track
            )
            items.append(TextPortabilityItem(case, probe, None, asked))
    return items


def answer_items(
    lalm: LALM, items: Sequence[TextPortabilityItem], *, batch_size: int, max_new_tokens: int
) -> list[str]:
    """Greedy answers, one batch call per system prompt (one per edit pair)."""
    by_system: dict[str | None, list[int]] = defaultdict(list)
    for index, item in enumerate(items):
        by_system[item.system].append(index)
    outputs: list[str] = [""] * len(items)
    for system, indices in by_system.items():
        answers = generate_answers(
            lalm,
            [items[i].asked for i in indices],
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            system=system,
        )
        for index, answer in zip(indices, answers, strict=True):
            outputs[index] = answer
    return outputs


def judge_items(
    items: Sequence[TextPortabilityItem], outputs: Sequence[str], judge: Judge
) -> list[dict[str, Any]]:
    """One record per item; the judge sees the portability question as the dataset asks it."""
    verdicts = judge.judge_correct(
        [
            CorrectnessItem(str(i), item.probe.question, item.probe.options, item.probe.answer, out)
            for i, (item, out) in enumerate(zip(items, outputs, strict=True))
        ]
    )
    return [
        {
            "case_id": item.case.case_id,
            "attribute": item.case.attribute,
            "y_o": item.case.y_o,
            "y_e": item.case.y_e,
            "question": item.probe.question,
            "asked": item.asked.question,
            "audio": None if item.asked.audio_path is None else str(item.asked.audio_path),
            "system": item.system,
            "answer": item.probe.answer,
            "output": output,
            "skipped": is_missing(output),
            "correct": bool(verdict.label),
            "verdict": verdict.explanation,
        }
        for item, output, verdict in zip(items, outputs, verdicts, strict=True)
    ]


def text_portability_metrics(
    records: Iterable[Mapping[str, Any]], key: str = KEY
) -> dict[str, float]:
    """`<key>/<Attribute>` and `<key>` (pooled), skipped items left out, with `/skipped`
    counts."""
    counted: dict[str, list[bool]] = defaultdict(list)
    skipped: dict[str, int] = defaultdict(int)
    for record in records:
        for scope in (key, f"{key}/{record['attribute']}"):
            if record["skipped"]:
                skipped[scope] += 1
            else:
                counted[scope].append(bool(record["correct"]))
    metrics: dict[str, float] = {}
    for scope in sorted(set(counted) | set(skipped)):
        found = counted.get(scope, [])
        metrics[scope] = sum(found) / len(found) if found else 0.0
        metrics[f"{scope}/skipped"] = float(skipped.get(scope, 0))
    return metrics

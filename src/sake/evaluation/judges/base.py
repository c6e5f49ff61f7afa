"""One interface for every judge: batches of items in, one verdict per item out.

Scoring code never needs to know which judge it holds. The deterministic option judge and
the LLM judge both take whole batches, because the LLM judge sends its requests
concurrently (or batches them through a local model) and the option judge does not care.

A verdict's `label` is True (correct / consistent), False (incorrect / inconsistent) or None
when the judge could not decide: a shortcuts-only LLM judge on an item that needs the model,
or a model reply whose verdict line could not be read. `source` says what decided it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from sake.evaluation.judges.option import choose_option, consistent_choices, correct_choice

MISSING_OUTPUT = "<missing>"


def is_missing(output: str) -> bool:
    """Whether an output counts as missing for the SAKE reference: empty or `<missing>`
    (its evaluators skip such items; a blank but non-empty output is not missing)."""
    return not output or output == MISSING_OUTPUT


@dataclass(frozen=True)
class CorrectnessItem:
    """Did `output` answer `question` with `answer`, choosing from `options`?

    `edit_answer` is the edit's target y_e on post-edit portability items (the reference
    judge's portability rule reads it), None elsewhere.
    """

    item_id: str
    question: str
    options: tuple[str, ...]
    answer: str
    output: str
    edit_answer: str | None = None


@dataclass(frozen=True)
class ConsistencyItem:
    """Do `output_a` and `output_b` (pre- and post-edit) give the same main answer?"""

    item_id: str
    question: str
    options: tuple[str, ...]
    output_a: str
    output_b: str


@dataclass(frozen=True)
class Verdict:
    """One judgement; `label` None means undecided (see the module docstring)."""

    item_id: str
    label: bool | None
    explanation: str
    source: str

    @property
    def decided(self) -> bool:
        return self.label is not None


@runtime_checkable
class Judge(Protocol):
    """What metrics and re-scoring ask of a judge."""

    name: str

    def judge_correct(self, items: Sequence[CorrectnessItem]) -> list[Verdict]: ...

    def judge_consistent(self, pairs: Sequence[ConsistencyItem]) -> list[Verdict]: ...


class OptionJudge:
    """The deterministic option judge behind the batch interface; it always decides."""

    def __init__(self, name: str = "option") -> None:
        self.name = name

    def judge_correct(self, items: Sequence[CorrectnessItem]) -> list[Verdict]:
        return [self._correct(item) for item in items]

    def judge_consistent(self, pairs: Sequence[ConsistencyItem]) -> list[Verdict]:
        return [self._consistent(pair) for pair in pairs]

    @staticmethod
    def _correct(item: CorrectnessItem) -> Verdict:
        label, choice, candidates = correct_choice(item.output, item.options, item.answer)
        chosen = _option_text(candidates, choice.index)
        explanation = f"chose {chosen} ({choice.reason}); expected {item.answer!r}"
        return Verdict(item.item_id, label, explanation, f"option:{choice.reason}")

    @staticmethod
    def _consistent(pair: ConsistencyItem) -> Verdict:
        choice_a = choose_option(pair.output_a, pair.options)
        choice_b = choose_option(pair.output_b, pair.options)
        label = consistent_choices(pair.output_a, pair.output_b, choice_a, choice_b)
        explanation = (
            f"a chose {_option_text(pair.options, choice_a.index)} ({choice_a.reason}), "
            f"b chose {_option_text(pair.options, choice_b.index)} ({choice_b.reason})"
        )
        return Verdict(pair.item_id, label, explanation, "option")


def _option_text(options: Sequence[str], index: int | None) -> str:
    return "no option" if index is None or index >= len(options) else repr(options[index])

"""Judges decide whether a model's free-form output answers a probe correctly."""

from sake.evaluation.judges.base import (
    ConsistencyItem,
    CorrectnessItem,
    Judge,
    OptionJudge,
    Verdict,
)
from sake.evaluation.judges.llm import LLMJudge, parse_verdict
from sake.evaluation.judges.option import (
    Choice,
    choose_option,
    is_consistent,
    is_correct,
    normalise,
)

__all__ = [
    "Choice",
    "ConsistencyItem",
    "CorrectnessItem",
    "Judge",
    "LLMJudge",
    "OptionJudge",
    "Verdict",
    "choose_option",
    "is_consistent",
    "is_correct",
    "normalise",
    "parse_verdict",
]

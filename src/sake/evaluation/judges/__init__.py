"""Judges decide whether a model's free-form output answers a probe correctly."""

from sake.evaluation.judges.option import (
    Choice,
    choose_option,
    is_consistent,
    is_correct,
    normalise,
)

__all__ = ["Choice", "choose_option", "is_consistent", "is_correct", "normalise"]

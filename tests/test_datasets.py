"""Datasets as entry points see them: a limit keeps every attribute."""

from __future__ import annotations

from collections import Counter

from fixtures_data import make_case
from sake.data.datasets import balanced_head
from sake.data.schema import EditCase


def by_attribute_cases() -> list[EditCase]:
    """Cases ordered by attribute, as the SAKE test split is."""
    plan = [
        ("Animal", "cat", "dog", 5),
        ("Emotion", "happy", "sad", 3),
        ("Gender", "male", "female", 2),
    ]
    return [
        make_case(attribute, y_o, y_e, f"{attribute}{i}")
        for attribute, y_o, y_e, count in plan
        for i in range(count)
    ]


def test_limit_takes_attributes_in_turn_each_in_its_order() -> None:
    cases = by_attribute_cases()
    head = balanced_head(cases, 7)
    assert [c.attribute for c in head] == ["Animal", "Emotion", "Gender"] * 2 + ["Animal"]
    animals = [c for c in head if c.attribute == "Animal"]
    assert animals == [c for c in cases if c.attribute == "Animal"][:3]


def test_limit_beyond_a_short_attribute_fills_from_the_others() -> None:
    head = balanced_head(by_attribute_cases(), 9)
    assert Counter(c.attribute for c in head) == {"Animal": 4, "Emotion": 3, "Gender": 2}
    everything = balanced_head(by_attribute_cases(), 100)
    assert len(everything) == 10
    assert all(case in everything for case in by_attribute_cases())

"""Percent agreement and Cohen's κ between judges, and the option judge against the shortcuts."""

from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path

import pytest

from sake.data.options import parse_options
from sake.evaluation.judges.agreement import (
    OVERALL,
    Agreement,
    agreement,
    agreement_by_metric,
    cohens_kappa,
    labels_by_id,
    percent_agreement,
)
from sake.evaluation.judges.base import ConsistencyItem, CorrectnessItem, OptionJudge, Verdict
from sake.evaluation.judges.llm import LLMJudge

REFERENCE_OUTPUTS = Path(__file__).resolve().parents[2] / "shared" / "sake" / "reference_outputs"
REFERENCE_FILES = (
    "DeSTA_single_Animal",
    "DeSTA_single_Emotion",
    "Qwen_single_Gender",
    "Qwen_single_Language",
)


def table(yes_yes: int, yes_no: int, no_yes: int, no_no: int) -> list[tuple[bool, bool]]:
    """Label pairs of a 2x2 contingency table (rater a first)."""
    return (
        [(True, True)] * yes_yes
        + [(True, False)] * yes_no
        + [(False, True)] * no_yes
        + [(False, False)] * no_no
    )


def test_kappa_of_a_textbook_table():
    # p_o = 0.7; a says yes 25/50, b says yes 30/50, p_e = 0.5 -> kappa = 0.4
    pairs = table(20, 5, 10, 15)
    assert percent_agreement(pairs) == pytest.approx(70.0)
    assert cohens_kappa(pairs) == pytest.approx(0.4)


def test_kappa_extremes():
    assert cohens_kappa(table(10, 0, 0, 10)) == pytest.approx(1.0)
    assert cohens_kappa(table(0, 10, 10, 0)) == pytest.approx(-1.0)
    assert cohens_kappa(table(5, 5, 5, 5)) == pytest.approx(0.0)
    assert math.isnan(cohens_kappa(table(7, 0, 0, 0)))  # one shared label: p_e = 1
    assert math.isnan(cohens_kappa([]))
    assert math.isnan(percent_agreement([]))
    assert cohens_kappa(table(6, 1, 0, 0)) == pytest.approx(0.0)


def test_kappa_with_several_string_labels():
    pairs = [("happy", "happy"), ("sad", "sad"), ("angry", "sad"), ("sad", "sad")]
    # p_o = 3/4; a: happy 1, sad 2, angry 1; b: happy 1, sad 3; p_e = (1 + 6) / 16
    assert cohens_kappa(pairs) == pytest.approx((0.75 - 7 / 16) / (1 - 7 / 16))


def test_only_items_both_decide_are_compared():
    a = {"1": True, "2": False, "3": None, "4": True, "only-a": True}
    b = {"1": True, "2": True, "3": False, "4": True, "only-b": False}
    result = agreement(a, b)
    assert result == Agreement(
        compared=3,
        agreed=2,
        percent=pytest.approx(200 / 3),
        kappa=pytest.approx(0.0),
        undecided=1,
        unmatched=2,
    )
    assert result.as_dict()["compared"] == 3


def test_agreement_per_metric():
    a = {"r1": True, "r2": False, "g1": True, "g2": True, "x": False}
    b = {"r1": True, "r2": False, "g1": False, "g2": True, "x": False}
    metric_of = {"r1": "reliability", "r2": "reliability", "g1": "generality", "g2": "generality"}
    results = agreement_by_metric(a, b, metric_of)
    assert list(results) == [OVERALL, "generality", "reliability"]
    assert results[OVERALL].compared == 5 and results[OVERALL].agreed == 4
    assert results["reliability"].percent == pytest.approx(100.0)
    assert results["reliability"].kappa == pytest.approx(1.0)
    assert results["generality"].percent == pytest.approx(50.0)


def test_labels_by_id_from_verdicts_and_human_labels():
    verdicts = [
        Verdict("a", True, "", "llm"),
        Verdict("b", None, "", "undecided"),
        Verdict("c", False, "", "shortcut:empty"),
    ]
    judged = labels_by_id(verdicts)
    assert judged == {"a": True, "b": None, "c": False}
    human = {"a": True, "b": True, "c": True}
    result = agreement(judged, human)
    assert (result.compared, result.agreed, result.undecided) == (2, 1, 1)


@cache
def _reference_records(file_name: str) -> list[dict]:
    path = REFERENCE_OUTPUTS / file_name
    if not path.is_file():
        pytest.skip(f"reference outputs are not available at {REFERENCE_OUTPUTS}")
    return json.loads(path.read_text(encoding="utf-8"))


@cache
def _reference_items(name: str, records: int) -> list[CorrectnessItem]:
    """Reliability, generality and portability outputs, pre and post edit, vs the answer."""
    items = []
    for index, entry in enumerate(_reference_records(f"MEND_{name}.json")[:records]):
        for probe, fields in entry.items():
            if not probe.startswith(("reliability", "generality", "portability")):
                continue
            for side in ("pre_edit", "post_edit"):
                items.append(
                    CorrectnessItem(
                        f"{name}/{index}/{side}/{probe}",
                        fields["question"],
                        parse_options(fields["question"]),
                        fields["answer"],
                        entry[side][probe],
                    )
                )
    return items


@pytest.mark.parametrize("name", ["Qwen_single_Gender", "DeSTA_single_Animal"])
def test_option_judge_agrees_with_the_shortcuts_on_reference_outputs(name: str):
    """Where the shortcuts decide, the option judge says the same; the rest needs a model."""
    items = _reference_items(name, 60)
    option = labels_by_id(OptionJudge().judge_correct(items))
    shortcuts = labels_by_id(LLMJudge(backend=None).judge_correct(items))
    result = agreement(option, shortcuts)
    assert result.compared + result.undecided == len(items) == 60 * 10
    assert result.compared > 100 and result.undecided > 100
    assert result.percent == 100.0


@pytest.mark.slow
def test_option_judge_agrees_with_the_shortcuts_on_every_reference_output():
    """All four files: the shortcuts settle 4697 of 12000 items, all as the option judge does."""
    items = [item for name in REFERENCE_FILES for item in _reference_items(name, 300)]
    option = OptionJudge().judge_correct(items)
    shortcuts = LLMJudge(backend=None).judge_correct(items)
    result = agreement(labels_by_id(option), labels_by_id(shortcuts))
    assert (result.compared, result.undecided) == (4697, 7303)
    assert result.percent == 100.0
    assert math.isnan(result.kappa)  # every shortcut verdict is an exact match: one label


DEV_SET = Path(__file__).resolve().parent / "data" / "option_judge_dev_set.json"
DEV_SET_LABELS = {"correct": True, "incorrect": False, "consistent": True, "inconsistent": False}


def _dev_set_verdicts() -> tuple[dict[str, bool], dict[str, bool | None], dict[str, str]]:
    """Human labels, option-judge labels and each item's category, by item id."""
    human: dict[str, bool] = {}
    judged: dict[str, bool | None] = {}
    category: dict[str, str] = {}
    for row in json.loads(DEV_SET.read_text(encoding="utf-8"))["items"]:
        item_id = f"{row['file']}/{row['index']}/{row['probe']}"
        entry = _reference_records(row["file"])[row["index"]]
        fields = entry[row["probe"]]
        options = parse_options(fields["question"])
        if row["task"] == "correctness":
            item = CorrectnessItem(
                item_id,
                fields["question"],
                options,
                fields["answer"],
                entry["post_edit"][row["probe"]],
            )
            (verdict,) = OptionJudge().judge_correct([item])
        else:
            pair = ConsistencyItem(
                item_id,
                fields["question"],
                options,
                entry["pre_edit"][row["probe"]],
                entry["post_edit"][row["probe"]],
            )
            (verdict,) = OptionJudge().judge_consistent([pair])
        human[item_id] = DEV_SET_LABELS[row["label"]]
        judged[item_id] = verdict.label
        category[item_id] = f"{row['task']}/{row['file']}"
    return human, judged, category


def test_option_judge_agrees_with_careful_human_reading():
    """336 hand-labelled real outputs: >= 97% overall, >= 95% on correctness and consistency."""
    human, judged, category = _dev_set_verdicts()
    assert len(human) == 336
    overall = agreement(judged, human)
    by_task = {
        task: agreement(
            {i: label for i, label in judged.items() if category[i].startswith(task)}, human
        )
        for task in ("correctness", "consistency")
    }
    assert overall.compared == 336
    assert overall.percent >= 97.0, overall
    assert all(result.percent >= 95.0 for result in by_task.values()), by_task
    per_category = agreement_by_metric(judged, human, category)
    assert all(result.percent >= 90.0 for result in per_category.values()), per_category

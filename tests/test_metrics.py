"""SAKE aggregation on hand-made judgements, and the probe judge that feeds it."""

from __future__ import annotations

from typing import Any

import pytest

from sake.data.schema import Probe, ProbeKind
from sake.evaluation.judges.base import ConsistencyItem, CorrectnessItem, Verdict
from sake.evaluation.metrics import (
    case_scores,
    judge_probes,
    sequential_metrics,
    sequential_table,
    single_metrics,
    summary_table,
)

GENDER_OPTIONS = ("male", "female")


def judged(
    kind: str,
    type_: int | None = None,
    score: bool = True,
    pre_correct: bool = True,
    post_correct: bool | None = None,
    post_output: str = "an answer",
) -> dict[str, Any]:
    post = score if post_correct is None else post_correct
    return {
        "kind": kind,
        "type": type_,
        "question": "Which one?\n\nOptions:\nmale\nfemale",
        "answer": "female",
        "post_output": post_output,
        "score": score,
        "pre_correct": pre_correct,
        "post_correct": post,
    }


def record(attribute: str, probes: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"protocol": "single", "attribute": attribute, "probes": probes, **extra}


def full_case(attribute: str, reliable: bool, locality: list[bool]) -> dict[str, Any]:
    types = (1, 3, 4) if attribute == "Gender" else (1, 2, 3, 4)
    return record(
        attribute,
        [
            judged("reliability", score=reliable),
            judged("generality", 1, True),
            judged("generality", 2, False),
            judged("generality", 3, True),
            *[
                judged("locality_audio", t, ok, pre_correct=True, post_correct=ok)
                for t, ok in zip(types, locality, strict=True)
            ],
            judged("locality_text", score=True, pre_correct=False, post_correct=False),
            judged("portability", score=False),
        ],
    )


def test_columns_are_unweighted_means_over_attributes() -> None:
    records = [
        full_case("Animal", True, [True, False, False, False]),
        full_case("Animal", True, [True, False, False, False]),
        full_case("Gender", False, [True, True, True]),
    ]
    for aggregation in ("reference", "project"):
        metrics = single_metrics(records, aggregation)
        assert metrics["single/Animal/reliability"] == 1.0
        assert metrics["single/Gender/reliability"] == 0.0
        assert metrics["single/reliability"] == 0.5  # not 2/3: attributes weigh the same
        assert metrics["single/Animal/locality_audio"] == 0.25  # pooled over its four probes
        assert metrics["single/Gender/locality_audio"] == 1.0
        assert metrics["single/generality"] == pytest.approx(2 / 3)
        assert metrics["single/generality/type2"] == 0.0
        assert metrics["single/locality_audio/type1"] == 1.0
    # The reference weighs each attribute's audio locality by its number of types (4 and 3).
    assert single_metrics(records)["single/locality_audio"] == pytest.approx((1 + 3) / 7)
    assert single_metrics(records, "project")["single/locality_audio"] == pytest.approx(0.625)


def test_reference_aggregation_leaves_out_empty_outputs_and_reads_letters() -> None:
    probes = [
        judged("reliability", score=False, post_output=""),
        judged("generality", 1, False, post_output="B"),
        judged("generality", 2, True, post_output="a"),
        judged("generality", 3, False, post_output="female"),
        judged("portability", score=False, post_output="<missing>"),
        judged("locality_text", score=False, post_output=""),
    ]
    reference = single_metrics([record("Gender", probes)])
    assert "single/reliability" not in reference and "single/portability" not in reference
    assert reference["single/generality/type1"] == 1.0  # "B" names female, the answer
    assert reference["single/generality/type2"] == 0.0  # "a" names male
    assert reference["single/generality"] == pytest.approx(1 / 3)
    assert reference["single/locality_text"] == 0.0  # locality never skips
    project = single_metrics([record("Gender", probes)], "project")
    assert project["single/reliability"] == 0.0 and project["single/portability"] == 0.0
    assert project["single/generality"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="eval.aggregation"):
        single_metrics([record("Gender", probes)], "weighted")


def test_gender_has_no_type2_and_does_not_dilute_it() -> None:
    metrics = single_metrics(
        [
            full_case("Gender", True, [True, True, True]),
            full_case("Emotion", True, [True, True, True, True]),
            full_case("Language", True, [False, False, False, False]),
        ]
    )
    assert "single/Gender/locality_audio/type2" not in metrics
    assert metrics["single/locality_audio/type2"] == 0.5  # Emotion and Language only
    assert metrics["single/locality_audio/type1"] == pytest.approx(2 / 3)


def test_ground_truth_accuracy_before_and_after_for_locality() -> None:
    metrics = single_metrics([full_case("Animal", True, [True, False, True, False])])
    assert metrics["single/locality_audio/gt_pre"] == 1.0
    assert metrics["single/locality_audio/gt_post"] == 0.5
    assert metrics["single/locality_audio/type2/gt_post"] == 0.0
    assert metrics["single/locality_text"] == 1.0
    assert metrics["single/locality_text/gt_pre"] == 0.0
    assert "single/reliability/gt_pre" not in metrics


def test_single_metric_keys_are_the_documented_ones() -> None:
    metrics = single_metrics(
        [full_case(a, True, [True] * (3 if a == "Gender" else 4)) for a in ("Animal", "Gender")]
    )
    headline = {
        "single/reliability",
        "single/generality",
        *(f"single/generality/type{k}" for k in (1, 2, 3)),
        "single/locality_audio",
        *(f"single/locality_audio/type{k}" for k in (1, 2, 3, 4)),
        "single/locality_text",
        "single/portability",
    }
    assert headline <= metrics.keys()
    assert all(0.0 <= value <= 1.0 for value in metrics.values())
    for key in metrics:
        parts = key.split("/")
        assert parts[0] == "single"
        assert parts[1] in {"Animal", "Gender"} or parts[1] in {k.split("/")[1] for k in headline}
        assert parts[-1] not in {"gt_pre", "gt_post"} or "locality" in key


def test_sequential_metrics_pool_edits_per_gap() -> None:
    records = [
        {**full_case("Animal", True, [True] * 4), "protocol": "sequential", "gap": 0},
        {**full_case("Gender", False, [True] * 3), "protocol": "sequential", "gap": 0},
        {**full_case("Gender", False, [False] * 3), "protocol": "sequential", "gap": 3},
        {**full_case("Gender", True, [False] * 3), "protocol": "sequential", "gap": 7},
    ]
    metrics = sequential_metrics(records)
    assert metrics["sequential/reliability/gap0"] == 0.5
    assert metrics["sequential/reliability/gap3"] == 0.0
    assert metrics["sequential/locality_audio/gap3"] == 0.0
    assert metrics["sequential/locality_audio/gt_post/gap0"] == 1.0
    assert not any(key.endswith("gap7") for key in metrics)
    assert "sequential/generality/gap0" in metrics


def test_case_scores_average_each_metric_over_its_probes() -> None:
    scores = case_scores(full_case("Animal", True, [True, True, False, False]))
    assert scores["reliability"] == 1.0
    assert scores["generality"] == pytest.approx(2 / 3)
    assert scores["locality_audio"] == 0.5
    assert scores["portability"] == 0.0


def probe(kind: ProbeKind, answer: str, original: str | None = None) -> Probe:
    return Probe(
        kind,
        "What is the gender of the speaker?",
        answer,
        GENDER_OPTIONS,
        type=1 if kind is ProbeKind.LOCALITY_AUDIO else None,
        original_answer=original,
    )


def judge_one(probe: Probe, pre_output: str, post_output: str) -> dict[str, Any]:
    return judge_probes([probe], [pre_output], [post_output])[0]


def test_edit_probes_are_judged_against_the_new_answer() -> None:
    result = judge_one(probe(ProbeKind.RELIABILITY, "female", "male"), "male", "It is female.")
    assert result["score"] is True and result["post_correct"] is True
    assert result["pre_correct"] is True  # pre-edit judged against y_o
    assert result["consistent"] is None
    assert (result["pre_choice"], result["post_choice"]) == (0, 1)
    assert result["post_reason"] == "single" and result["pre_reason"] == "exact"


def test_locality_probes_are_judged_by_consistency() -> None:
    kept_wrong = judge_one(probe(ProbeKind.LOCALITY_AUDIO, "male"), "female", "Female.")
    assert kept_wrong["score"] is True and kept_wrong["consistent"] is True
    assert kept_wrong["pre_correct"] is False and kept_wrong["post_correct"] is False
    flipped = judge_one(probe(ProbeKind.LOCALITY_AUDIO, "male"), "male", "female")
    assert flipped["score"] is False
    assert flipped["pre_correct"] is True and flipped["post_correct"] is False
    unchosen = judge_one(probe(ProbeKind.LOCALITY_TEXT, "male"), "no idea", "No idea!")
    assert unchosen["score"] is True and unchosen["name"] == "locality_text"


class UndecidedJudge:
    """Decides nothing and remembers the size of every batch it was given."""

    name = "undecided"

    def __init__(self) -> None:
        self.batches: list[int] = []

    def judge_correct(self, items: list[CorrectnessItem]) -> list[Verdict]:
        self.batches.append(len(items))
        return [Verdict(item.item_id, None, "no verdict line", "llm") for item in items]

    def judge_consistent(self, pairs: list[ConsistencyItem]) -> list[Verdict]:
        self.batches.append(len(pairs))
        return [Verdict(pair.item_id, None, "no verdict line", "llm") for pair in pairs]


def test_a_case_is_judged_in_one_batch_and_undecided_counts_as_failed() -> None:
    probes = [
        probe(ProbeKind.RELIABILITY, "female", "male"),
        probe(ProbeKind.LOCALITY_AUDIO, "male"),
    ]
    judge = UndecidedJudge()
    results = judge_probes(probes, ["male", "male"], ["female", "male"], judge)
    assert judge.batches == [4, 1]  # pre and post of both probes; one locality pair
    assert [r["score"] for r in results] == [False, False]
    assert results[1]["verdict"] == "no verdict line"
    assert results[0]["post_choice"] == 1  # the option reading is kept whatever the judge


def test_summary_tables_show_percentages() -> None:
    metrics = single_metrics([full_case("Animal", True, [True, True, False, False])])
    table = summary_table(metrics, ["Animal", "Gender"])
    lines = table.splitlines()
    assert lines[0].split() == ["Rel", "Gen", "Loc-A", "Loc-T", "Port"]
    assert lines[1].split() == ["all", "100.0", "66.7", "50.0", "100.0", "0.0"]
    assert lines[3].split() == ["Gender", "-", "-", "-", "-", "-"]
    sequential = sequential_table({"sequential/reliability/gap2": 0.25}, gaps=(2,))
    assert sequential.splitlines()[1].split() == ["2", "25.0", "-", "-", "-", "-"]


def test_reference_sequential_aggregation_pools_probes_at_each_gap() -> None:
    records = [
        {**full_case("Animal", True, [True] * 4), "protocol": "sequential", "gap": 0},
        {**full_case("Gender", True, [False] * 3), "protocol": "sequential", "gap": 0},
    ]
    records[1]["probes"][0]["post_output"] = ""  # counted, and wrong, in sequential editing
    records[1]["probes"][0]["score"] = False
    reference = sequential_metrics(records)
    assert reference["sequential/locality_audio/gap0"] == pytest.approx(4 / 7)
    assert reference["sequential/reliability/gap0"] == 0.5
    project = sequential_metrics(records, aggregation="project")
    assert project["sequential/locality_audio/gap0"] == pytest.approx(0.5)

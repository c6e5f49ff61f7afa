"""GT-free (KL, top-k overlap) and GT-based (S-acc, T-acc, C-acc) specificity metrics."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from lalm_fixtures import edit_release, make_lalm, make_tokenizer
from sake.data.readers import SakeRelease
from sake.data.schema import EditCase
from sake.evaluation.metrics import sequential_metrics, single_metrics
from sake.evaluation.specificity import (
    SPECIFICITY_METRICS,
    LocalityOutputs,
    answer_scores,
    exact_match,
    force_answers,
    kl_divergence,
    locality_probes,
    normalise_answer,
    pre_edit_logits,
    rival_option,
    specificity_metrics,
    specificity_of_cases,
    specificity_scores,
    token_accuracy,
    topk_overlap,
    with_specificity,
)
from sake.methods.ft import FineTuneConfig, FineTuneEditor
from sake.models.desta import DestaLALM

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> SakeRelease:
    return edit_release(tmp_path_factory.mktemp("release"))


@pytest.fixture(scope="module")
def lalm(release: SakeRelease) -> DestaLALM:
    return make_lalm(make_tokenizer(release))


@pytest.fixture
def case(release: SakeRelease) -> EditCase:
    return release.splits["test"][0]


def greedy(lalm: DestaLALM, case: EditCase) -> tuple[Tensor, list[str]]:
    """First-token logits and greedy outputs of the case's locality probes, as the runner
    takes them from its post-edit generation."""
    generation = lalm.generate_scored(lalm.prepare(locality_probes(case)), 3)
    return generation.first_logits, generation.texts


# --------------------------------------------------------------------------- on a model


def test_an_unchanged_model_has_zero_kl_and_full_overlap(lalm: DestaLALM, case: EditCase) -> None:
    probes = locality_probes(case)
    assert [p.kind.value for p in probes] == ["locality_audio"] * 4 + ["locality_text"]
    pre = pre_edit_logits(lalm, probes, batch_size=2)
    scores = specificity_scores(lalm, case, pre, *greedy(lalm, case), batch_size=2)
    assert len(scores) == len(probes)
    for score in scores:
        assert set(score) == set(SPECIFICITY_METRICS)
        assert score["kl"] < 1e-6  # batches of 2 against one of 5: float rounding only
        assert score["top1"] == score["top5"] == score["top10"] == 100.0
        assert 0.0 <= score["t_acc"] <= 1.0 and score["s_acc"] in (0.0, 1.0)


def test_an_edit_moves_kl_and_overlap(lalm: DestaLALM, case: EditCase) -> None:
    probes = locality_probes(case)
    pre = pre_edit_logits(lalm, probes)
    editor = FineTuneEditor(FineTuneConfig(name="ft", role="llm.layer[-1].mlp", lr=5e-2))
    outcome = editor.apply(lalm, case)
    try:
        scores = specificity_scores(lalm, case, pre, *greedy(lalm, case))
    finally:
        outcome.snapshot.restore()
    assert all(s["kl"] > 1e-4 for s in scores)
    assert any(s["top10"] < 100.0 for s in scores)


def test_contrast_applies_to_probes_offering_the_edit_target(
    lalm: DestaLALM, case: EditCase
) -> None:
    probes = locality_probes(case)
    pre = pre_edit_logits(lalm, probes)
    scores = specificity_scores(lalm, case, pre, *greedy(lalm, case))
    applies = {p.name: s["c_acc"] is not None for p, s in zip(probes, scores, strict=True)}
    # type 2 asks the same attribute about another label; type 3's answer is y_e itself
    assert applies == {
        "locality_audio/type1": False,
        "locality_audio/type2": True,
        "locality_audio/type3": False,
        "locality_audio/type4": False,
        "locality_text": False,
    }
    type2 = probes[1]
    assert rival_option(type2, case.y_e) == case.y_e and rival_option(probes[2], case.y_e) is None
    batch = lalm.prepare([type2])
    with torch.no_grad():
        true, rival = (float(lalm.target_nll(batch, [t])) for t in (type2.answer, case.y_e))
    lengths = [len(lalm.target_token_ids(batch, [t])[0]) for t in (type2.answer, case.y_e)]
    assert scores[1]["c_acc"] == float(-true * lengths[0] > -rival * lengths[1])


def test_token_accuracy_is_the_teacher_forced_argmax_rate(lalm: DestaLALM, case: EditCase) -> None:
    probes = locality_probes(case)
    accuracies = token_accuracy(lalm, probes)
    for probe, accuracy in zip(probes, accuracies, strict=True):
        batch = lalm.prepare([probe])
        with torch.no_grad():
            logits = lalm.answer_logits(batch, [probe.answer])[0]
        ids = lalm.target_token_ids(batch, [probe.answer])[0]
        hits = sum(int(logits[j].argmax()) == token for j, token in enumerate(ids))
        assert accuracy == pytest.approx(hits / len(ids))


def test_answer_scores_equal_teacher_forcing_with_or_without_first_logits(
    lalm: DestaLALM, case: EditCase
) -> None:
    probes = list(case.probes())
    answers = [probe.answer for probe in probes]
    lengths = [len(ids) for ids in lalm.target_token_ids(lalm.prepare(probes), answers)]
    assert 1 in lengths and max(lengths) > 1  # both paths are exercised
    forced = force_answers(lalm, probes, answers)
    first = lalm.generate_scored(lalm.prepare(probes), 1).first_logits
    scores = answer_scores(lalm, probes, answers, first)
    assert scores.token_accuracy == forced.token_accuracy
    assert scores.log_prob == pytest.approx(forced.log_prob, abs=1e-4)


def test_cases_scored_together_score_as_they_do_alone(
    lalm: DestaLALM, release: SakeRelease
) -> None:
    cases = release.splits["test"][:3]
    seen = [
        LocalityOutputs(case, pre_edit_logits(lalm, locality_probes(case)), *greedy(lalm, case))
        for case in cases
    ]
    together = specificity_of_cases(lalm, seen)
    alone = [
        specificity_scores(lalm, s.case, s.pre_logits, s.post_logits, s.post_outputs) for s in seen
    ]
    assert [len(scores) for scores in together] == [len(locality_probes(c)) for c in cases]
    for joint, single in zip(together, alone, strict=True):
        for a, b in zip(joint, single, strict=True):
            assert a.keys() == b.keys()
            assert a["c_acc"] == b["c_acc"] and a["t_acc"] == pytest.approx(b["t_acc"])
            assert a["kl"] == pytest.approx(b["kl"], abs=1e-6)


def test_scores_need_one_pre_edit_row_and_output_per_probe(lalm: DestaLALM, case: EditCase) -> None:
    pre = pre_edit_logits(lalm, locality_probes(case))
    with pytest.raises(ValueError, match="locality probes"):
        specificity_scores(lalm, case, pre[:2], *greedy(lalm, case))


# --------------------------------------------------------------------------- pure functions


def test_kl_matches_its_definition() -> None:
    generator = torch.Generator().manual_seed(0)
    pre, post = torch.randn(3, 7, generator=generator), torch.randn(3, 7, generator=generator)
    p, q = pre.softmax(-1), post.softmax(-1)
    expected = (p * (p.log() - q.log())).sum(-1)
    torch.testing.assert_close(kl_divergence(pre, post), expected)
    assert torch.equal(kl_divergence(pre, pre), torch.zeros(3))


def test_topk_overlap_counts_shared_tokens() -> None:
    pre = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0]])
    post = torch.tensor([[5.0, 1.0, 3.0, 2.0, 4.0]])  # top-2 {0, 4} against {0, 1}
    assert topk_overlap(pre, post, 1).tolist() == [100.0]
    assert topk_overlap(pre, post, 2).tolist() == [50.0]
    assert topk_overlap(pre, post, 10).tolist() == [100.0]  # k beyond the vocabulary


def test_exact_match_ignores_case_punctuation_and_articles() -> None:
    assert normalise_answer("  The  Dog! ") == "dog"
    assert exact_match("Female.", "female") and exact_match("a cat", "Cat")
    assert not exact_match("The answer is cat", "cat") and not exact_match("", "cat")


# --------------------------------------------------------------------------- aggregation


def judged(kind: str, type_: int | None, **scores: float | None) -> dict:
    return {"kind": kind, "type": type_, "specificity": scores}


def test_single_metrics_average_attributes_without_weighting() -> None:
    records = [
        {
            "protocol": "single",
            "attribute": "Animal",
            "probes": [
                judged("reliability", None),
                judged("locality_audio", 2, kl=0.2, top1=100.0, c_acc=1.0),
                judged("locality_audio", 2, kl=0.4, top1=0.0, c_acc=0.0),
                judged("locality_text", None, kl=0.0, top1=100.0, c_acc=None),
            ],
        },
        {
            "protocol": "single",
            "attribute": "Gender",
            "probes": [judged("locality_audio", 1, kl=1.0, top1=100.0, c_acc=None)],
        },
    ]
    records[0]["probes"][0]["specificity"] = None
    metrics = specificity_metrics(records)
    assert metrics["single/Animal/locality_audio/kl"] == pytest.approx(0.3)
    assert metrics["single/Animal/locality/kl"] == pytest.approx(0.2)
    assert metrics["single/locality_audio/kl"] == pytest.approx((0.3 + 1.0) / 2)
    assert metrics["single/locality/top1"] == pytest.approx((200 / 3 + 100) / 2)
    assert metrics["single/locality_audio/type2/c_acc"] == 0.5
    assert metrics["single/locality/c_acc"] == 0.5  # only Animal has a contrast
    assert metrics["single/locality_text/kl"] == 0.0
    assert not any("reliability" in key for key in metrics)


def test_sequential_metrics_pool_edits_per_gap() -> None:
    def record(gap: int, kl: float) -> dict:
        probes = [judged("locality_audio", 1, kl=kl), judged("locality_text", None, kl=3 * kl)]
        return {"protocol": "sequential", "gap": gap, "attribute": "Animal", "probes": probes}

    metrics = specificity_metrics([record(0, 0.1), record(0, 0.3), record(1, 1.0), record(9, 5)])
    assert metrics["sequential/locality_audio/kl/gap0"] == pytest.approx(0.2)
    assert metrics["sequential/locality/kl/gap1"] == pytest.approx(2.0)
    assert not any(key.endswith("gap9") for key in metrics)
    assert specificity_metrics([]) == {}
    assert all(math.isfinite(v) for v in metrics.values())


def test_scores_go_to_the_locality_probes_in_order() -> None:
    probes = [
        {"kind": "reliability", "type": None},
        {"kind": "locality_audio", "type": 1},
        {"kind": "locality_text", "type": None},
    ]
    scores = [{"kl": 0.1}, {"kl": 0.2}]
    kept = with_specificity(probes, scores)
    assert [p.get("specificity") for p in kept] == [None, {"kl": 0.1}, {"kl": 0.2}]
    assert "specificity" not in probes[1]  # the judged probes themselves are left as they were
    with pytest.raises(ValueError, match="locality_probes"):
        with_specificity(probes, scores[:1])


def test_run_metrics_include_specificity_and_editor_extras() -> None:
    def record(protocol: str, case: str, kl: float, reg: float, **where: int) -> dict:
        probe = {
            **judged("locality_text", None, kl=kl, top1=100.0),
            "score": True,
            "pre_correct": True,
            "post_correct": True,
        }
        extras = {"regularizer/layer1": reg, "regularizer/mean": reg}
        return {
            "protocol": protocol,
            "case_id": case,
            "attribute": "Animal",
            "edit": {"extras": extras},
            "probes": [probe],
            **where,
        }

    single = single_metrics([record("single", "a", 0.2, 1.0), record("single", "b", 0.4, 3.0)])
    assert single["single/locality/kl"] == pytest.approx(0.3)
    assert single["single/Animal/locality_text/top1"] == 100.0
    assert single["single/edit/regularizer/layer1"] == 2.0
    # edit 0 of sequence 0 is evaluated at two steps but was applied, and regularized, once
    evaluated = [
        record("sequential", "a", 0.2, 1.0, sequence=0, step=0, edit_index=0, gap=0),
        record("sequential", "a", 0.6, 1.0, sequence=0, step=1, edit_index=0, gap=1),
        record("sequential", "b", 0.4, 4.0, sequence=0, step=1, edit_index=1, gap=0),
    ]
    sequential = sequential_metrics(evaluated)
    assert sequential["sequential/locality/kl/gap0"] == pytest.approx(0.3)
    assert sequential["sequential/locality_text/kl/gap1"] == pytest.approx(0.6)
    assert sequential["sequential/edit/regularizer/mean"] == 2.5

"""Each construction rule on small hand-built corpora, and every rule on the real release."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from fixtures_data import TEXT_QUESTION, make_case, tiny_release
from sake.data.readers import SakeRelease, load_release
from sake.data.rules import (
    RuleConfig,
    audio_locality_types,
    check_rules,
    edit_changes_label,
    edit_pair_balance,
    failed,
    generality_types,
    portability,
    sequence_labels_distinct,
    sequence_locality_independent,
    text_locality,
    third_party_answer_in_options,
    train_test_disjoint,
)
from sake.data.rules import answer_in_options_rule as answer_in_options
from sake.data.schema import EditCase, Sequence

CONFIG = RuleConfig()
UNBALANCED_OK = RuleConfig(balanced_splits=())


def corpus(test: list[EditCase], *, train: list[EditCase] = (), sequences=()) -> SakeRelease:
    return SakeRelease(
        root=Path("corpus"),
        audio_root=Path("corpus/audio"),
        splits={"train": list(train), "test": list(test)},
        sequences=list(sequences),
    )


def with_probe(case: EditCase, field: str, index: int, **changes) -> EditCase:
    probes = list(getattr(case, field))
    probes[index] = replace(probes[index], **changes)
    return replace(case, **{field: tuple(probes)})


def failing(release: SakeRelease, config: RuleConfig = UNBALANCED_OK) -> list[str]:
    """Rules that fail; single-case corpora cannot be balanced, so balance is off by default."""
    return [result.name for result in failed(check_rules(release, config))]


def test_tiny_corpus_satisfies_every_rule() -> None:
    results = check_rules(tiny_release())
    assert [result.status for result in results] == ["ok"] * len(results)
    assert len(results) == 11


def test_balance_counts_each_label_both_ways() -> None:
    release = tiny_release()
    unbalanced = corpus(release.splits["test"][1:], train=release.splits["train"])
    result = edit_pair_balance(unbalanced, CONFIG)
    assert [str(violation) for violation in result.violations] == [
        "test/Animal: label 'cow' is y_o in 1 cases but y_e in 0",
        "test/Animal: label 'pig' is y_o in 0 cases but y_e in 1",
    ]
    assert failing(unbalanced, CONFIG) == ["edit_pair_balance"]
    assert edit_pair_balance(unbalanced, RuleConfig(balance_tolerance=1)).ok


def test_balance_ignores_splits_not_configured() -> None:
    release = tiny_release()
    assert len(release.splits["val"]) == 1
    assert edit_pair_balance(release, CONFIG).ok
    assert not edit_pair_balance(release, RuleConfig(balanced_splits=("val",))).ok


def test_an_edit_must_change_the_label() -> None:
    result = edit_changes_label(corpus([make_case("Emotion", "sad", "sad", "x")]), CONFIG)
    assert [v.detail for v in result.violations] == ["y_o equals y_e"]


def test_generality_types_follow_their_definitions() -> None:
    case = make_case("Animal", "dog", "cat", "x")
    same_audio = with_probe(case, "generality", 1, file=case.reliability.file)
    assert [v.detail for v in generality_types(corpus([same_audio]), CONFIG).violations] == [
        "generality/type2: audio is the edit audio",
        "generality/type3: audio is not the type-2 audio",
    ]
    same_question = with_probe(case, "generality", 0, question=case.reliability.question)
    details = [v.detail for v in generality_types(corpus([same_question]), CONFIG).violations]
    assert details == [
        "generality/type1: question is the edit question",
        "generality/type3: question is not the type-1 one",
    ]
    missing = replace(case, generality=case.generality[:2])
    assert [v.detail for v in generality_types(corpus([missing]), CONFIG).violations] == [
        "generality/type3: 0 probes, expected 1"
    ]
    wrong_answer = with_probe(case, "generality", 2, answer="dog")
    assert failing(corpus([wrong_answer])) == ["generality_types"]


def test_audio_locality_types_follow_their_definitions() -> None:
    animal = make_case("Animal", "dog", "cat", "x")
    type3_not_target = with_probe(animal, "locality_audio", 2, answer="pig")
    assert [
        v.detail for v in audio_locality_types(corpus([type3_not_target]), CONFIG).violations
    ] == ["locality_audio/type3: track 'Animal' with answer 'pig' does not fit type 3"]
    type2_is_original = with_probe(animal, "locality_audio", 1, answer="dog")
    assert not audio_locality_types(corpus([type2_is_original]), CONFIG).ok
    type1_same_track = with_probe(animal, "locality_audio", 0, track="Animal")
    assert not audio_locality_types(corpus([type1_same_track]), CONFIG).ok
    type4_attribute = with_probe(animal, "locality_audio", 3, track="Emotion")
    assert not audio_locality_types(corpus([type4_attribute]), CONFIG).ok


def test_gender_has_no_type2_locality() -> None:
    gender = make_case("Gender", "male", "female", "x")
    assert audio_locality_types(corpus([gender]), CONFIG).ok
    extra = replace(gender.locality_audio[1], type=2, answer="male")
    with_type2 = replace(gender, locality_audio=(*gender.locality_audio, extra))
    details = [v.detail for v in audio_locality_types(corpus([with_type2]), CONFIG).violations]
    assert details == ["locality_audio/type2: unexpected type"]


def test_gender_target_locality_matches_case_insensitively() -> None:
    gender = make_case("Gender", "female", "male", "x")
    capitalised = with_probe(gender, "locality_audio", 1, answer="Male", options=("Male", "Female"))
    assert audio_locality_types(corpus([capitalised]), CONFIG).ok


def test_exactly_one_text_locality_probe() -> None:
    case = make_case("Language", "German", "French", "x")
    twice = replace(case, locality_text=case.locality_text * 2)
    assert [v.detail for v in text_locality(corpus([twice]), CONFIG).violations] == [
        "2 text-locality probes, expected 1"
    ]
    with_audio = with_probe(case, "locality_text", 0, file="clip.wav")
    assert not text_locality(corpus([with_audio]), CONFIG).ok
    assert failing(corpus([replace(case, locality_text=())])) == ["text_locality"]


def test_portability_presence_options_and_exclusion() -> None:
    case = make_case("Emotion", "happy", "sad", "x")
    absent = replace(case, portability=())
    assert [v.detail for v in portability(corpus([absent]), CONFIG).violations] == [
        "no portability"
    ]
    assert portability(corpus([], train=[absent]), CONFIG).ok
    not_excluded = with_probe(case, "portability", 0, original_answer="fact of sad")
    assert [v.detail for v in portability(corpus([not_excluded]), CONFIG).violations] == [
        "portability: answer 'fact of sad' is also true of the unedited label"
    ]
    not_an_option = with_probe(case, "portability", 0, answer="fact of fear")
    assert failing(corpus([not_an_option])) == ["portability", "answer_in_options"]


def test_answers_must_be_options_of_sake_probes() -> None:
    case = make_case("Animal", "hen", "crow", "x")
    broken = replace(case, reliability=replace(case.reliability, options=("hen", "dog")))
    result = answer_in_options(corpus([broken]), CONFIG)
    assert [v.detail for v in result.violations] == [
        "reliability: answer 'crow' is not one of ['hen', 'dog']"
    ]


def test_third_party_mismatches_are_advisories() -> None:
    case = make_case("Animal", "hen", "crow", "x")
    odd_type4 = with_probe(case, "locality_audio", 3, answer="seven")
    odd_text = with_probe(odd_type4, "locality_text", 0, question=TEXT_QUESTION, answer="9")
    release = corpus([odd_text])
    result = third_party_answer_in_options(release, CONFIG)
    assert result.advisory and result.status == "advisory" and len(result.violations) == 2
    assert result.notes["locality_audio/type4"] == {
        "probes": 1,
        "answer_in_options": 0,
        "fraction": 0.0,
    }
    assert failing(release) == []


def test_held_out_audio_never_appears_in_training() -> None:
    train = make_case("Animal", "dog", "cat", "tr")
    test = make_case("Animal", "cat", "dog", "te")
    leaked = replace(test, generality=(test.generality[0], train.generality[1], test.generality[2]))
    result = train_test_disjoint(corpus([leaked], train=[train]), CONFIG)
    assert [v.detail for v in result.violations] == [
        "generality/type2: audio Animal/dog_tr_other.wav is in training"
    ]
    shared_locality = replace(test, locality_audio=train.locality_audio)
    result = train_test_disjoint(corpus([shared_locality], train=[train]), CONFIG)
    assert result.ok and result.notes == {"shared_locality_audio": 4}


def test_sequence_labels_are_distinct() -> None:
    sequence = Sequence(
        index=3,
        cases=(make_case("Animal", "dog", "cat", "a"), make_case("Animal", "cat", "pig", "b")),
    )
    result = sequence_labels_distinct(corpus([], sequences=[sequence]), CONFIG)
    assert [str(v) for v in result.violations] == ["seq3: label 'cat' occurs 2 times as y_o/y_e"]


def test_sequence_locality_never_answers_an_original_label() -> None:
    first = replace(make_case("Animal", "dog", "cat", "a"), case_id="seq0/0")
    second = replace(make_case("Language", "German", "French", "b"), case_id="seq0/1")
    assert first.locality_audio_of(1).answer == "German"
    sequence = Sequence(index=0, cases=(first, second))
    result = sequence_locality_independent(corpus([], sequences=[sequence]), CONFIG)
    assert [str(v) for v in result.violations] == [
        "seq0/0: locality_audio/type1: answer 'German' is y_o of seq0/1"
    ]


def test_rules_apply_to_sequence_cases_too() -> None:
    case = make_case("Animal", "dog", "cat", "a")
    broken = replace(case, case_id="seq0/0", portability=())
    release = corpus([], sequences=[Sequence(index=0, cases=(broken,))])
    assert failing(release) == ["portability"]
    lenient = RuleConfig(portability_in_sequences=False)
    assert portability(release, lenient).ok


def test_every_rule_holds_on_the_real_release(shared_sake: Path) -> None:
    release = load_release(shared_sake)
    results = {result.name: result for result in check_rules(release)}
    assert failed(results.values()) == []
    assert results["edit_pair_balance"].checked == 5200
    assert results["train_test_disjoint"].notes == {"shared_locality_audio": 0}
    advisory = results["third_party_answer_in_options"]
    assert advisory.notes["locality_audio/type4"]["fraction"] > 0.98
    assert advisory.notes["locality_text"]["probes"] == 5700


def test_real_validation_slice_is_not_balanced_on_its_own(shared_sake: Path) -> None:
    release = load_release(shared_sake, splits=("val",), with_sequences=False)
    result = edit_pair_balance(release, RuleConfig(balanced_splits=("val",)))
    assert not result.ok


@pytest.mark.parametrize("tolerance", [0, 3])
def test_balance_tolerance_is_configurable(tolerance: int) -> None:
    release = tiny_release()
    result = edit_pair_balance(corpus(release.splits["test"][1:]), RuleConfig(tolerance))
    assert result.ok == (tolerance > 0)

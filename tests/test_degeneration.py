"""The degeneration detector, rule by rule, and on real DeSTA2.5-Audio / Qwen2-Audio outputs."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest

from sake.evaluation.degeneration import (
    DegenerationRules,
    degeneration_ratio,
    detect_degeneration,
    is_degenerate,
)

REFERENCE_OUTPUTS = Path(__file__).resolve().parents[2] / "shared" / "sake" / "reference_outputs"

TRUTH_TABLE = (
    "| P | Q | R | ~P | ~Q |\n|---|---|---|---|---|\n| T | T | T | F | F |\n"
    "| T | T | F | F | F |\n| T | F | T | F | T |\n| F | F | F | T | T |"
)

# output, reason (None: not degenerate)
OUTPUTS = [
    ("", "empty"),
    (" \n\t ", "empty"),
    ("The speaker is male.\n\n\n\nThe speaker is male", "newline_run"),
    ("Answer:\n \n\t\n\n", "newline_run"),
    ("It is a dog" + "!" * 30, "character_run"),
    ("frogs" + "K" * 40, "character_run"),
    ("henhenhenhenhenhenhenhen", "repeated_unit"),
    ("sheepdogdogdogdogdogdogdogdog", "repeated_unit"),
    ("angry.angry.angry.angry.angry.", "repeated_unit"),
    ("fKwellKwellKwellKwellKwell", "repeated_unit"),
    ("hen hen hen hen hen hen hen hen", "repeated_ngram"),
    ("Hen! hen, HEN. hen hen; hen - hen: hen", "repeated_ngram"),
    ("the cat is the cat is the cat is the cat is", "repeated_ngram"),
    ("I think it is a dog. It is a dog. It is a dog. It is a dog.", "repeated_ngram"),
    (
        "Alf Ross's student, Alf Ross's student, Alf Ross's student, Alf Ross's student.",
        "repeated_ngram",
    ),
    (
        "the dog barks here, and then the dog barks there; later the dog barks loud, "
        "oh the dog barks now, so the dog barks again and the dog barks on",
        "dominant_ngram",
    ),
    # ordinary outputs, including the repetition real answers contain
    ("female", None),
    ("The correct answer is: hen. The other options, crow and rooster, do not fit.", None),
    ('The sound "woof, woof, woof, woof" is typical of a dog.', None),
    ('A loud, repetitive "What? What? What? What? What?" call, likely a crow.', None),
    ('A sharp, piercing "kek-kek-kek" or "kek-kek-kek-kek".', None),
    ("She said it very, very, very clearly.", None),
    (TRUTH_TABLE, None),
    ("= 0 + 0 + 0 + 0 + 0 + 0 + 0 + 0 + 1/2", None),
    ("(m + n + mn) + p + (m + n + mn)p = m + n + mn + p + mp + np + mnp", None),
    ("11111111 (127) + 00000001 (1) = 100000000 (256)", None),
    ("|----|----|----|----|--------|--------|-------|", None),
    ("First paragraph.\n\nSecond paragraph.\n\n- item\n- item", None),
    ("hahaha, that was funny", None),
]


@pytest.mark.parametrize(("output", "reason"), OUTPUTS)
def test_rules_on_fixture_outputs(output: str, reason: str | None):
    found = detect_degeneration(output)
    assert found.reason == reason
    assert found.degenerate is (reason is not None)
    assert is_degenerate(output) is (reason is not None)


def test_evidence_names_the_repetition():
    assert detect_degeneration("sheepdogdogdogdogdogdog").evidence == "dogdogdogdogdogdog"
    found = detect_degeneration("It is: cat cat cat cat cat cat cat cat cat.")
    assert found.evidence == " ".join(["cat"] * 9)
    assert detect_degeneration("fine answer").evidence == ""


def test_thresholds_are_configurable():
    text = "no no no no no"
    assert not is_degenerate(text)
    assert detect_degeneration(text, DegenerationRules(min_ngram_words=5)).reason == (
        "repeated_ngram"
    )
    assert is_degenerate("hahahaha", DegenerationRules(min_unit_span=8))
    assert not is_degenerate("!" * 30, DegenerationRules(min_character_run=40))
    assert not is_degenerate("a\n\n\n\nb", DegenerationRules(min_newline_run=5))


def test_degeneration_ratio():
    outputs = ["male", "", "henhenhenhenhenhenhen", "The speaker is female."]
    assert degeneration_ratio(outputs) == 0.5
    assert degeneration_ratio([]) == 0.0


@cache
def _reference(name: str) -> list[dict]:
    path = REFERENCE_OUTPUTS / f"MEND_{name}.json"
    if not path.is_file():
        pytest.skip(f"reference outputs are not available at {REFERENCE_OUTPUTS}")
    return json.loads(path.read_text(encoding="utf-8"))


# file, record, side, probe, start of the output, reason
REFERENCE_CASES = [
    ("DeSTA_single_Animal", 102, "post_edit", "portability_audio", "henhenhen", "repeated_unit"),
    ("DeSTA_single_Animal", 87, "post_edit", "portability_audio", "sheepdogdog", "repeated_unit"),
    ("DeSTA_single_Animal", 275, "post_edit", "portability_audio", "cat.cat.", "repeated_unit"),
    ("DeSTA_single_Animal", 79, "post_edit", "generality_type_2", "frogsKkKKK", "character_run"),
    ("DeSTA_single_Emotion", 17, "post_edit", "portability_audio", "angry.angry", "repeated_unit"),
    ("DeSTA_single_Animal", 43, "pre_edit", "locality_text", "The correct", "repeated_ngram"),
    ("DeSTA_single_Emotion", 18, "pre_edit", "locality_audio_type_3", "Here are", "repeated_ngram"),
    # repetition that is content, not a loop
    ("DeSTA_single_Animal", 201, "pre_edit", "generality_type_0", "Based on", None),
    ("DeSTA_single_Animal", 42, "pre_edit", "reliability", "Based on", None),
    ("DeSTA_single_Animal", 232, "pre_edit", "locality_text", "To determine", None),
    ("DeSTA_single_Emotion", 297, "pre_edit", "locality_text", "Let's analyze", None),
    ("Qwen_single_Language", 282, "pre_edit", "locality_text", "To determine", None),
    ("Qwen_single_Gender", 84, "pre_edit", "locality_text", "Here's the truth", None),
    ("DeSTA_single_Animal", 102, "post_edit", "generality_type_0", "hen", None),
]


@pytest.mark.parametrize(("name", "record", "side", "probe", "start", "reason"), REFERENCE_CASES)
def test_real_reference_outputs(
    name: str, record: int, side: str, probe: str, start: str, reason: str | None
):
    output = _reference(name)[record][side][probe]
    assert output.startswith(start)
    assert detect_degeneration(output).reason == reason


def _outputs(name: str, side: str) -> list[str]:
    return [output for entry in _reference(name) for output in entry[side].values()]


def test_edits_degenerate_desta_animal_outputs():
    """MEND on DeSTA2.5-Audio (Animal): 23 of 3000 post-edit outputs loop, 1 pre-edit one."""
    pre = _outputs("DeSTA_single_Animal", "pre_edit")
    post = _outputs("DeSTA_single_Animal", "post_edit")
    assert len(pre) == len(post) == 3000
    assert sum(map(is_degenerate, pre)) == 1
    assert sum(map(is_degenerate, post)) == 23
    assert degeneration_ratio(post) > 10 * degeneration_ratio(pre)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "pre", "post"),
    [
        ("DeSTA_single_Animal", 1, 23),
        ("DeSTA_single_Emotion", 1, 2),
        ("Qwen_single_Gender", 0, 0),
        ("Qwen_single_Language", 0, 0),
    ],
)
def test_degenerate_counts_per_reference_file(name: str, pre: int, post: int):
    assert sum(map(is_degenerate, _outputs(name, "pre_edit"))) == pre
    assert sum(map(is_degenerate, _outputs(name, "post_edit"))) == post

"""The deterministic option judge, on synthetic edge cases and on real LALM outputs."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest

from sake.data.options import parse_options
from sake.evaluation.judges import Choice, choose_option, is_consistent, is_correct, normalise

REFERENCE_OUTPUTS = Path(__file__).resolve().parents[2] / "shared" / "sake" / "reference_outputs"

GENDER = ("male", "female")
EMOTIONS = ("happy", "sad", "angry", "fear", "disgust")
ANIMALS = ("crow", "rooster", "hen", "dog")
STARS = ("5", "7", "9", "12")
SPOKEN_WORDS = ("up", "no", "yes", "left")
LETTERED = ("A", "B", "C", "D")

# output, options, chosen option (None: nothing chosen), reason
CHOICES = [
    ("", GENDER, None, "empty"),
    ("  \n\t", GENDER, None, "empty"),
    ("female", GENDER, "female", "exact"),
    ("Female.", GENDER, "female", "exact"),
    ("Answer: male", GENDER, "male", "exact"),
    ("The speaker is female.", GENDER, "female", "single"),
    ("The speaker is male.", GENDER, "male", "single"),
    ("The speaker is a woman.", GENDER, "female", "single"),
    ("A deep, masculine voice.", GENDER, "male", "single"),
    ("male male male male", GENDER, "male", "single"),
    ("not male", GENDER, None, "none"),
    ("The speaker is not male.", GENDER, None, "none"),
    ("The speaker is female, not male.", GENDER, "female", "single"),
    ("It could be male or female.", GENDER, None, "several"),
    ("The speaker is neither male nor female.", GENDER, None, "none"),
    ("It is not possible to determine whether the speaker is male.", GENDER, None, "refusal"),
    ("The speaker is expressing happiness.", EMOTIONS, "happy", "single"),
    ("sadness", EMOTIONS, "sad", "exact"),
    ("The speaker sounds fearful and afraid.", EMOTIONS, "fear", "single"),
    ("She spoke angrily.", EMOTIONS, "angry", "single"),
    ("The tone conveys disgusted revulsion.", EMOTIONS, "disgust", "single"),
    ("There is no indication of happiness, sadness, fear, or anger.", EMOTIONS, None, "none"),
    ("The emotion is anger. It is not sadness or fear.", EMOTIONS, "angry", "single"),
    ("disappointed", EMOTIONS, None, "none"),
    ("a", EMOTIONS, "happy", "letter"),
    ("(b)", EMOTIONS, "sad", "letter"),
    ("C.", EMOTIONS, "angry", "letter"),
    ("Answer: D", EMOTIONS, "fear", "letter"),
    ("The correct answer is E.", EMOTIONS, "disgust", "letter"),
    ("f", EMOTIONS, None, "none"),
    ("The rooster crows loudly at dawn.", ANIMALS, "rooster", "single"),
    ("Two dogs are barking.", ANIMALS, "dog", "single"),
    ("henhenhenhenhenhenhen", ANIMALS, None, "none"),
    (
        "The correct answer is: rooster. A crow or a hen would sound different.",
        ANIMALS,
        "rooster",
        "announced",
    ),
    ("It is a hen. The other options, crow and rooster, are louder.", ANIMALS, "hen", "leading"),
    (
        "It is a hen, so the answer would be hen. However, the answer would be rooster.",
        ANIMALS,
        None,
        "several",
    ),
    ("The language spoken is Mandarin.", ("English", "Chinese"), "Chinese", "single"),
    ("7", STARS, "7", "exact"),
    ("The answer is 7.", STARS, "7", "exact"),
    ("About 7-8 stars, not 5, 7, 9, or 12.", STARS, None, "none"),
    ("The correct answer would be option 5: 50-100.", STARS, None, "none"),
    ("Stars: 5 + 7 = 12 in total.\nIt varies.", STARS, None, "several"),
    ("There is no speech detected.", SPOKEN_WORDS, None, "unanchored"),
    ('The spoken word is "no".', SPOKEN_WORDS, "no", "single"),
    ("(B) Thanks. I don't need a ride.", LETTERED, "B", "single"),
    (
        "The most appropriate response is:\n\n(C) We will work hard for quite a while.",
        LETTERED,
        "C",
        "announced",
    ),
    ("The answer is C, because it fits.", LETTERED, "C", "single"),
    ("Therefore, a dog is barking.", LETTERED, None, "unanchored"),
    ("A dog is barking.", LETTERED, None, "unanchored"),
    ("The correct answer is: Posi", ("Positive law", "Natural law"), None, "none"),
    (
        "The correct answer is:\n\nOur highest inward principle.\n\nOur strongest inward "
        "principle is different.",
        ("our strongest inward principle.", "our highest inward principle."),
        "our highest inward principle.",
        "announced",
    ),
    (
        "The correct answer is:\n\n1. Always available.\n2. Seldom obsolete.",
        ("Always available.", "Seldom obsolete.", "Cheap."),
        None,
        "several",
    ),
    ("spoofed", ("spoofed", "authentic"), "spoofed", "exact"),
    ("It sounds like Reverb.", ("Chorus", "Distortion", "Delay", "Reverb"), "Reverb", "single"),
    ("The pitch is C♯1.", ("C1", "C#1", "D1"), "C#1", "single"),
    ("The distance is 2.0m.", ("0.4m", "2.0m", "4.0m"), "2.0m", "single"),
]


@pytest.mark.parametrize(("output", "options", "expected", "reason"), CHOICES)
def test_choose_option(output: str, options: tuple[str, ...], expected: str | None, reason: str):
    choice = choose_option(output, options)
    assert choice.index == (None if expected is None else options.index(expected))
    assert choice.reason == reason


def test_female_is_never_also_male():
    choice = choose_option("The speaker is a female.", GENDER)
    assert choice == Choice(1, (1,), "single")


def test_two_options_named_is_wrong():
    assert not is_correct("The speaker is male or female.", GENDER, "male")
    assert not is_correct("The speaker is male or female.", GENDER, "female")


def test_empty_output_is_wrong_even_for_an_empty_answer():
    assert not is_correct("", GENDER, "")
    assert not is_correct("   ", GENDER, "male")


def test_mentioned_lists_affirmative_mentions_in_order():
    choice = choose_option("Maybe sad, maybe happy, but not angry.", EMOTIONS)
    assert choice.mentioned == (1, 0)
    assert choice.index is None


# output, options, answer, correct
CORRECTNESS = [
    ("male", ("Male", "Female"), "Male", True),
    ("The speaker is female.", ("Male", "Female"), "Female", True),
    ("The speaker is female.", ("Male", "Female"), "Male", False),
    ("happiness", EMOTIONS, "happy", True),
    ("b", EMOTIONS, "sad", True),
    ("b", EMOTIONS, "happy", False),
    ("middle-aged adult", ("Teenager", "Middle-aged adult"), "middle_aged_adult", True),
    ("<silence>", SPOKEN_WORDS, "<silence>", True),
    ("The word was crying.", ("cry", "laugh"), "crying", True),
    ("The word was cry.", ("cry", "laugh"), "crying", False),
    ("(B) Yes.", LETTERED, "B", True),
    ("It is a dog.", (), "dog", True),
    ("It is not a dog.", (), "dog", False),
]


@pytest.mark.parametrize(("output", "options", "answer", "correct"), CORRECTNESS)
def test_is_correct(output: str, options: tuple[str, ...], answer: str, correct: bool):
    assert is_correct(output, options, answer) is correct


LONG_EXPLANATION = (
    "Judging a voice from one short clip is hard: pitch, timbre and speaking rate vary "
    "between people of every group, and a recording simply carries too few cues. A careful "
    "listener would want more speech before saying anything about the person who recorded it."
)

# pre-edit output, post-edit output, options, consistent
CONSISTENCY = [
    ("male", "The speaker is male.", GENDER, True),
    ("Male", "male", ("Male", "Female"), True),
    ("male", "female", GENDER, False),
    ("male", "I cannot tell.", GENDER, False),
    ("I cannot tell.", "I cannot tell", GENDER, True),
    ("I cannot tell.", "It is unclear.", GENDER, True),
    ("The speaker is calm.", "The speaker is neutral.", GENDER, False),
    ("It could be male or female.", "Either male or female, I think.", GENDER, True),
    ("It could be male or female.", "It could be male, or maybe a child.", GENDER, False),
    (LONG_EXPLANATION, LONG_EXPLANATION.replace("simply", "merely"), GENDER, True),
    (LONG_EXPLANATION, LONG_EXPLANATION + " It could be male or female.", GENDER, False),
    (LONG_EXPLANATION, "Pitch is not a reliable cue for this speaker at all.", GENDER, False),
    ("male or female", "Male or female!", GENDER, True),
    ("Forty-two.", "forty two", (), True),
    ("Forty-two.", "forty three", (), False),
]


@pytest.mark.parametrize(("output_a", "output_b", "options", "consistent"), CONSISTENCY)
def test_is_consistent(output_a: str, output_b: str, options: tuple[str, ...], consistent: bool):
    assert is_consistent(output_a, output_b, options) is consistent
    assert is_consistent(output_b, output_a, options) is consistent


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  The Speaker's  GENDER: Female! ", "the speakers gender female"),
        ("ｆｕｌｌｗｉｄｔｈ", "fullwidth"),
        ("Middle-aged_adult", "middle aged adult"),
        ("$52.80 and 0.4m", "52.80 and 0.4 m"),
        ("A#0 or C♯1", "a#0 or c#1"),
        ("", ""),
    ],
)
def test_normalise(text: str, expected: str):
    assert normalise(text) == expected


# file, record, side, probe, start of the output, chosen option (None: nothing), reason
REFERENCE_CASES = [
    (
        "Qwen_single_Gender",
        0,
        "pre_edit",
        "generality_type_0",
        "The speaker is female.",
        "female",
        "single",
    ),
    ("Qwen_single_Gender", 3, "pre_edit", "reliability", "The speaker is male.", "male", "single"),
    ("Qwen_single_Gender", 0, "pre_edit", "locality_audio_type_1", "Male", "Male", "exact"),
    (
        "Qwen_single_Gender",
        67,
        "pre_edit",
        "locality_audio_type_1",
        "The speaker is female.",
        "Female",
        "single",
    ),
    ("Qwen_single_Gender", 30, "pre_edit", "locality_audio_type_2", "d", "d", "exact"),
    (
        "Qwen_single_Gender",
        79,
        "pre_edit",
        "locality_audio_type_2",
        "Hypokinetic dysphonia.",
        "hypokinetic dysphonia",
        "exact",
    ),
    ("Qwen_single_Gender", 25, "pre_edit", "locality_audio_type_2", "two", "two", "exact"),
    (
        "Qwen_single_Gender",
        91,
        "pre_edit",
        "locality_audio_type_2",
        "Laughter, sniff, sneeze",
        None,
        "several",
    ),
    (
        "Qwen_single_Gender",
        0,
        "pre_edit",
        "locality_text",
        "The Pleiades is actually a group",
        None,
        "none",
    ),
    (
        "Qwen_single_Gender",
        0,
        "post_edit",
        "locality_text",
        "The Pleiades is an open star",
        None,
        "none",
    ),
    ("Qwen_single_Gender", 37, "pre_edit", "locality_audio_type_0", "Sheep", "sheep", "exact"),
    ("Qwen_single_Language", 1, "post_edit", "reliability", "Spanish", "Spanish", "exact"),
    (
        "Qwen_single_Language",
        243,
        "pre_edit",
        "locality_text",
        "Personality is not an example",
        "Personality.",
        "leading",
    ),
    (
        "DeSTA_single_Emotion",
        4,
        "pre_edit",
        "generality_type_2",
        "The speaker is expressing happiness.",
        "happy",
        "single",
    ),
    (
        "DeSTA_single_Emotion",
        54,
        "pre_edit",
        "generality_type_2",
        "Based on the vocal cues, the speaker conveys a sense of sadness.",
        "sad",
        "single",
    ),
    (
        "DeSTA_single_Emotion",
        5,
        "pre_edit",
        "generality_type_1",
        "The speaker is expressing disgust.",
        "disgust",
        "single",
    ),
    ("DeSTA_single_Emotion", 11, "post_edit", "locality_audio_type_1", "sadness", None, "none"),
    (
        "DeSTA_single_Emotion",
        14,
        "post_edit",
        "locality_audio_type_1",
        "disappointed",
        None,
        "none",
    ),
    (
        "DeSTA_single_Emotion",
        57,
        "pre_edit",
        "locality_audio_type_2",
        "Based on the provided audio clip, the emotional state expressed by the speaker is neutral",
        None,
        "none",
    ),
    (
        "DeSTA_single_Emotion",
        51,
        "pre_edit",
        "locality_text",
        "The correct answer is: Work specialisation.",
        "Work specialisation",
        "announced",
    ),
    (
        "DeSTA_single_Emotion",
        16,
        "pre_edit",
        "locality_text",
        "To find the amount of the tip",
        "$52.80",
        "announced",
    ),
    (
        "DeSTA_single_Emotion",
        289,
        "pre_edit",
        "locality_audio_type_3",
        "Based on the audio clip, it appears to be a cough.",
        "Cough",
        "single",
    ),
    (
        "DeSTA_single_Animal",
        18,
        "pre_edit",
        "locality_audio_type_0",
        'Based on the audio clip, I would select the option "Male".',
        "Male",
        "single",
    ),
    (
        "DeSTA_single_Animal",
        225,
        "pre_edit",
        "portability_audio",
        "Based on the Linnaean classification, the animal in the recording is likely a goat",
        "chamois",
        "announced",
    ),
    (
        "DeSTA_single_Animal",
        114,
        "pre_edit",
        "locality_audio_type_3",
        "I can't help you with that.",
        None,
        "refusal",
    ),
    (
        "DeSTA_single_Animal",
        243,
        "pre_edit",
        "locality_audio_type_0",
        "Based on the provided audio snippet, it is not possible to determine the speaker's gender",
        None,
        "refusal",
    ),
    ("DeSTA_single_Animal", 102, "post_edit", "portability_audio", "henhenhenhen", None, "none"),
    (
        "DeSTA_single_Animal",
        41,
        "pre_edit",
        "locality_text",
        "The correct answer is:\n\nB) The UN Human Rights Council scrutinises",
        "The UN Human Rights Council scrutinises the human rights records of member states on the "
        "Council and each member state of the UN",
        "single",
    ),
    (
        "DeSTA_single_Animal",
        48,
        "pre_edit",
        "locality_audio_type_0",
        'Based on the provided audio clip, I would select "Chinese"',
        "Chinese",
        "single",
    ),
    (
        "DeSTA_single_Animal",
        64,
        "pre_edit",
        "locality_audio_type_0",
        "The language spoken in the audio is Italian.",
        "Italian",
        "single",
    ),
    (
        "DeSTA_single_Animal",
        11,
        "pre_edit",
        "generality_type_2",
        "Based on the audio clip, I would identify the source of the sound as a rooster.",
        "rooster",
        "single",
    ),
    (
        "DeSTA_single_Animal",
        212,
        "pre_edit",
        "locality_audio_type_1",
        "Based on the provided audio recording, the sound that most closely matches the one "
        'described is the "rooster".',
        "rooster",
        "leading",
    ),
    (
        "DeSTA_single_Animal",
        272,
        "pre_edit",
        "locality_text",
        "The correct answer is: Positive law.",
        "Positive law",
        "announced",
    ),
    (
        "DeSTA_single_Animal",
        132,
        "pre_edit",
        "locality_text",
        "To find the total mechanical energy",
        None,
        "unanchored",
    ),
    (
        "DeSTA_single_Animal",
        220,
        "pre_edit",
        "locality_audio_type_3",
        "<start_audio>",
        None,
        "unanchored",
    ),
    (
        "DeSTA_single_Animal",
        124,
        "pre_edit",
        "locality_text",
        "The correct answer is:\n\n1. Generally cheaper",
        None,
        "several",
    ),
    (
        "DeSTA_single_Animal",
        277,
        "pre_edit",
        "locality_audio_type_3",
        "The most appropriate response to the audio would be (C)",
        "C",
        "announced",
    ),
]


@cache
def _reference_records(name: str) -> list[dict]:
    path = REFERENCE_OUTPUTS / f"MEND_{name}.json"
    if not path.is_file():
        pytest.skip(f"reference outputs are not available at {REFERENCE_OUTPUTS}")
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    ("name", "record", "side", "probe", "start", "expected", "reason"), REFERENCE_CASES
)
def test_reference_outputs(
    name: str,
    record: int,
    side: str,
    probe: str,
    start: str,
    expected: str | None,
    reason: str,
):
    entry = _reference_records(name)[record]
    output = entry[side][probe]
    options = parse_options(entry[probe]["question"])
    assert output.startswith(start)
    choice = choose_option(output, options)
    assert choice.index == (None if expected is None else options.index(expected))
    assert choice.reason == reason


@pytest.mark.parametrize(
    ("name", "record", "probe", "consistent"),
    [
        ("Qwen_single_Gender", 0, "locality_audio_type_1", True),
        ("DeSTA_single_Animal", 18, "locality_audio_type_0", True),
        ("Qwen_single_Gender", 0, "locality_text", False),
    ],
)
def test_reference_consistency(name: str, record: int, probe: str, consistent: bool):
    entry = _reference_records(name)[record]
    options = parse_options(entry[probe]["question"])
    outputs = (entry["pre_edit"][probe], entry["post_edit"][probe])
    assert is_consistent(*outputs, options) is consistent


def test_reference_reliability_is_judged_against_the_edit_target():
    entry = _reference_records("Qwen_single_Gender")[0]
    probe = entry["reliability"]
    options = parse_options(probe["question"])
    assert not is_correct(entry["pre_edit"]["reliability"], options, probe["answer"])
    assert is_correct(entry["post_edit"]["reliability"], options, probe["answer"])


@pytest.mark.slow
def test_most_reference_outputs_choose_one_option():
    """Over every probe of every reference file, pre and post edit, most outputs decide."""
    decided = total = 0
    for name in (
        "DeSTA_single_Animal",
        "DeSTA_single_Emotion",
        "Qwen_single_Gender",
        "Qwen_single_Language",
    ):
        for entry in _reference_records(name):
            for probe, fields in entry.items():
                if probe in ("pre_edit", "post_edit"):
                    continue
                options = parse_options(fields["question"])
                for side in ("pre_edit", "post_edit"):
                    total += 1
                    decided += choose_option(entry[side][probe], options).index is not None
    assert total == 23_400
    assert decided / total > 0.85

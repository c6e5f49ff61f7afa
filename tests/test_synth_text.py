"""The text content of the synthetic corpus: templates, knowledge base, text bank, chat."""

from __future__ import annotations

import itertools
import json
import string
from pathlib import Path

import numpy as np
import pytest

from sake.data.schema import ATTRIBUTES, LABELS
from sake.data.synth import chat, knowledge, questions, textbank

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "sake" / "data"

SAKE_CATEGORIES = {
    "Animal": (
        "behavior",
        "care item",
        "diet",
        "family",
        "locomotion",
        "physical",
        "reproduction",
        "vocalization",
    ),
    "Emotion": ("descriptive sentence", "facial expression", "scenario", "social interaction"),
    "Gender": ("history", "celebrity", "clothing", "title", "vocal range"),
    "Language": (
        "ISO code",
        "city",
        "dish",
        "history",
        "language family",
        "literary work",
        "official language",
        "proficiency test",
        "translation",
    ),
}

# Categories whose labels genuinely share an answer; the corpus builder skips them per pair.
EXPECTED_SHARED = {
    ("Animal", "care item"),
    ("Animal", "diet"),
    ("Animal", "family"),
    ("Animal", "locomotion"),
    ("Language", "language family"),
}


def _placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def _words(text: str) -> set[str]:
    return {word.strip(string.punctuation + "’").lower() for word in text.split()}


def _all_categories() -> list[knowledge.Category]:
    return [c for attribute in ATTRIBUTES for c in knowledge.categories(attribute)]


@pytest.mark.parametrize("attribute", ATTRIBUTES)
def test_recognition_templates_are_many_and_split_disjointly(attribute: str) -> None:
    train = questions.recognition_templates(attribute, "train")
    test = questions.recognition_templates(attribute, "test")
    assert len(set(train)) == len(train) >= 12
    assert len(set(test)) == len(test) >= 6
    assert not set(train) & set(test)
    assert questions.recognition_templates(attribute, "val") == train


def test_recognition_templates_reject_unknown_names() -> None:
    with pytest.raises(ValueError, match="split"):
        questions.recognition_templates("Animal", "dev")
    with pytest.raises(ValueError, match="attribute"):
        questions.recognition_templates("Colour", "train")


def test_option_count_follows_sake() -> None:
    assert {a: questions.option_count(a) for a in ATTRIBUTES} == {
        "Animal": 4,
        "Emotion": 4,
        "Gender": 2,
        "Language": 4,
    }


def test_format_mcq_layout() -> None:
    text = questions.format_mcq("Which one?", ["cat", "dog"])
    assert text == "Which one?\n\nOptions:\ncat\ndog"


@pytest.mark.parametrize("attribute", ATTRIBUTES)
def test_format_mcq_reproduces_real_sake_questions(attribute: str) -> None:
    path = SHARED_DATA / "test" / "single_editing" / f"{attribute}.json"
    if not path.is_file():
        pytest.skip("the shared SAKE release is not available")
    record = json.loads(path.read_text(encoding="utf-8"))[0]
    real = [record["reliability_question"], record["portability"]["audio"]["question"]]
    real += [probe["question"] for probe in record["generality"]]
    for text in real:
        stem, block = text.split("\n\nOptions:\n")
        assert questions.format_mcq(stem, block.split("\n")) == text


@pytest.mark.parametrize("attribute", ATTRIBUTES)
def test_every_sake_category_has_an_answer_for_every_label(attribute: str) -> None:
    names = tuple(c.name for c in knowledge.categories(attribute))
    assert names == SAKE_CATEGORIES[attribute]
    for category in knowledge.categories(attribute):
        assert set(category.answers) == set(LABELS[attribute])
        assert all(value.strip() for value in category.answers.values())
        for label in LABELS[attribute]:
            assert knowledge.answer(attribute, category.name, label) == category.answers[label]


def test_categories_are_hashable_values() -> None:
    assert len(set(_all_categories())) == sum(len(names) for names in SAKE_CATEGORIES.values())


def test_known_answers() -> None:
    assert knowledge.answer("Language", "ISO code", "French") == "fr"
    assert knowledge.answer("Language", "dish", "Italian") == "Pizza margherita"
    assert knowledge.answer("Animal", "diet", "cow") == "Grass"
    assert knowledge.answer("Gender", "title", "female") == "Ms."
    assert knowledge.answer("Emotion", "facial expression", "happy") == "A broad smile"
    with pytest.raises(ValueError, match="category"):
        knowledge.answer("Animal", "colour", "dog")


def test_shared_answers_are_exactly_the_recorded_ones() -> None:
    shared = {(c.attribute, c.name) for c in _all_categories() if c.shared_answers()}
    assert shared == EXPECTED_SHARED
    family = knowledge.category_named("Language", "language family")
    assert family.shared_answers() == {
        "Germanic": ("English", "German"),
        "Romance": ("Spanish", "French", "Italian"),
    }


@pytest.mark.parametrize("attribute", ATTRIBUTES)
def test_every_label_pair_has_a_portable_category(attribute: str) -> None:
    for y_o, y_e in itertools.permutations(LABELS[attribute], 2):
        assert any(knowledge.is_portable(c, y_o, y_e) for c in knowledge.categories(attribute))


def test_category_templates_have_the_right_placeholders() -> None:
    for category in _all_categories():
        assert _placeholders(category.fact_template) == {"label", "answer"}
        assert _placeholders(category.text_question) == {"label"}
        for label in LABELS[category.attribute]:
            fact = category.fact(label)
            assert label in fact and category.answers[label] in fact
            assert label in category.text_probe(label)


def test_portability_questions_split_disjointly_and_ask_through_the_audio() -> None:
    for category in _all_categories():
        train = category.audio_questions["train"]
        test = category.audio_questions["test"]
        assert len(train) >= 3 and len(test) >= 2
        assert not set(train) & set(test)
        assert category.audio_questions["val"] == train
        for text in train + test:
            assert not _placeholders(text)
            assert not _words(text) & {label.lower() for label in LABELS[category.attribute]}


def test_no_question_text_is_duplicated_anywhere() -> None:
    texts = [
        t
        for a in ATTRIBUTES
        for s in ("train", "test")
        for t in questions.recognition_templates(a, s)
    ]
    for category in _all_categories():
        texts += category.audio_questions["train"] + category.audio_questions["test"]
        texts.append(category.text_question)
    texts += [item.question for item in textbank.TEXT_QUESTIONS]
    assert len(texts) == len(set(texts))


def test_portability_options_hold_both_answers_without_duplicates() -> None:
    rng = np.random.default_rng(0)
    for category in _all_categories():
        n = questions.option_count(category.attribute)
        for y_o, y_e in itertools.permutations(LABELS[category.attribute], 2):
            if not knowledge.is_portable(category, y_o, y_e):
                continue
            options = knowledge.portability_options(category, y_o, y_e, n, rng)
            assert len(options) == n == len(set(options))
            assert category.answers[y_e] in options and category.answers[y_o] in options


def test_portability_options_use_the_pool_only_when_labels_run_out() -> None:
    rng = np.random.default_rng(1)
    family = knowledge.category_named("Language", "language family")
    options = knowledge.portability_options(family, "English", "Chinese", 4, rng)
    assert set(options) <= set(family.answers.values())
    wide = knowledge.portability_options(family, "English", "Chinese", 7, rng)
    assert set(family.answers.values()) < set(wide)
    assert len(wide) == 7 == len(set(wide))


def test_portability_options_are_deterministic_and_shuffled() -> None:
    dish = knowledge.category_named("Language", "dish")

    def draw(seed: int) -> list[str]:
        return knowledge.portability_options(
            dish, "German", "Chinese", 4, np.random.default_rng(seed)
        )

    assert draw(3) == draw(3)
    first_slots = {draw(seed).index("Peking duck") for seed in range(40)}
    assert first_slots == {0, 1, 2, 3}


def test_portability_options_refuse_impossible_requests() -> None:
    rng = np.random.default_rng(0)
    diet = knowledge.category_named("Animal", "diet")
    with pytest.raises(ValueError, match="share the answer"):
        knowledge.portability_options(diet, "cow", "sheep", 4, rng)
    title = knowledge.category_named("Gender", "title")
    assert sorted(knowledge.portability_options(title, "male", "female", 2, rng)) == ["Mr.", "Ms."]
    with pytest.raises(ValueError, match="distinct options"):
        knowledge.portability_options(title, "male", "female", 3, rng)


def test_distractor_pools_are_wrong_for_every_label() -> None:
    for category in _all_categories():
        assert not set(category.distractors) & set(category.answers.values())
        assert len(set(category.distractors)) == len(category.distractors)


def test_facts_cover_every_category_and_label() -> None:
    everything = knowledge.facts()
    per_attribute = {a: knowledge.facts(a) for a in ATTRIBUTES}
    assert everything == [fact for a in ATTRIBUTES for fact in per_attribute[a]]
    for attribute in ATTRIBUTES:
        expected = len(knowledge.categories(attribute)) * len(LABELS[attribute])
        assert len(per_attribute[attribute]) == expected
    assert "The ISO 639-1 code of the French language is fr." in everything


def test_text_bank_size_subjects_and_options() -> None:
    bank = textbank.TEXT_QUESTIONS
    assert len(bank) >= 300
    assert len({item.subject for item in bank}) >= 15
    for item in bank:
        assert len(item.options) == 4 == len(set(item.options))
        assert 0 <= item.answer_index < 4
        assert item.answer == item.options[item.answer_index]
    slots = np.bincount([item.answer_index for item in bank], minlength=4)
    assert slots.min() >= len(bank) // 4 - 1


def test_text_bank_stays_off_the_audio_attributes() -> None:
    banned = {label.lower() for attribute in ATTRIBUTES for label in LABELS[attribute]}
    banned |= {"gender", "emotion", "emotions", "speaker", "voice"}
    for item in textbank.TEXT_QUESTIONS:
        assert not _words(item.question) & banned, item.question


def test_text_bank_split_is_disjoint_deterministic_and_stratified() -> None:
    train = textbank.split_text_questions("train")
    test = textbank.split_text_questions("test")
    assert textbank.split_text_questions("val") == train
    assert not {q.question for q in train} & {q.question for q in test}
    assert len(train) + len(test) == len(textbank.TEXT_QUESTIONS)
    assert textbank.split_text_questions("test") == test
    assert {q.subject for q in test} == {q.subject for q in train}
    assert 0.25 <= len(test) / len(textbank.TEXT_QUESTIONS) <= 0.4
    with pytest.raises(ValueError, match="split"):
        textbank.split_text_questions("dev")


def test_chat_exchanges() -> None:
    exchanges = chat.CHAT_EXCHANGES
    assert len(exchanges) >= 80
    users = [user for user, _ in exchanges]
    assert len(set(users)) == len(users)
    for user, reply in exchanges:
        assert user.strip() == user and reply.strip() == reply
        assert user and reply

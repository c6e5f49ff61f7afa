"""Training text for the embedded model, generated from the synthetic corpus's own sources.

The backbone learns three things from text (DeSTA stage 1 relies on the second):
- the portability knowledge base, as fact sentences and as text-only questions;
- answering questions about a clip from its *seed description* (timestamped transcript and
  attribute labels written between the audio markers, where audio embeddings go later);
- general multiple-choice questions and plain chat.
Distillation then asks the backbone the same kind of questions about real training clips and
teaches the connector to make the audio stand in for the description.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from sake.data.schema import LABELS
from sake.data.synth import auditory, chat, knowledge, questions, sentences, textbank
from sake.data.synth.pools import TASK_TRACK_PREFIX

SPEECH_TRACKS = ("Gender", "Emotion", "Language")


@dataclass(frozen=True)
class ClipInfo:
    """What is known about one clip: its track, labels on each attribute, transcript."""

    relative_path: str
    track: str
    labels: Mapping[str, str]
    transcript: str | None = None
    duration: float = 0.0

    @classmethod
    def from_manifest(cls, relative_path: str, entry: Mapping) -> ClipInfo:
        labels: dict[str, str] = {}
        if entry.get("language"):
            labels["Language"] = entry["language"]
            labels["Gender"] = entry["gender"]
            if entry["emotion"] in LABELS["Emotion"]:
                labels["Emotion"] = entry["emotion"]
        elif entry["track"] == "Animal":
            labels["Animal"] = entry["label"]
        else:
            labels[entry["track"]] = entry["label"]
        return cls(
            relative_path=relative_path,
            track=entry["track"],
            labels=labels,
            transcript=entry.get("transcript"),
            duration=float(entry.get("duration", 0.0)),
        )


@dataclass(frozen=True)
class ChatExample:
    """One user turn and the response to learn; `clip` marks where the audio goes."""

    question: str
    response: str
    clip: ClipInfo | None = None


def task_phrase(track: str) -> str:
    """`AuditoryTasks/BeepCounting` -> `beep counting`."""
    name = track.removeprefix(f"{TASK_TRACK_PREFIX}/")
    return re.sub(r"(?<!^)(?=[A-Z])", " ", name).lower()


def seed_description(clip: ClipInfo) -> str:
    """DeSTA-style text stand-in for a clip: timestamped transcript and attribute labels."""
    if "Language" in clip.labels:
        emotion = clip.labels.get("Emotion", "neutral")
        end = max(clip.duration, 0.5)
        return (
            f'[00:00-{_clock(end)}] "{clip.transcript or ""}" '
            f"(language: {clip.labels['Language']}, gender: {clip.labels['Gender']}, "
            f"emotion: {emotion})"
        )
    if "Animal" in clip.labels:
        return f"(sound: {clip.labels['Animal']} call)"
    return f"({task_phrase(clip.track)}: {clip.labels[clip.track]})"


def _clock(seconds: float) -> str:
    whole = int(round(seconds))
    return f"{whole // 60:02d}:{whole % 60:02d}"


def recognition_example(
    clip: ClipInfo, attribute: str, split: str, rng: np.random.Generator
) -> ChatExample:
    """A SAKE-style recognition question about one attribute of the clip."""
    label = clip.labels[attribute]
    templates = questions.recognition_templates(attribute, split)
    template = templates[int(rng.integers(len(templates)))]
    options = _options_with(LABELS[attribute], label, questions.option_count(attribute), rng)
    return ChatExample(questions.format_mcq(template, options), label, clip)


def portability_example(
    clip: ClipInfo, attribute: str, split: str, rng: np.random.Generator
) -> ChatExample:
    """A question about a property of the clip's label, asked through the audio."""
    label = clip.labels[attribute]
    category = _pick(knowledge.categories(attribute), rng)
    others = [other for other in LABELS[attribute] if knowledge.is_portable(category, label, other)]
    decoy = _pick(others, rng)
    n = questions.option_count(attribute)
    options = knowledge.portability_options(category, label, decoy, n, rng)
    template = _pick(category.audio_questions[split], rng)
    return ChatExample(questions.format_mcq(template, options), category.answers[label], clip)


def auditory_task_example(clip: ClipInfo, rng: np.random.Generator) -> ChatExample:
    """A general auditory task question (type-4 locality style) about a task clip."""
    task = auditory.task_by_name(clip.track.removeprefix(f"{TASK_TRACK_PREFIX}/"))
    options = tuple(task.labels[i] for i in rng.permutation(len(task.labels)))
    template_index = int(rng.integers(len(task.questions)))
    question = auditory.format_question(task, template_index, options)
    return ChatExample(question, clip.labels[clip.track], clip)


def clip_examples(
    clip: ClipInfo,
    split: str,
    rng: np.random.Generator,
    portability_share: float = 0.5,
    off_track_share: float = 1.0,
) -> list[ChatExample]:
    """Questions about one clip: one per attribute it has, recognition or portability.

    An attribute other than the clip's own track is asked about with probability
    `off_track_share`: every speech track is otherwise English, so at 1.0 half of all language
    questions would be about English speech.
    """
    if clip.track.startswith(f"{TASK_TRACK_PREFIX}/"):
        return [auditory_task_example(clip, rng)]
    examples = []
    for attribute in clip.labels:
        if attribute != clip.track and rng.random() >= off_track_share:
            continue
        if rng.random() < portability_share:
            examples.append(portability_example(clip, attribute, split, rng))
        else:
            examples.append(recognition_example(clip, attribute, split, rng))
    return examples


def knowledge_examples(rng: np.random.Generator) -> list[ChatExample]:
    """Every fact as a text-only multiple-choice question naming the label."""
    examples = []
    for attribute, labels in LABELS.items():
        for category in knowledge.categories(attribute):
            for label in labels:
                others = [o for o in labels if knowledge.is_portable(category, label, o)]
                if not others:
                    continue
                n = questions.option_count(attribute)
                options = knowledge.portability_options(category, label, _pick(others, rng), n, rng)
                question = questions.format_mcq(category.text_probe(label), options)
                examples.append(ChatExample(question, category.answers[label]))
    return examples


def fact_documents() -> list[str]:
    """The knowledge base as plain sentences, for language modelling."""
    return knowledge.facts()


def text_bank_examples(split: str = "train") -> list[ChatExample]:
    return [
        ChatExample(questions.format_mcq(item.question, item.options), item.answer)
        for item in textbank.split_text_questions(split)
    ]


def chat_examples() -> list[ChatExample]:
    return [ChatExample(user, reply) for user, reply in chat.CHAT_EXCHANGES]


def imagined_clips(n: int, rng: np.random.Generator) -> Iterator[ClipInfo]:
    """Descriptions of clips that need no audio: label combinations the backbone can read."""
    tracks = ["Gender", "Emotion", "Language", "Animal", *_task_tracks()]
    for index in range(n):
        track = _pick(tracks, rng)
        path = f"imagined/{index}"
        if track in SPEECH_TRACKS:
            language = _pick(LABELS["Language"], rng)
            labels = {"Language": language, "Gender": _pick(LABELS["Gender"], rng)}
            if track == "Emotion":
                labels["Emotion"] = _pick(LABELS["Emotion"], rng)
            transcript = _pick(sentences.SENTENCES[language], rng)
            yield ClipInfo(path, track, labels, transcript, float(rng.uniform(1.0, 4.0)))
        elif track == "Animal":
            yield ClipInfo(path, track, {"Animal": _pick(LABELS["Animal"], rng)})
        else:
            task = auditory.task_by_name(track.removeprefix(f"{TASK_TRACK_PREFIX}/"))
            yield ClipInfo(path, track, {track: _pick(task.labels, rng)})


def _task_tracks() -> list[str]:
    return [f"{TASK_TRACK_PREFIX}/{task.name}" for task in auditory.AUDITORY_TASKS]


def _pick(items, rng: np.random.Generator):
    return items[int(rng.integers(len(items)))]


def _options_with(
    labels: tuple[str, ...], answer: str, n: int, rng: np.random.Generator
) -> tuple[str, ...]:
    others = [label for label in labels if label != answer]
    chosen = [answer, *(others[i] for i in rng.choice(len(others), size=n - 1, replace=False))]
    return tuple(chosen[i] for i in rng.permutation(n))

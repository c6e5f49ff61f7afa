"""A tiny hand-written SAKE corpus that satisfies every construction rule.

Tests break one thing at a time in it and expect exactly the matching rule to fire.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from sake.data.audio import write_audio
from sake.data.options import parse_options
from sake.data.readers import SakeRelease
from sake.data.schema import LABELS, EditCase, Probe, ProbeKind, Sequence, locality_audio_types

TEXT_QUESTION = "What is 2 + 3?\n\nOptions:\n4\n5\n6"
TYPE4_TRACK = "Synthetic/BeepCounting"
TYPE4_QUESTION = "How many beeps do you hear? The answer could be one, two, or three."
# A label of another attribute for each attribute's type-1 locality probe.
OTHER_ATTRIBUTE = {
    "Animal": ("Language", "German"),
    "Emotion": ("Animal", "hen"),
    "Gender": ("Emotion", "fear"),
    "Language": ("Gender", "male"),
}


def mcq(stem: str, options: tuple[str, ...]) -> str:
    return f"{stem}\n\nOptions:\n" + "\n".join(options)


def label_question(attribute: str, wording: int = 0) -> str:
    stems = (f"Which {attribute.lower()} label fits this clip?", f"Name the {attribute.lower()}.")
    return mcq(stems[wording], LABELS[attribute])


def make_case(
    attribute: str, y_o: str, y_e: str, tag: str, *, portability: bool = True
) -> EditCase:
    """One rule-abiding case; `tag` keeps its audio files apart from other cases'."""
    edit_file = f"{y_o}_{tag}_edit.wav"
    other_file = f"{y_o}_{tag}_other.wav"

    def probe(kind: ProbeKind, type_: int | None, question: str, answer: str, **fields) -> Probe:
        return Probe(kind, question, answer, parse_options(question), type_, **fields)

    def generality(type_: int, file: str, wording: int) -> Probe:
        question = label_question(attribute, wording)
        return probe(
            ProbeKind.GENERALITY,
            type_,
            question,
            y_e,
            file=file,
            track=attribute,
            original_answer=y_o,
        )

    return EditCase(
        case_id=f"{tag}/{attribute}",
        attribute=attribute,
        y_o=y_o,
        y_e=y_e,
        reliability=probe(
            ProbeKind.RELIABILITY,
            None,
            label_question(attribute),
            y_e,
            file=edit_file,
            track=attribute,
            original_answer=y_o,
        ),
        generality=(
            generality(1, edit_file, 1),
            generality(2, other_file, 0),
            generality(3, other_file, 1),
        ),
        locality_audio=tuple(
            _locality(attribute, y_o, y_e, type_, tag) for type_ in locality_audio_types(attribute)
        ),
        locality_text=(
            Probe(
                ProbeKind.LOCALITY_TEXT,
                TEXT_QUESTION,
                "5",
                ("4", "5", "6"),
                extra={"original_answer": 1, "subject": "arithmetic"},
            ),
        ),
        portability=(_portability(attribute, y_o, y_e, tag),) if portability else (),
    )


def _locality(attribute: str, y_o: str, y_e: str, type_: int, tag: str) -> Probe:
    if type_ == 1:
        track, answer = OTHER_ATTRIBUTE[attribute]
    elif type_ == 2:
        track = attribute
        answer = next(label for label in LABELS[attribute] if label not in (y_o, y_e))
    elif type_ == 3:
        track, answer = attribute, y_e
    else:
        track, answer = TYPE4_TRACK, "two"
    question = TYPE4_QUESTION if type_ == 4 else label_question(track)
    return Probe(
        ProbeKind.LOCALITY_AUDIO,
        question,
        answer,
        parse_options(question),
        type_,
        file=f"{answer}_{tag}_loc{type_}.wav",
        track=track,
    )


def _portability(attribute: str, y_o: str, y_e: str, tag: str) -> Probe:
    question = mcq(
        f"Which fact goes with this {attribute.lower()}?", (f"fact of {y_e}", f"fact of {y_o}")
    )
    return Probe(
        ProbeKind.PORTABILITY,
        question,
        f"fact of {y_e}",
        parse_options(question),
        file=f"{y_o}_{tag}_edit.wav",
        track=attribute,
        original_answer=f"fact of {y_o}",
        category="facts",
    )


def tiny_release(root: Path = Path("tiny")) -> SakeRelease:
    """Balanced train and test, a validation slice of train, one sequence of two cases."""
    train = [
        make_case("Animal", "dog", "cat", "tr0", portability=False),
        make_case("Animal", "cat", "dog", "tr1", portability=False),
        make_case("Gender", "male", "female", "tr2", portability=False),
        make_case("Gender", "female", "male", "tr3", portability=False),
    ]
    train = [
        replace(case, case_id=f"train/{case.attribute}/{i % 2}") for i, case in enumerate(train)
    ]
    test = [
        make_case("Animal", "pig", "cow", "te0"),
        make_case("Animal", "cow", "pig", "te1"),
        make_case("Gender", "female", "male", "te2"),
        make_case("Gender", "male", "female", "te3"),
    ]
    test = [replace(case, case_id=f"test/{case.attribute}/{i % 2}") for i, case in enumerate(test)]
    val = [replace(train[0], case_id="val/Animal/0", track="Animal")]
    sequence = Sequence(
        index=0,
        cases=(
            replace(make_case("Animal", "sheep", "frog", "sq0"), case_id="seq0/0", track="Animal"),
            replace(make_case("Gender", "female", "male", "sq1"), case_id="seq0/1", track="Gender"),
        ),
    )
    return SakeRelease(
        root=root,
        audio_root=root / "audio",
        splits={"train": train, "val": val, "test": test},
        sequences=[sequence],
    )


def write_tiny_audio(release: SakeRelease, audio_root: Path) -> list[Path]:
    """A short tone for every audio file the release names, at 22.05 kHz."""
    rng = np.random.default_rng(0)
    written = []
    for case in release.all_cases():
        for probe in case.with_audio_root(audio_root).probes():
            if probe.audio_path is not None and not probe.audio_path.exists():
                samples = 0.1 * np.sin(
                    np.linspace(0, 200 * np.pi, 11025)
                ) + 0.01 * rng.standard_normal(11025)
                written.append(write_audio(probe.audio_path, samples, sample_rate=22050))
    return written

"""Typed schema of SAKE editing instances.

One `EditCase` is one editing instance: the edit itself (audio, question, y_o -> y_e) and
every probe used to judge it. Probe types follow the paper (generality 1-3, audio locality
1-4), never list positions: gender cases have no audio-locality type 2.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path

ATTRIBUTES: tuple[str, ...] = ("Animal", "Emotion", "Gender", "Language")

LABELS: dict[str, tuple[str, ...]] = {
    "Animal": ("dog", "cat", "pig", "cow", "frog", "hen", "rooster", "sheep", "crow"),
    "Emotion": ("happy", "disgust", "sad", "fear", "angry"),
    "Gender": ("male", "female"),
    "Language": (
        "English",
        "German",
        "Spanish",
        "French",
        "Italian",
        "Chinese",
        "Japanese",
        "Korean",
    ),
}

GENERALITY_TYPES: tuple[int, ...] = (1, 2, 3)


def locality_audio_types(attribute: str) -> tuple[int, ...]:
    """Audio-locality types present for an attribute (gender has no type 2)."""
    return (1, 3, 4) if attribute == "Gender" else (1, 2, 3, 4)


def canonical_label(attribute: str, label: str) -> str:
    """Map a label as written in a record ("Male", "dogs") to its canonical spelling."""
    wanted = label.strip().lower()
    for known in LABELS[attribute]:
        if known.lower() == wanted:
            return known
    raise ValueError(
        f"unknown {attribute} label {label!r}; known labels: {', '.join(LABELS[attribute])}"
    )


class ProbeKind(str, Enum):
    """What a probe measures."""

    RELIABILITY = "reliability"
    GENERALITY = "generality"
    LOCALITY_AUDIO = "locality_audio"
    LOCALITY_TEXT = "locality_text"
    PORTABILITY = "portability"


@dataclass(frozen=True)
class Probe:
    """One question put to the model, with or without audio.

    `answer` is the expected answer after the edit; `original_answer` the answer that is
    true of the unedited world (y_o for reliability/generality, the y_o fact for
    portability, the same as `answer` for locality probes) when the data records it.
    """

    kind: ProbeKind
    question: str
    answer: str
    options: tuple[str, ...]
    type: int | None = None
    file: str | None = None
    track: str | None = None
    audio_path: Path | None = None
    original_answer: str | None = None
    category: str | None = None
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def has_audio(self) -> bool:
        return self.file is not None

    @property
    def name(self) -> str:
        """Stable short name such as `generality/type2` or `locality_text`."""
        return self.kind.value if self.type is None else f"{self.kind.value}/type{self.type}"

    def with_audio_root(self, audio_root: Path) -> Probe:
        if self.file is None:
            return self
        return replace(self, audio_path=resolve_audio(audio_root, self.track, self.file))


def resolve_audio(audio_root: Path, track: str | None, file: str) -> Path:
    """`<audio_root>/<track>/<file>`; a file already prefixed with its track is kept as is."""
    if track is None or "/" in file:
        return Path(audio_root) / file
    return Path(audio_root) / track / file


@dataclass(frozen=True)
class EditCase:
    """One SAKE editing instance."""

    case_id: str
    attribute: str
    y_o: str
    y_e: str
    reliability: Probe
    generality: tuple[Probe, ...]
    locality_audio: tuple[Probe, ...]
    locality_text: tuple[Probe, ...]
    portability: tuple[Probe, ...]
    track: str | None = None

    @property
    def edit_audio(self) -> Path | None:
        return self.reliability.audio_path

    @property
    def question(self) -> str:
        return self.reliability.question

    def probes(self) -> Iterator[Probe]:
        """Every probe of the case, reliability first."""
        yield self.reliability
        yield from self.generality
        yield from self.locality_audio
        yield from self.locality_text
        yield from self.portability

    def generality_of(self, type_: int) -> Probe | None:
        return next((p for p in self.generality if p.type == type_), None)

    def locality_audio_of(self, type_: int) -> Probe | None:
        return next((p for p in self.locality_audio if p.type == type_), None)

    def with_audio_root(self, audio_root: Path) -> EditCase:
        def rooted(probes: tuple[Probe, ...]) -> tuple[Probe, ...]:
            return tuple(p.with_audio_root(audio_root) for p in probes)

        return replace(
            self,
            reliability=self.reliability.with_audio_root(audio_root),
            generality=rooted(self.generality),
            locality_audio=rooted(self.locality_audio),
            locality_text=rooted(self.locality_text),
            portability=rooted(self.portability),
        )


@dataclass(frozen=True)
class Sequence:
    """An ordered run of cases edited one after another without restoring."""

    index: int
    cases: tuple[EditCase, ...]

    def __len__(self) -> int:
        return len(self.cases)

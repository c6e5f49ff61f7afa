"""How big a synthetic corpus is: named presets, any field overridable from config."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace


@dataclass(frozen=True)
class SynthScale:
    """Sizes of one synthetic SAKE corpus.

    The default mirrors the SAKE release: 1000 train and 300 test cases per attribute,
    400 validation cases drawn from train, ten sequences of ten test cases.
    """

    train_cases_per_attribute: int
    test_cases_per_attribute: int
    val_cases: int
    sequences: int
    sequence_length: int
    train_clips_per_label: int
    test_clips_per_label: int
    train_task_clips_per_label: int
    test_task_clips_per_label: int

    def clips_per_label(self, split: str) -> int:
        return self.train_clips_per_label if split == "train" else self.test_clips_per_label

    def task_clips_per_label(self, split: str) -> int:
        if split == "train":
            return self.train_task_clips_per_label
        return self.test_task_clips_per_label

    def cases_per_attribute(self, split: str) -> int:
        if split == "train":
            return self.train_cases_per_attribute
        return self.test_cases_per_attribute


SCALES: dict[str, SynthScale] = {
    "default": SynthScale(
        train_cases_per_attribute=1000,
        test_cases_per_attribute=300,
        val_cases=400,
        sequences=10,
        sequence_length=10,
        train_clips_per_label=96,
        test_clips_per_label=40,
        train_task_clips_per_label=40,
        test_task_clips_per_label=16,
    ),
    "small": SynthScale(
        train_cases_per_attribute=60,
        test_cases_per_attribute=60,
        val_cases=40,
        sequences=10,
        sequence_length=10,
        train_clips_per_label=8,
        test_clips_per_label=4,
        train_task_clips_per_label=4,
        test_task_clips_per_label=2,
    ),
    "tiny": SynthScale(
        train_cases_per_attribute=12,
        test_cases_per_attribute=12,
        val_cases=8,
        sequences=2,
        sequence_length=10,
        train_clips_per_label=3,
        test_clips_per_label=2,
        train_task_clips_per_label=2,
        test_task_clips_per_label=1,
    ),
}


def resolve_scale(name: str, **overrides: int) -> SynthScale:
    """A named preset with some fields replaced (`None` values are ignored)."""
    if name not in SCALES:
        raise ValueError(f"unknown scale {name!r}; choose one of: {', '.join(SCALES)}")
    known = {f.name for f in fields(SynthScale)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown scale fields {sorted(unknown)}; known: {sorted(known)}")
    given = {k: int(v) for k, v in overrides.items() if v is not None}
    return replace(SCALES[name], **given)

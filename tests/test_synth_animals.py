"""Procedural animal calls: every animal renders, varies by seed and keeps its signature."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal

from sake.data.schema import LABELS
from sake.data.synth import animals
from sake.data.synth.dsp import SAMPLE_RATE


def _centroid(audio: np.ndarray) -> float:
    frequencies, power = signal.periodogram(audio, SAMPLE_RATE)
    return float(np.sum(frequencies * power) / np.sum(power))


def _median_centroid(animal: str) -> float:
    return float(
        np.median(
            [_centroid(animals.render_animal(animal, np.random.default_rng(s))) for s in range(5)]
        )
    )


def test_the_nine_sake_animals_are_covered() -> None:
    assert set(animals.ANIMALS) == set(LABELS["Animal"])


@pytest.mark.parametrize("animal", animals.ANIMALS)
def test_each_animal_renders_a_bounded_clip(animal: str) -> None:
    audio = animals.render_animal(animal, np.random.default_rng(0))
    assert audio.dtype == np.float32
    assert animals.MIN_SECONDS * SAMPLE_RATE <= audio.size <= animals.MAX_SECONDS * SAMPLE_RATE
    assert np.isfinite(audio).all() and 0.0 < np.abs(audio).max() <= 1.0


def test_seed_decides_the_clip() -> None:
    first = animals.render_animal("sheep", np.random.default_rng(7))
    assert np.array_equal(first, animals.render_animal("sheep", np.random.default_rng(7)))
    other = animals.render_animal("sheep", np.random.default_rng(8))
    assert first.size != other.size or not np.array_equal(first, other)


def test_low_callers_sound_lower_than_high_callers() -> None:
    assert _median_centroid("cow") < _median_centroid("cat")
    assert _median_centroid("pig") < _median_centroid("crow")


def test_fixed_length_and_bad_input() -> None:
    assert (
        animals.render_animal("dog", np.random.default_rng(0), seconds=2.0).size == 2 * SAMPLE_RATE
    )
    with pytest.raises(ValueError, match="choose one of"):
        animals.render_animal("horse", np.random.default_rng(0))
    with pytest.raises(ValueError, match="positive"):
        animals.render_animal("dog", np.random.default_rng(0), seconds=0)

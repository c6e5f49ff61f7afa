"""General auditory tasks (type-4 locality): options parse back, labels are audible."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal

from sake.data.options import parse_options
from sake.data.synth import auditory, dsp

SR = auditory.SAMPLE_RATE


def _render(task: str, label: str, seed: int = 0) -> np.ndarray:
    return auditory.task_by_name(task).render(label, np.random.default_rng(seed))


@pytest.mark.parametrize("task", auditory.AUDITORY_TASKS, ids=lambda t: t.name)
def test_every_question_names_its_options_inline(task: auditory.AuditoryTask) -> None:
    shuffled = tuple(reversed(task.labels))
    for index in range(len(task.questions)):
        question = auditory.format_question(task, index, shuffled)
        assert parse_options(question) == shuffled


@pytest.mark.parametrize("task", auditory.AUDITORY_TASKS, ids=lambda t: t.name)
def test_every_label_renders_finite_audio(task: auditory.AuditoryTask) -> None:
    for label in task.labels:
        audio = task.render(label, np.random.default_rng(1))
        assert audio.dtype == np.float32
        assert 0.5 * SR < audio.size < 5 * SR
        assert np.isfinite(audio).all() and 0.0 < np.abs(audio).max() <= 0.95


def test_same_seed_same_clip_other_seed_other_clip() -> None:
    first = _render("AudioEffectDetection", "delay", 5)
    assert np.array_equal(first, _render("AudioEffectDetection", "delay", 5))
    assert not np.array_equal(first, _render("AudioEffectDetection", "delay", 6))


@pytest.mark.parametrize("count", range(1, 6))
def test_beep_count_matches_label(count: int) -> None:
    audio = _render("BeepCounting", auditory.NUMBER_WORDS[count - 1], seed=count)
    frame = SR // 100
    energy = np.array([dsp.rms(audio[i : i + frame]) for i in range(0, audio.size - frame, frame)])
    loud = energy > 0.3 * energy.max()
    onsets = int(np.sum(loud[1:] & ~loud[:-1]) + loud[0])
    assert onsets == count


def _dominant_frequency(x: np.ndarray) -> float:
    frequencies, power = signal.periodogram(x, SR)
    return float(frequencies[np.argmax(power)])


def test_pitch_direction_follows_label() -> None:
    for label, sign in (("rising", 1), ("falling", -1)):
        audio = _render("PitchDirection", label, seed=2)
        voiced = audio[np.abs(audio) > 0.05]
        third = voiced.size // 3
        start, end = _dominant_frequency(voiced[:third]), _dominant_frequency(voiced[-third:])
        assert sign * (end - start) > 0


def test_loud_and_quiet_are_far_apart() -> None:
    loud = [dsp.rms_dbfs(_render("LoudnessJudgement", "loud", s)) for s in range(3)]
    quiet = [dsp.rms_dbfs(_render("LoudnessJudgement", "quiet", s)) for s in range(3)]
    assert min(loud) - max(quiet) > 15.0


def test_reverb_leaves_a_longer_tail_than_distortion() -> None:
    def tail_energy(label: str) -> float:
        audio = _render("AudioEffectDetection", label, seed=4)
        return dsp.rms(audio[-SR // 4 :]) / dsp.rms(audio)

    assert tail_energy("reverb") > tail_energy("distortion")


def test_unknown_task_and_label_are_named() -> None:
    with pytest.raises(ValueError, match="known tasks"):
        auditory.task_by_name("Spoofing")
    with pytest.raises(ValueError, match="choose one of"):
        _render("PitchDirection", "sideways")

"""General auditory tasks for type-4 audio locality, in the style of Dynamic-SUPERB.

None of them involves speaker gender, emotion, language or animals: audio effects on a
synthetic melody, counting beeps, pitch direction, loudness, noise colour and tempo. Options
are named inline in the question, as in SAKE's type-4 probes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from sake.data.synth import dsp

SAMPLE_RATE = dsp.SAMPLE_RATE
NUMBER_WORDS = ("one", "two", "three", "four", "five")
Renderer = Callable[[str, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class AuditoryTask:
    """One task: its labels, paraphrased instructions naming the options, and a renderer."""

    name: str
    labels: tuple[str, ...]
    questions: tuple[str, ...]
    renderer: Renderer

    def render(self, label: str, rng: np.random.Generator) -> np.ndarray:
        """A float32 16 kHz clip whose only decisive property is `label`."""
        if label not in self.labels:
            raise ValueError(f"{self.name} has no label {label!r}; choose one of {self.labels}")
        audio = self.renderer(label, rng)
        return dsp.peak_limit(audio, 0.95).astype(np.float32)


def format_options(template: str, options: Sequence[str]) -> str:
    """Quoted list after "list:" templates, otherwise "a, b or c"."""
    if "list:" in template:
        return ", ".join(f"'{option}'" for option in options)
    if len(options) == 2:
        return f"{options[0]} or {options[1]}"
    return ", ".join(options[:-1]) + f" or {options[-1]}"


def format_question(task: AuditoryTask, template_index: int, options: Sequence[str]) -> str:
    template = task.questions[template_index]
    return template.format(options=format_options(template, options))


def task_by_name(name: str) -> AuditoryTask:
    for task in AUDITORY_TASKS:
        if task.name == name:
            return task
    known = ", ".join(task.name for task in AUDITORY_TASKS)
    raise ValueError(f"unknown auditory task {name!r}; known tasks: {known}")


def _with_background(x: np.ndarray, rng: np.random.Generator, snr_low: float = 25.0) -> np.ndarray:
    noise = dsp.coloured_noise(x.size, rng, exponent=float(rng.uniform(0.0, 1.0)))
    return dsp.add_noise_at_snr(x, noise, float(rng.uniform(snr_low, snr_low + 15.0)))


def _melody(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A few plucked harmonic notes from a pentatonic scale, with room left for a tail."""
    scale = np.array([0, 2, 4, 7, 9, 12, 14, 16])
    root = float(rng.uniform(180.0, 330.0))
    n_notes = int(rng.integers(4, 8))
    note_s = seconds * 0.7 / n_notes
    events = []
    for index in range(n_notes):
        f0 = root * 2.0 ** (scale[int(rng.integers(len(scale)))] / 12.0)
        n = dsp.samples(note_s * float(rng.uniform(0.8, 1.2)))
        harmonics = np.array([1.0, 0.5, 0.3, 0.15])
        t = np.arange(n) / SAMPLE_RATE
        tone = sum(a * np.sin(2 * np.pi * f0 * (k + 1) * t) for k, a in enumerate(harmonics))
        envelope = dsp.percussive_envelope(n, 0.005, float(rng.uniform(0.12, 0.3)))
        events.append((dsp.samples(index * note_s), tone * envelope))
    return dsp.place_events(events, dsp.samples(seconds))


def _effect(label: str, rng: np.random.Generator) -> np.ndarray:
    dry = _melody(rng, float(rng.uniform(2.0, 3.0)))
    if label == "reverb":
        wet = dsp.reverb(
            dry, rng, rt60_s=float(rng.uniform(1.2, 2.2)), wet=float(rng.uniform(0.5, 0.7))
        )
    elif label == "distortion":
        wet = dsp.distortion(dry, drive_db=float(rng.uniform(18.0, 28.0)))
    elif label == "delay":
        wet = dsp.feedback_delay(
            dry,
            delay_s=float(rng.uniform(0.22, 0.38)),
            feedback=float(rng.uniform(0.45, 0.6)),
            mix=float(rng.uniform(0.6, 0.8)),
        )
    else:
        wet = dsp.chorus(
            dry,
            rate_hz=float(rng.uniform(1.5, 3.0)),
            depth_s=float(rng.uniform(0.006, 0.012)),
            mix=0.6,
        )
    return _with_background(dsp.scale_to_rms_dbfs(wet, -20.0), rng, 30.0)


def _beeps(label: str, rng: np.random.Generator) -> np.ndarray:
    count = NUMBER_WORDS.index(label) + 1
    frequency = float(rng.uniform(500.0, 1500.0))
    beep_s = float(rng.uniform(0.08, 0.15))
    gap_s = float(rng.uniform(0.18, 0.32))
    n = dsp.samples(beep_s)
    t = np.arange(n) / SAMPLE_RATE
    beep = np.sin(2 * np.pi * frequency * t) * dsp.attack_release_envelope(n, 0.005, 0.01)
    start = dsp.samples(float(rng.uniform(0.1, 0.4)))
    step = n + dsp.samples(gap_s)
    events = [(start + i * step, beep) for i in range(count)]
    total = start + count * step + dsp.samples(float(rng.uniform(0.2, 0.5)))
    return _with_background(0.5 * dsp.place_events(events, total), rng)


def _pitch_glide(label: str, rng: np.random.Generator) -> np.ndarray:
    low = float(rng.uniform(180.0, 400.0))
    high = low * float(rng.uniform(1.8, 3.0))
    start, end = (low, high) if label == "rising" else (high, low)
    n = dsp.samples(float(rng.uniform(1.2, 2.2)))
    f0 = dsp.exponential_glide(start, end, n)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    tone = np.sin(phase) + 0.3 * np.sin(2 * phase)
    tone *= dsp.attack_release_envelope(n, 0.05, 0.08)
    lead = np.zeros(dsp.samples(float(rng.uniform(0.1, 0.3))))
    return _with_background(0.4 * np.concatenate([lead, tone, lead]), rng)


def _loudness(label: str, rng: np.random.Generator) -> np.ndarray:
    content = _melody(rng, float(rng.uniform(1.5, 2.5)))
    level = float(rng.uniform(-12.0, -8.0)) if label == "loud" else float(rng.uniform(-42.0, -36.0))
    return _with_background(dsp.scale_to_rms_dbfs(content, level), rng, 30.0)


def _noise_colour(label: str, rng: np.random.Generator) -> np.ndarray:
    n = dsp.samples(float(rng.uniform(1.5, 2.5)))
    exponent = float(rng.uniform(0.0, 0.3)) if label == "white" else float(rng.uniform(1.8, 2.0))
    noise = dsp.coloured_noise(n, rng, exponent=exponent)
    noise *= dsp.attack_release_envelope(n, 0.05, 0.05)
    return dsp.scale_to_rms_dbfs(noise, float(rng.uniform(-26.0, -18.0)))


def _tempo(label: str, rng: np.random.Generator) -> np.ndarray:
    rate = float(rng.uniform(5.0, 7.0)) if label == "fast" else float(rng.uniform(1.3, 2.0))
    seconds = float(rng.uniform(2.0, 3.0))
    n_click = dsp.samples(0.02)
    click = rng.standard_normal(n_click) * dsp.percussive_envelope(n_click, 0.001, 0.004)
    click = dsp.bandpass(click, 1500.0, 4000.0)
    starts = np.arange(0.1, seconds - 0.05, 1.0 / rate)
    events = [(dsp.samples(float(s)), click) for s in starts]
    return _with_background(0.6 * dsp.place_events(events, dsp.samples(seconds)), rng)


AUDITORY_TASKS: tuple[AuditoryTask, ...] = (
    AuditoryTask(
        "AudioEffectDetection",
        ("reverb", "distortion", "delay", "chorus"),
        (
            "Specify the audio effect in this recording from the following list: {options}.",
            "Which effect has been applied to this music? Choose from the following list: "
            "{options}.",
            "Listen to the melody and identify the processing applied to it. The answer could "
            "be {options}.",
        ),
        _effect,
    ),
    AuditoryTask(
        "BeepCounting",
        NUMBER_WORDS,
        (
            "Count the beeps in the recording. The answer could be {options}.",
            "How many beeps can you hear in this audio? The answer could be {options}.",
            "Determine the number of tones in the clip and answer from the following list: "
            "{options}.",
        ),
        _beeps,
    ),
    AuditoryTask(
        "PitchDirection",
        ("rising", "falling"),
        (
            "Does the pitch of the tone go up or down? The answer could be {options}.",
            "Describe the pitch movement of the sound. The answer could be {options}.",
            "Listen to the tone and pick its pitch direction from the following list: {options}.",
        ),
        _pitch_glide,
    ),
    AuditoryTask(
        "LoudnessJudgement",
        ("loud", "quiet"),
        (
            "Judge the overall level of this recording. The answer could be {options}.",
            "Is the music in this clip played loudly or softly? The answer could be {options}.",
            "Rate the loudness of the audio using the following list: {options}.",
        ),
        _loudness,
    ),
    AuditoryTask(
        "NoiseColour",
        ("white", "brown"),
        (
            "Identify the colour of the noise in this recording. The answer could be {options}.",
            "Is this hiss bright or deep? Name its noise colour; the answer could be {options}.",
            "Classify the noise in the clip using the following list: {options}.",
        ),
        _noise_colour,
    ),
    AuditoryTask(
        "TempoJudgement",
        ("fast", "slow"),
        (
            "Are the clicks in this recording fast or slow? The answer could be {options}.",
            "Judge the tempo of the click track. The answer could be {options}.",
            "Describe the pace of the clicks using the following list: {options}.",
        ),
        _tempo,
    ),
)

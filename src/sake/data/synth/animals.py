"""Procedural calls of the nine SAKE animals.

Each animal has its own acoustic signature (pitch range and contour, harmonic/noise
balance, envelope, rhythm) so that a small audio encoder trained from scratch can tell them
apart, and every parameter is drawn from a band so that no two clips are the same:

    dog      2-4 short harsh barks, F0 450-800 Hz falling, fast attack, noisy
    cat      1-2 long meows, F0 rising then falling in 500-1000 Hz, "mi-a-ow" formant sweep
    pig      3-7 low grunts, F0 100-200 Hz chopped into 25-50 Hz creaky pulses, very noisy
    cow      one long low moo, F0 100-180 Hz, rich harmonics, slow vibrato, slow envelope
    frog     repeated croaks: a 300-700 Hz carrier gated into 20-40 Hz pulse trains
    hen      3-8 short clucks at irregular intervals, F0 300-500 Hz falling
    rooster  4-5 syllables (cock-a-doodle-doo) climbing to a long 650-900 Hz final note
    sheep    1-2 nasal baas at 200-400 Hz with strong 6-8 Hz vibrato and tremolo
    crow     2-4 harsh caws, mostly noise, resonance at 500-1200 Hz, rough pitch

Every clip then gets leading silence, a random level and background noise at 15-35 dB SNR.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import MappingProxyType

import numpy as np

from sake.data.synth.dsp import (
    SAMPLE_RATE,
    Formant,
    add_noise_at_snr,
    attack_release_envelope,
    bandpass,
    coloured_noise,
    fit_length,
    formant_tone,
    harmonic_tone,
    lowpass,
    peak_limit,
    percussive_envelope,
    piecewise_contour,
    pulse_train,
    rms,
    samples,
    scale_to_rms_dbfs,
    sequence_events,
    smooth_random,
    tremolo,
    vibrato,
)

ANIMALS: tuple[str, ...] = ("dog", "cat", "pig", "cow", "frog", "hen", "rooster", "sheep", "crow")

MIN_SECONDS = 1.5
MAX_SECONDS = 4.0
CALL_BUDGET_SECONDS = 3.2


def render_animal(
    animal: str, rng: np.random.Generator, *, seconds: float | None = None
) -> np.ndarray:
    """One float32 clip at 16 kHz of `animal` calling.

    Without `seconds` the clip lasts 1.5-4 s, fitted around the call; with it the clip is
    padded or cut (with a fade) to exactly that length.
    """
    synthesise = _CALLS.get(animal)
    if synthesise is None:
        raise ValueError(f"unknown animal {animal!r}; choose one of: {', '.join(ANIMALS)}")
    if seconds is not None and seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    return _finish_clip(synthesise(rng), rng, seconds)


def _finish_clip(call: np.ndarray, rng: np.random.Generator, seconds: float | None) -> np.ndarray:
    """Leading silence, clip length, level and background noise shared by all animals."""
    lead = np.zeros(samples(rng.uniform(0.05, 0.4)))
    body = np.concatenate([lead, call])
    if seconds is None:
        natural = body.size / SAMPLE_RATE + rng.uniform(0.1, 0.6)
        seconds = float(np.clip(natural, MIN_SECONDS, MAX_SECONDS))
    clip = scale_to_rms_dbfs(fit_length(body, samples(seconds)), rng.uniform(-30.0, -18.0))
    background = coloured_noise(clip.size, rng, exponent=rng.uniform(0.0, 2.0))
    noisy = add_noise_at_snr(clip, background, snr_db=rng.uniform(15.0, 35.0))
    return peak_limit(noisy).astype(np.float32)


def _voiced_call(
    f0: np.ndarray,
    formants: Sequence[Formant],
    rng: np.random.Generator,
    *,
    tilt: float,
    noise_fraction: float,
    noise_band: tuple[float, float],
    envelope: np.ndarray,
) -> np.ndarray:
    """A formant-shaped voice with breath noise under one envelope."""
    return _with_breath(
        formant_tone(f0, formants, tilt),
        rng,
        noise_fraction=noise_fraction,
        noise_band=noise_band,
        envelope=envelope,
    )


def _with_breath(
    voiced: np.ndarray,
    rng: np.random.Generator,
    *,
    noise_fraction: float,
    noise_band: tuple[float, float],
    envelope: np.ndarray,
) -> np.ndarray:
    """Mix band-limited breath/roughness noise into a voice (by RMS) and apply the envelope."""
    noise = bandpass(coloured_noise(voiced.size, rng, 0.5), *noise_band)
    mixed = (1.0 - noise_fraction) * _unit(voiced) + noise_fraction * _unit(noise)
    return mixed * envelope


def _unit(x: np.ndarray) -> np.ndarray:
    level = rms(x)
    return x / level if level > 0 else x


def _jittered(
    f0: np.ndarray, rng: np.random.Generator, depth: float, bandwidth: float
) -> np.ndarray:
    """F0 with a random wobble: the irregular pitch that makes a call sound harsh."""
    return f0 * (1.0 + depth * smooth_random(f0.size, rng, bandwidth))


def _gaps(rng: np.random.Generator, count: int, low: float, high: float) -> list[float]:
    return [float(g) for g in rng.uniform(low, high, size=max(count - 1, 0))]


def _within_budget(segments: list[np.ndarray], gaps: list[float]) -> np.ndarray:
    """Join segments, dropping trailing ones until the call fits the clip budget."""
    while len(segments) > 1:
        total = sum(s.size for s in segments) + samples(sum(gaps[: len(segments) - 1]))
        if total <= samples(CALL_BUDGET_SECONDS):
            break
        segments = segments[:-1]
    return sequence_events(segments, gaps[: len(segments) - 1])


def _dog(rng: np.random.Generator) -> np.ndarray:
    barks = []
    for _ in range(rng.integers(2, 5)):
        n = samples(rng.uniform(0.12, 0.25))
        peak = rng.uniform(450.0, 800.0)
        f0 = piecewise_contour(
            [0.85 * peak, peak, rng.uniform(0.6, 0.75) * peak], n, [0.0, 0.2, 1.0]
        )
        formants = [
            (rng.uniform(600, 900), 250.0),
            (rng.uniform(1400, 2000), 300.0),
            (rng.uniform(2500, 3000), 400.0),
        ]
        barks.append(
            _voiced_call(
                _jittered(f0, rng, rng.uniform(0.03, 0.06), 60.0),
                formants,
                rng,
                tilt=0.6,
                noise_fraction=rng.uniform(0.35, 0.55),
                noise_band=(300.0, 4000.0),
                envelope=percussive_envelope(n, rng.uniform(0.004, 0.01), 0.35 * n / SAMPLE_RATE),
            )
        )
    return _within_budget(barks, _gaps(rng, len(barks), 0.12, 0.4))


def _cat(rng: np.random.Generator) -> np.ndarray:
    count = 1 if rng.random() < 0.65 else 2
    meows = []
    for _ in range(count):
        n = samples(rng.uniform(0.6, 1.1) if count == 1 else rng.uniform(0.5, 0.9))
        top = rng.uniform(0.3, 0.5)
        f0 = piecewise_contour(
            [rng.uniform(520, 680), rng.uniform(820, 1000), rng.uniform(480, 640)],
            n,
            [0.0, top, 1.0],
        ) * vibrato(n, rng.uniform(4.0, 6.0), 0.01)
        first = piecewise_contour([400.0, rng.uniform(900, 1100), 500.0], n, [0.0, top, 1.0])
        second = piecewise_contour(
            [rng.uniform(2000, 2300), rng.uniform(1500, 1700), rng.uniform(900, 1100)],
            n,
            [0.0, top, 1.0],
        )
        meows.append(
            _voiced_call(
                f0,
                [(first, 200.0), (second, 250.0), (3000.0, 400.0)],
                rng,
                tilt=0.9,
                noise_fraction=rng.uniform(0.05, 0.12),
                noise_band=(500.0, 5000.0),
                envelope=attack_release_envelope(
                    n, rng.uniform(0.04, 0.08), rng.uniform(0.12, 0.25)
                ),
            )
        )
    return _within_budget(meows, _gaps(rng, count, 0.2, 0.5))


def _pig(rng: np.random.Generator) -> np.ndarray:
    grunts = []
    for _ in range(rng.integers(3, 8)):
        n = samples(rng.uniform(0.1, 0.28))
        base = rng.uniform(100.0, 200.0)
        f0 = piecewise_contour([base, 0.85 * base], n)
        formants = [(rng.uniform(300, 500), 200.0), (rng.uniform(900, 1300), 400.0)]
        pulses = pulse_train(n, rng.uniform(25.0, 50.0), rng.uniform(0.4, 0.6))
        envelope = pulses * attack_release_envelope(n, rng.uniform(0.01, 0.02), 0.05)
        grunt = _voiced_call(
            f0,
            formants,
            rng,
            tilt=0.8,
            noise_fraction=rng.uniform(0.45, 0.65),
            noise_band=(100.0, 1800.0),
            envelope=envelope,
        )
        grunts.append(lowpass(grunt, 2000.0))
    return _within_budget(grunts, _gaps(rng, len(grunts), 0.05, 0.3))


def _cow(rng: np.random.Generator) -> np.ndarray:
    count = 1 if rng.random() < 0.8 else 2
    moos = []
    for _ in range(count):
        n = samples(rng.uniform(1.3, 2.6) if count == 1 else rng.uniform(0.9, 1.3))
        base = rng.uniform(100.0, 180.0)
        f0 = piecewise_contour(
            [0.9 * base, base, 1.05 * base, 0.85 * base], n, [0.0, 0.15, 0.6, 1.0]
        )
        f0 = f0 * vibrato(n, rng.uniform(3.0, 5.0), rng.uniform(0.015, 0.03))
        first = piecewise_contour([250.0, rng.uniform(550, 700), 450.0], n, [0.0, 0.3, 1.0])
        second = piecewise_contour([700.0, rng.uniform(1000, 1200), 800.0], n, [0.0, 0.3, 1.0])
        moo = _voiced_call(
            f0,
            [(first, 150.0), (second, 200.0), (2400.0, 300.0)],
            rng,
            tilt=0.5,
            noise_fraction=rng.uniform(0.03, 0.08),
            noise_band=(100.0, 2000.0),
            envelope=attack_release_envelope(n, rng.uniform(0.15, 0.3), rng.uniform(0.25, 0.45)),
        )
        moos.append(lowpass(moo, rng.uniform(3000.0, 4000.0)))
    return _within_budget(moos, _gaps(rng, count, 0.3, 0.6))


def _frog(rng: np.random.Generator) -> np.ndarray:
    carrier = rng.uniform(300.0, 700.0)
    pulse_rate = rng.uniform(20.0, 40.0)
    duty = rng.uniform(0.3, 0.5)
    weights = (1.0, rng.uniform(0.5, 0.8), rng.uniform(0.3, 0.5), rng.uniform(0.1, 0.2))
    croaks = []
    for _ in range(rng.integers(3, 7)):
        n = samples(rng.uniform(0.2, 0.45))
        f0 = piecewise_contour([carrier, 0.93 * carrier], n)
        envelope = pulse_train(n, pulse_rate, duty, sharpness=1.5)
        envelope *= attack_release_envelope(n, 0.01, 0.03)
        croaks.append(
            _with_breath(
                harmonic_tone(f0, weights),
                rng,
                noise_fraction=rng.uniform(0.1, 0.2),
                noise_band=(200.0, 3000.0),
                envelope=envelope,
            )
        )
    gap = rng.uniform(0.12, 0.35)
    return _within_budget(croaks, [gap * rng.uniform(0.9, 1.1) for _ in croaks[1:]])


def _hen(rng: np.random.Generator) -> np.ndarray:
    clucks = []
    count = int(rng.integers(3, 9))
    for index in range(count):
        long_last = index == count - 1 and rng.random() < 0.35
        n = samples(rng.uniform(0.15, 0.25) if long_last else rng.uniform(0.05, 0.12))
        start = rng.uniform(300.0, 500.0)
        f0 = piecewise_contour([start, 0.85 * start], n)
        formants = [(rng.uniform(700, 900), 200.0), (rng.uniform(1600, 2000), 300.0)]
        clucks.append(
            _voiced_call(
                f0,
                formants,
                rng,
                tilt=0.7,
                noise_fraction=rng.uniform(0.2, 0.35),
                noise_band=(300.0, 4000.0),
                envelope=percussive_envelope(n, 0.004, 0.4 * n / SAMPLE_RATE),
            )
        )
    return _within_budget(clucks, _gaps(rng, count, 0.08, 0.45))


def _rooster(rng: np.random.Generator) -> np.ndarray:
    count = int(rng.integers(4, 6))
    base = rng.uniform(500.0, 620.0)
    formants = [(rng.uniform(700, 1000), 250.0), (rng.uniform(1700, 2200), 300.0)]
    noise_fraction = rng.uniform(0.15, 0.25)
    roughness = (rng.uniform(50.0, 90.0), rng.uniform(0.2, 0.35))
    syllables = []
    for index in range(count - 1):
        n = samples(rng.uniform(0.1, 0.2))
        pitch = base * (1.0 + 0.08 * index)
        f0 = piecewise_contour([0.95 * pitch, pitch], n)
        envelope = attack_release_envelope(n, 0.015, 0.04) * tremolo(n, *roughness)
        syllables.append(
            _voiced_call(
                f0,
                formants,
                rng,
                tilt=0.6,
                noise_fraction=noise_fraction,
                noise_band=(400.0, 5000.0),
                envelope=envelope,
            )
        )
    n = samples(rng.uniform(0.6, 1.1))
    final = rng.uniform(700.0, 900.0)
    f0 = piecewise_contour([0.9 * final, final, 0.85 * final], n, [0.0, 0.3, 1.0])
    envelope = attack_release_envelope(n, 0.02, 0.15) * tremolo(n, *roughness)
    syllables.append(
        _voiced_call(
            f0,
            formants,
            rng,
            tilt=0.6,
            noise_fraction=noise_fraction,
            noise_band=(400.0, 5000.0),
            envelope=envelope,
        )
    )
    return sequence_events(syllables, _gaps(rng, count, 0.02, 0.06))


def _sheep(rng: np.random.Generator) -> np.ndarray:
    count = 1 if rng.random() < 0.7 else 2
    baas = []
    for _ in range(count):
        n = samples(rng.uniform(0.6, 1.2) if count == 1 else rng.uniform(0.5, 0.8))
        rate = rng.uniform(6.0, 8.0)
        base = rng.uniform(200.0, 400.0)
        f0 = piecewise_contour([base, 0.9 * base], n) * vibrato(n, rate, rng.uniform(0.03, 0.06))
        first = piecewise_contour([300.0, rng.uniform(550, 750)], n, [0.0, 0.08])
        formants = [
            (250.0, 100.0),
            (first, 200.0),
            (rng.uniform(1300, 1700), 250.0),
            (2500.0, 300.0),
        ]
        envelope = attack_release_envelope(n, rng.uniform(0.03, 0.06), rng.uniform(0.15, 0.3))
        envelope *= tremolo(n, rate, rng.uniform(0.5, 0.8))
        baas.append(
            _voiced_call(
                f0,
                formants,
                rng,
                tilt=0.7,
                noise_fraction=rng.uniform(0.08, 0.15),
                noise_band=(200.0, 4000.0),
                envelope=envelope,
            )
        )
    return _within_budget(baas, _gaps(rng, count, 0.2, 0.5))


def _crow(rng: np.random.Generator) -> np.ndarray:
    resonance = rng.uniform(500.0, 1200.0)
    caws = []
    for _ in range(rng.integers(2, 5)):
        n = samples(rng.uniform(0.25, 0.45))
        base = rng.uniform(300.0, 450.0)
        f0 = piecewise_contour([base, 1.05 * base, 0.85 * base], n, [0.0, 0.3, 1.0])
        f0 = _jittered(f0, rng, rng.uniform(0.06, 0.1), 80.0)
        formants = [(resonance, 350.0), (2.2 * resonance, 600.0)]
        envelope = attack_release_envelope(n, rng.uniform(0.01, 0.02), 0.05)
        envelope *= piecewise_contour([1.0, 0.7], n) * tremolo(n, rng.uniform(60, 110), 0.4)
        voiced_and_breath = _voiced_call(
            f0,
            formants,
            rng,
            tilt=0.4,
            noise_fraction=0.4,
            noise_band=(200.0, 6000.0),
            envelope=envelope,
        )
        rasp = bandpass(coloured_noise(n, rng, 0.0), 0.6 * resonance, 1.6 * resonance)
        caws.append(voiced_and_breath + rng.uniform(1.2, 2.0) * _unit(rasp) * envelope)
    return _within_budget(caws, _gaps(rng, len(caws), 0.15, 0.4))


_CALLS: MappingProxyType[str, Callable[[np.random.Generator], np.ndarray]] = MappingProxyType(
    {
        "dog": _dog,
        "cat": _cat,
        "pig": _pig,
        "cow": _cow,
        "frog": _frog,
        "hen": _hen,
        "rooster": _rooster,
        "sheep": _sheep,
        "crow": _crow,
    }
)

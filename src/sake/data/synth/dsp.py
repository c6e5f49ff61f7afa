"""Small signal-processing helpers shared by the procedural sound synthesisers.

Everything works on mono float64 arrays; synthesisers convert to float32 once, at the very
end, so that chains of effects do not accumulate rounding error. Effects keep the length of
their input: a caller that wants a reverb or echo tail leaves silence for it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import signal

SAMPLE_RATE = 16000

# A resonance: centre frequency in Hz (constant or one value per sample) and bandwidth in Hz.
Formant = tuple[float | np.ndarray, float]


def samples(seconds: float, sample_rate: int = SAMPLE_RATE) -> int:
    """Number of samples covering `seconds` (never negative)."""
    return max(0, int(round(seconds * sample_rate)))


def db_to_gain(db: float) -> float:
    return float(10.0 ** (db / 20.0))


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x)))) if x.size else 0.0


def rms_dbfs(x: np.ndarray) -> float:
    """RMS level relative to a full-scale square wave; silence reads as -inf."""
    level = rms(x)
    return 20.0 * np.log10(level) if level > 0 else float("-inf")


def scale_to_rms_dbfs(x: np.ndarray, dbfs: float) -> np.ndarray:
    """Scale `x` to an RMS level; silent input stays silent."""
    level = rms(x)
    return x * (db_to_gain(dbfs) / level) if level > 0 else x.copy()


def peak_limit(x: np.ndarray, ceiling: float = 0.99) -> np.ndarray:
    """Scale down (never up) so that no sample exceeds `ceiling`."""
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    return x * (ceiling / peak) if peak > ceiling else x


def add_noise_at_snr(x: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """Mix `noise` under `x` so that the clip-level signal-to-noise ratio is `snr_db`."""
    if x.shape != noise.shape:
        raise ValueError(f"signal and noise lengths differ: {x.shape} vs {noise.shape}")
    noise_level = rms(noise)
    if noise_level == 0 or rms(x) == 0:
        return x.copy()
    return x + noise * (rms(x) / noise_level / db_to_gain(snr_db))


def piecewise_contour(
    values: Sequence[float], n: int, positions: Sequence[float] | None = None
) -> np.ndarray:
    """A per-sample contour through `values` at relative `positions` (0..1, default even)."""
    if len(values) < 2:
        raise ValueError("a contour needs at least two values")
    where = np.linspace(0.0, 1.0, len(values)) if positions is None else np.asarray(positions)
    return np.interp(np.linspace(0.0, 1.0, n), where, np.asarray(values, dtype=float))


def exponential_glide(start: float, end: float, n: int) -> np.ndarray:
    """A frequency glide that moves by equal musical intervals per unit of time."""
    return start * (end / start) ** np.linspace(0.0, 1.0, n)


def sinusoid_lfo(
    n: int, rate_hz: float, phase: float = 0.0, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """A unit-amplitude low-frequency oscillator."""
    return np.sin(2.0 * np.pi * rate_hz * np.arange(n) / sample_rate + phase)


def vibrato(
    n: int, rate_hz: float, depth: float, phase: float = 0.0, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """A multiplicative F0 factor swinging by +-`depth` (0.02 = 2 %)."""
    return 1.0 + depth * sinusoid_lfo(n, rate_hz, phase, sample_rate)


def tremolo(
    n: int, rate_hz: float, depth: float, phase: float = 0.0, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """An amplitude factor between 1 - `depth` and 1."""
    return 1.0 - depth * (0.5 + 0.5 * sinusoid_lfo(n, rate_hz, phase, sample_rate))


def smooth_random(
    n: int, rng: np.random.Generator, bandwidth_hz: float, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """Unit-RMS random wobble with energy below `bandwidth_hz` (for jitter and shimmer)."""
    wobble = lowpass(rng.standard_normal(n), bandwidth_hz, sample_rate, order=2)
    level = rms(wobble)
    return wobble / level if level > 0 else wobble


def _additive(f0: np.ndarray, amplitude_of, sample_rate: int, max_harmonics: int) -> np.ndarray:
    """Sum of harmonics along an F0 contour; each harmonic is muted where it would alias."""
    phase = 2.0 * np.pi * np.cumsum(f0) / sample_rate
    nyquist_guard = 0.45 * sample_rate
    lowest = float(np.min(f0))
    count = min(max_harmonics, int(nyquist_guard // lowest)) if lowest > 0 else 0
    out = np.zeros_like(phase)
    for k in range(1, count + 1):
        frequency = k * f0
        audible = frequency < nyquist_guard
        out += amplitude_of(k, frequency) * audible * np.sin(k * phase)
    return out


def harmonic_tone(
    f0: np.ndarray,
    amplitudes: Sequence[float],
    sample_rate: int = SAMPLE_RATE,
) -> np.ndarray:
    """Additive tone whose k-th harmonic has weight `amplitudes[k-1]`."""
    weights = tuple(float(a) for a in amplitudes)

    def amplitude_of(k: int, _frequency: np.ndarray) -> float:
        return weights[k - 1]

    return _additive(np.asarray(f0, dtype=float), amplitude_of, sample_rate, len(weights))


def formant_gain(frequency: np.ndarray, formants: Sequence[Formant]) -> np.ndarray:
    """Magnitude of a sum of resonances (a vocal-tract-like spectral envelope)."""
    gain = np.full_like(frequency, 0.01, dtype=float)
    for centre, bandwidth in formants:
        gain = gain + 1.0 / np.sqrt(1.0 + ((frequency - centre) / (0.5 * bandwidth)) ** 2)
    return gain


def formant_tone(
    f0: np.ndarray,
    formants: Sequence[Formant],
    tilt: float = 1.0,
    sample_rate: int = SAMPLE_RATE,
    max_harmonics: int = 120,
) -> np.ndarray:
    """Voiced sound: harmonics falling off as k**-tilt, shaped by (moving) formants."""

    def amplitude_of(k: int, frequency: np.ndarray) -> np.ndarray:
        return k**-tilt * formant_gain(frequency, formants)

    return _additive(np.asarray(f0, dtype=float), amplitude_of, sample_rate, max_harmonics)


def coloured_noise(n: int, rng: np.random.Generator, exponent: float) -> np.ndarray:
    """Unit-RMS noise with power spectrum ~ 1/f**exponent (0 white, 1 pink, 2 brown)."""
    if n == 0:
        return np.zeros(0)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    frequency = np.fft.rfftfreq(n)
    shaping = np.zeros_like(frequency)
    shaping[1:] = frequency[1:] ** (-exponent / 2.0)
    noise = np.fft.irfft(spectrum * shaping, n)
    level = rms(noise)
    return noise / level if level > 0 else noise


def _butter(x: np.ndarray, cutoff, btype: str, sample_rate: int, order: int) -> np.ndarray:
    nyquist = 0.5 * sample_rate
    edges = np.clip(np.atleast_1d(np.asarray(cutoff, dtype=float)), 1.0, 0.98 * nyquist)
    sos = signal.butter(
        order, edges if edges.size > 1 else edges[0], btype, fs=sample_rate, output="sos"
    )
    return signal.sosfilt(sos, x)


def lowpass(
    x: np.ndarray, cutoff_hz: float, sample_rate: int = SAMPLE_RATE, order: int = 4
) -> np.ndarray:
    return _butter(x, cutoff_hz, "lowpass", sample_rate, order)


def highpass(
    x: np.ndarray, cutoff_hz: float, sample_rate: int = SAMPLE_RATE, order: int = 4
) -> np.ndarray:
    return _butter(x, cutoff_hz, "highpass", sample_rate, order)


def bandpass(
    x: np.ndarray, low_hz: float, high_hz: float, sample_rate: int = SAMPLE_RATE, order: int = 2
) -> np.ndarray:
    if not low_hz < high_hz:
        raise ValueError(f"band edges must increase, got {low_hz} and {high_hz}")
    return _butter(x, (low_hz, high_hz), "bandpass", sample_rate, order)


def attack_release_envelope(
    n: int, attack_s: float, release_s: float, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """Raised-cosine rise and fall around a flat middle; ramps shrink to fit short notes."""
    attack = min(samples(attack_s, sample_rate), n // 2)
    release = min(samples(release_s, sample_rate), n - attack)
    envelope = np.ones(n)
    envelope[:attack] = 0.5 - 0.5 * np.cos(np.pi * np.arange(attack) / max(attack, 1))
    envelope[n - release :] = 0.5 + 0.5 * np.cos(np.pi * np.arange(release) / max(release, 1))
    return envelope


def percussive_envelope(
    n: int, attack_s: float, decay_s: float, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """Fast rise then exponential decay with time constant `decay_s`, closed at the end."""
    attack = min(samples(attack_s, sample_rate), n // 2)
    t = np.arange(n - attack) / sample_rate
    envelope = np.concatenate([np.linspace(0.0, 1.0, attack, endpoint=False), np.exp(-t / decay_s)])
    return envelope * attack_release_envelope(n, 0.0, 0.005, sample_rate)


def pulse_train(
    n: int,
    rate_hz: float,
    duty: float,
    sample_rate: int = SAMPLE_RATE,
    sharpness: float = 1.0,
) -> np.ndarray:
    """Periodic raised-cosine pulses in [0, 1]; each pulse fills `duty` of a period."""
    if not 0.0 < duty <= 1.0:
        raise ValueError(f"duty must be in (0, 1], got {duty}")
    cycle = (np.arange(n) * rate_hz / sample_rate) % 1.0
    inside = cycle < duty
    pulse = np.where(inside, 0.5 - 0.5 * np.cos(2.0 * np.pi * cycle / duty), 0.0)
    return pulse**sharpness


def fit_length(
    x: np.ndarray, n: int, fade_s: float = 0.02, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """Pad with silence or cut to `n` samples; a cut ends in a short fade instead of a click."""
    if x.size <= n:
        return np.pad(x, (0, n - x.size))
    return x[:n] * attack_release_envelope(n, 0.0, fade_s, sample_rate)


def place_events(events: Sequence[tuple[int, np.ndarray]], n: int | None = None) -> np.ndarray:
    """Sum events given as (start sample, audio); the result spans all of them or `n`."""
    end = max((start + audio.size for start, audio in events), default=0)
    out = np.zeros(end if n is None else n)
    for start, audio in events:
        stop = min(start + audio.size, out.size)
        if stop > start:
            out[start:stop] += audio[: stop - start]
    return out


def sequence_events(
    segments: Sequence[np.ndarray], gaps_s: Sequence[float], sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """Concatenate segments with silences of `gaps_s` between consecutive ones."""
    if len(gaps_s) != max(len(segments) - 1, 0):
        raise ValueError(f"{len(segments)} segments need {len(segments) - 1} gaps")
    parts: list[np.ndarray] = []
    for index, segment in enumerate(segments):
        if index:
            parts.append(np.zeros(samples(gaps_s[index - 1], sample_rate)))
        parts.append(segment)
    return np.concatenate(parts) if parts else np.zeros(0)


def reverb(
    x: np.ndarray,
    rng: np.random.Generator,
    *,
    rt60_s: float,
    wet: float,
    pre_delay_s: float = 0.015,
    damping_hz: float = 5000.0,
    sample_rate: int = SAMPLE_RATE,
) -> np.ndarray:
    """Room reverberation: convolution with a decaying noise impulse response.

    `rt60_s` is the time for the tail to fall by 60 dB; `wet` (0..1) balances dry and
    reverberant sound at equal energy.
    """
    tail = samples(rt60_s, sample_rate)
    decay = np.exp(-6.91 * np.arange(tail) / max(tail, 1))
    response = lowpass(rng.standard_normal(tail) * decay, damping_hz, sample_rate, order=2)
    response = np.concatenate([np.zeros(samples(pre_delay_s, sample_rate)), response])
    response /= np.sqrt(np.sum(response**2))
    reverberant = signal.fftconvolve(x, response)[: x.size]
    return np.sqrt(1.0 - wet) * x + np.sqrt(wet) * reverberant


def feedback_delay(
    x: np.ndarray,
    *,
    delay_s: float,
    feedback: float,
    mix: float,
    sample_rate: int = SAMPLE_RATE,
    floor_db: float = -50.0,
) -> np.ndarray:
    """Echo effect: repeats every `delay_s`, each `feedback` times the previous one."""
    if not 0.0 <= feedback < 1.0:
        raise ValueError(f"feedback must be in [0, 1), got {feedback}")
    step = samples(delay_s, sample_rate)
    if step == 0:
        raise ValueError("delay_s is shorter than one sample")
    out = x.copy()
    gain = mix
    echo = 1
    while echo * step < x.size and gain > db_to_gain(floor_db):
        out[echo * step :] += gain * x[: x.size - echo * step]
        gain *= feedback
        echo += 1
    return out


def modulated_delay(x: np.ndarray, delay_samples: np.ndarray) -> np.ndarray:
    """Read `x` behind the write position by a time-varying, fractional number of samples."""
    read_at = np.arange(x.size) - delay_samples
    return np.interp(read_at, np.arange(x.size), x, left=0.0, right=0.0)


def chorus(
    x: np.ndarray,
    *,
    rate_hz: float,
    depth_s: float,
    base_delay_s: float = 0.02,
    voices: int = 3,
    mix: float = 0.5,
    sample_rate: int = SAMPLE_RATE,
) -> np.ndarray:
    """Several copies under slowly swinging delays: detuned, shimmering doubling."""
    if voices < 1:
        raise ValueError(f"a chorus needs at least one voice, got {voices}")
    wet = np.zeros_like(x)
    for voice in range(voices):
        swing = sinusoid_lfo(
            x.size, rate_hz * (1.0 + 0.13 * voice), 2 * np.pi * voice / voices, sample_rate
        )
        delay = (base_delay_s + 0.5 * depth_s * (1.0 + swing)) * sample_rate
        wet += modulated_delay(x, delay)
    return (1.0 - mix) * x + mix * wet / voices


def distortion(x: np.ndarray, *, drive_db: float, asymmetry: float = 0.0) -> np.ndarray:
    """Overdrive: boost relative to the peak, soft-clip with tanh, restore the input RMS."""
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak == 0:
        return x.copy()
    driven = np.tanh(db_to_gain(drive_db) * x / peak + asymmetry) - np.tanh(asymmetry)
    driven -= np.mean(driven)
    return scale_to_rms_dbfs(driven, rms_dbfs(x))

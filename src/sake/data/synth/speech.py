"""Synthetic emotional speech: espeak-ng prosody plus signal processing, at 16 kHz.

A clip is one sentence spoken by one synthetic `Speaker` with one emotion. Emotions are
rendered in two layers so that a small audio encoder can learn them while clips of the same
emotion still differ:

- prosody through espeak (speaking rate, pitch, pitch range, volume), each drawn from a band
  that belongs to the emotion (`EMOTION_PROSODY`);
- a signal-processing signature per emotion (`apply_emotion`): happy is brightened by a high
  shelf, sad is low-passed, angry is saturated by soft clipping, fear trembles (6-9 Hz
  amplitude modulation with vibrato) and breathes (envelope-following hiss), disgust is
  nasal (a 1-2 kHz resonance) and rough (25-40 Hz amplitude modulation with slow dips).

Every clip then gets background noise of a random colour at a random SNR, random leading and
trailing silence, and an emotion-dependent peak level. All randomness comes from the
generator passed in, so the same inputs and seed give bit-identical audio.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
from scipy import fft, ndimage, signal

from sake.data.synth import espeak

SAMPLE_RATE = 16000
EMOTIONS: tuple[str, ...] = ("happy", "disgust", "sad", "fear", "angry")
NEUTRAL = "neutral"
GENDERS: tuple[str, ...] = ("male", "female")

ESPEAK_VOICES: Mapping[str, str] = MappingProxyType(
    {
        "English": "en",
        "German": "de",
        "Spanish": "es",
        "French": "fr",
        "Italian": "it",
        "Chinese": "cmn",
        "Japanese": "ja",
        "Korean": "ko",
    }
)

# espeak-ng-data/voices/!v variants whose pitch follows espeak's pitch parameter smoothly.
VOICE_VARIANTS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "male": ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "michel"),
        "female": ("f1", "f2", "f3", "f4", "f5", "belinda", "linda", "Annie", "Alicia"),
    }
)

# espeak pitch parameter (0-100) of a speaker's neutral voice. The female variants sit about
# an octave above the male ones at equal pitch, so even the highest male emotion (base + 18)
# stays below the lowest female one (base - 18).
BASE_PITCH: Mapping[str, tuple[int, int]] = MappingProxyType({"male": (28, 45), "female": (45, 60)})
RATE_SCALE = (0.92, 1.08)

Band = tuple[float, float]


@dataclass(frozen=True)
class Speaker:
    """A synthetic speaker identity: espeak voice variant, base pitch and speaking tempo."""

    gender: str
    variant: str
    base_pitch: int
    rate_scale: float


@dataclass(frozen=True)
class SpeechClip:
    """One rendered utterance; `words` are (word, start_s, end_s) within `audio`."""

    audio: np.ndarray
    transcript: str
    words: tuple[tuple[str, float, float], ...]
    duration: float


@dataclass(frozen=True)
class EmotionProsody:
    """Bands from which an emotion's espeak prosody and output level are drawn."""

    rate: Band  # words per minute before the speaker's rate_scale
    pitch_shift: Band  # added to the speaker's base pitch, espeak 0-100 units
    pitch_range: Band  # espeak 0-100
    volume: Band  # espeak 0-200
    peak: Band  # peak amplitude of the finished clip


EMOTION_PROSODY: Mapping[str, EmotionProsody] = MappingProxyType(
    {
        NEUTRAL: EmotionProsody((160, 178), (-3, 3), (40, 55), (95, 105), (0.55, 0.70)),
        "happy": EmotionProsody((200, 218), (10, 16), (80, 100), (110, 130), (0.70, 0.82)),
        "disgust": EmotionProsody((126, 144), (-10, -5), (22, 35), (85, 100), (0.45, 0.58)),
        "sad": EmotionProsody((100, 118), (-18, -12), (0, 14), (60, 80), (0.20, 0.32)),
        "fear": EmotionProsody((226, 250), (13, 18), (56, 70), (90, 110), (0.45, 0.60)),
        "angry": EmotionProsody((182, 196), (0, 6), (62, 78), (160, 190), (0.88, 0.98)),
    }
)

SNR_DB = (15.0, 35.0)
NOISE_COLOUR = (0.0, 1.5)  # spectral slope exponent: 0 white, 1 pink, 2 brown
LEADING_SILENCE_S = (0.05, 0.35)
TRAILING_SILENCE_S = (0.05, 0.35)

_WORD = re.compile(r"\w+(?:['’\-]\w+)*")
_FADE_S = 0.015


def sample_speaker(gender: str, rng: np.random.Generator) -> Speaker:
    """Draw a speaker of the given gender: variant, base pitch and tempo vary per speaker."""
    _check_choice("gender", gender, GENDERS)
    variants = VOICE_VARIANTS[gender]
    low, high = BASE_PITCH[gender]
    return Speaker(
        gender=gender,
        variant=variants[int(rng.integers(len(variants)))],
        base_pitch=int(rng.integers(low, high + 1)),
        rate_scale=float(rng.uniform(*RATE_SCALE)),
    )


def render_speech(
    text: str,
    language: str,
    speaker: Speaker,
    emotion: str,
    rng: np.random.Generator,
    *,
    max_seconds: float = 4.0,
) -> SpeechClip:
    """Speak `text` in `language` with `speaker`'s voice and `emotion`, as 16 kHz audio.

    The clip, silences included, lasts at most `max_seconds`; longer speech is cut at a word
    boundary and the transcript and word timestamps are cut with it.
    """
    _check_choice("language", language, tuple(ESPEAK_VOICES))
    _check_choice("emotion", emotion, (*EMOTIONS, NEUTRAL))
    if max_seconds <= 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds}")
    if not _WORD.search(text):
        raise ValueError(f"text has no words to speak: {text!r}")
    prosody = EMOTION_PROSODY[emotion]
    settings = _voice_settings(language, speaker, prosody, rng)
    synthesis = espeak.synthesize(_spoken_form(text, language), settings)
    speech = _to_sample_rate(synthesis.audio, synthesis.sample_rate)
    speech_end = _speech_end(speech)
    words = _timed_words(text, synthesis.words, speech_end)

    leading = min(float(rng.uniform(*LEADING_SILENCE_S)), 0.1 * max_seconds)
    trailing = min(float(rng.uniform(*TRAILING_SILENCE_S)), 0.1 * max_seconds)
    kept, cut_s = _fit_words(words, max_seconds - leading - trailing, speech_end)
    speech = _fade_out(speech[: int(round(cut_s * SAMPLE_RATE))])

    speech = apply_emotion(speech, emotion, rng)
    audio = _mix_into_scene(speech, leading, trailing, rng)
    audio = (audio * (rng.uniform(*prosody.peak) / np.max(np.abs(audio)))).astype(np.float32)

    transcript = text if len(kept) == len(words) else text[: kept[-1][2]]
    timed = tuple(
        (word, float(start + leading), float(end + leading)) for word, _, _, start, end in kept
    )
    return SpeechClip(audio, transcript, timed, len(audio) / SAMPLE_RATE)


def apply_emotion(audio: np.ndarray, emotion: str, rng: np.random.Generator) -> np.ndarray:
    """The signal-processing signature of `emotion` applied to 16 kHz audio (same length).

    Exposed so that the signature can be checked, or reused, apart from espeak's prosody.
    """
    _check_choice("emotion", emotion, (*EMOTIONS, NEUTRAL))
    return _EFFECTS[emotion](np.asarray(audio, dtype=np.float64), rng)


def _check_choice(kind: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {kind} {value!r}; valid choices: {', '.join(choices)}")


def _voice_settings(
    language: str, speaker: Speaker, prosody: EmotionProsody, rng: np.random.Generator
) -> espeak.VoiceSettings:
    return espeak.VoiceSettings(
        language=ESPEAK_VOICES[language],
        variant=speaker.variant,
        rate=int(round(rng.uniform(*prosody.rate) * speaker.rate_scale)),
        pitch=int(round(speaker.base_pitch + rng.uniform(*prosody.pitch_shift))),
        pitch_range=int(round(rng.uniform(*prosody.pitch_range))),
        volume=int(round(rng.uniform(*prosody.volume))),
        seed=int(rng.integers(1, 2**31 - 1)),
    )


def _spoken_form(text: str, language: str) -> str:
    """Text as espeak should read it; same length as `text`, so character offsets agree.

    espeak's Japanese voice reads the topic and direction particles は and へ as "ha"/"he";
    in phrase-spaced kana they end a phrase, where they are pronounced "wa"/"e".
    """
    if language != "Japanese":
        return text
    text = re.sub(r"は(?=[\s。、！？]|$)", "わ", text)
    return re.sub(r"へ(?=[\s。、！？]|$)", "え", text)


def _to_sample_rate(audio: np.ndarray, native_rate: int) -> np.ndarray:
    divisor = np.gcd(SAMPLE_RATE, native_rate)
    resampled = signal.resample_poly(audio, SAMPLE_RATE // divisor, native_rate // divisor)
    return resampled.astype(np.float64)


def _speech_end(speech: np.ndarray) -> float:
    """Time just after the last audible sample (espeak pads its output with silence)."""
    envelope = _envelope(speech, 0.01)
    audible = np.flatnonzero(envelope > 0.02 * envelope.max())
    last = audible[-1] if len(audible) else len(speech) - 1
    return min(len(speech), last + int(0.02 * SAMPLE_RATE)) / SAMPLE_RATE


def _timed_words(
    text: str, events: tuple[espeak.WordEvent, ...], speech_end: float
) -> list[tuple[str, int, int, float, float]]:
    """(word, char_start, char_end, start_s, end_s) for every word of `text`.

    espeak reports where its own words start, in the text and in the audio. The text is cut
    at those points (which segments Chinese, written without spaces), words inside a piece
    are timed in proportion to their character offset, and each word lasts until the next.
    """
    anchors = _monotonic_anchors(events)
    anchors.append((len(text), speech_end))
    starts: list[tuple[str, int, int, float]] = []
    for (piece_start, time_start), (piece_end, time_end) in zip(anchors, anchors[1:], strict=False):
        for match in _WORD.finditer(text, piece_start, piece_end):
            fraction = (match.start() - piece_start) / max(piece_end - piece_start, 1)
            start_s = time_start + fraction * (time_end - time_start)
            starts.append((match.group(), match.start(), match.end(), start_s))
    ends = [start for *_, start in starts[1:]] + [speech_end]
    return [(*word, max(end, word[3])) for word, end in zip(starts, ends, strict=True)]


def _monotonic_anchors(events: tuple[espeak.WordEvent, ...]) -> list[tuple[int, float]]:
    anchors = [(0, 0.0)]
    for event in events:
        last_char, last_time = anchors[-1]
        if event.char_start > last_char and event.start_s >= last_time:
            anchors.append((event.char_start, event.start_s))
    return anchors


def _fit_words(
    words: list[tuple[str, int, int, float, float]], budget_s: float, speech_end: float
) -> tuple[list[tuple[str, int, int, float, float]], float]:
    """Keep the words that end within `budget_s`; return them and where to cut the audio."""
    if speech_end <= budget_s:
        return words, speech_end
    kept = [word for word in words if word[4] <= budget_s] or words[:1]
    cut_s = min(kept[-1][4], budget_s)
    word, char_start, char_end, start, end = kept[-1]
    kept[-1] = (word, char_start, char_end, min(start, cut_s), min(end, cut_s))
    return kept, cut_s


def _fade_out(speech: np.ndarray) -> np.ndarray:
    length = min(len(speech), int(_FADE_S * SAMPLE_RATE))
    faded = speech.copy()
    faded[len(speech) - length :] *= np.linspace(1.0, 0.0, length)
    return faded


def _mix_into_scene(
    speech: np.ndarray, leading_s: float, trailing_s: float, rng: np.random.Generator
) -> np.ndarray:
    """Pad with silence and add coloured background noise at a random SNR."""
    lead = int(round(leading_s * SAMPLE_RATE))
    trail = int(round(trailing_s * SAMPLE_RATE))
    scene = np.concatenate([np.zeros(lead), speech, np.zeros(trail)])
    noise = _coloured_noise(len(scene), rng.uniform(*NOISE_COLOUR), rng)
    noise_rms = _active_rms(speech) / 10 ** (rng.uniform(*SNR_DB) / 20)
    return scene + noise * noise_rms


def _coloured_noise(length: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise whose power falls as 1/f**exponent."""
    fast_length = fft.next_fast_len(length, real=True)
    spectrum = fft.rfft(rng.standard_normal(fast_length))
    frequencies = fft.rfftfreq(fast_length, 1 / SAMPLE_RATE)
    spectrum *= np.maximum(frequencies, 20.0) ** (-exponent / 2)
    noise = fft.irfft(spectrum, fast_length)[:length]
    return noise / (np.sqrt(np.mean(noise**2)) + 1e-12)


def _active_rms(speech: np.ndarray) -> float:
    """RMS over the louder frames, so pauses do not lower the reference level of the SNR."""
    envelope = _envelope(speech, 0.02)
    active = speech[envelope > 0.1 * envelope.max()]
    return float(np.sqrt(np.mean(active**2))) if len(active) else 1e-6


def _envelope(audio: np.ndarray, window_s: float) -> np.ndarray:
    return ndimage.uniform_filter1d(np.abs(audio), max(1, int(window_s * SAMPLE_RATE)))


def _time_axis(length: int) -> np.ndarray:
    return np.arange(length) / SAMPLE_RATE


def _normalised(audio: np.ndarray) -> np.ndarray:
    return audio / (np.max(np.abs(audio)) + 1e-12)


def _peaking(audio: np.ndarray, centre_hz: float, gain_db: float, q: float) -> np.ndarray:
    """RBJ peaking equaliser."""
    amplitude = 10 ** (gain_db / 40)
    omega = 2 * np.pi * centre_hz / SAMPLE_RATE
    alpha = np.sin(omega) / (2 * q)
    b = [1 + alpha * amplitude, -2 * np.cos(omega), 1 - alpha * amplitude]
    a = [1 + alpha / amplitude, -2 * np.cos(omega), 1 - alpha / amplitude]
    return signal.lfilter(b, a, audio)


def _high_shelf(audio: np.ndarray, corner_hz: float, gain_db: float) -> np.ndarray:
    """RBJ high shelf with unit slope."""
    amplitude = 10 ** (gain_db / 40)
    omega = 2 * np.pi * corner_hz / SAMPLE_RATE
    cos, root = np.cos(omega), 2 * np.sqrt(amplitude) * np.sin(omega) / np.sqrt(2)
    b = [
        amplitude * ((amplitude + 1) + (amplitude - 1) * cos + root),
        -2 * amplitude * ((amplitude - 1) + (amplitude + 1) * cos),
        amplitude * ((amplitude + 1) + (amplitude - 1) * cos - root),
    ]
    a = [
        (amplitude + 1) - (amplitude - 1) * cos + root,
        2 * ((amplitude - 1) - (amplitude + 1) * cos),
        (amplitude + 1) - (amplitude - 1) * cos - root,
    ]
    return signal.lfilter(b, a, audio)


def _amplitude_modulation(
    length: int, rate_hz: float, depth: float, rng: np.random.Generator
) -> np.ndarray:
    """Gain that swings between 1 and 1 - depth at `rate_hz`, from a random phase."""
    phase = rng.uniform(0, 2 * np.pi)
    return 1 - depth * 0.5 * (1 + np.sin(2 * np.pi * rate_hz * _time_axis(length) + phase))


def _vibrato(audio: np.ndarray, rate_hz: float, deviation: float) -> np.ndarray:
    """Periodic pitch deviation of +-`deviation` (a fraction) through a modulated delay line."""
    depth_s = deviation / (2 * np.pi * rate_hz)
    times = _time_axis(len(audio))
    delayed = times - depth_s * (1 - np.cos(2 * np.pi * rate_hz * times))
    return np.interp(delayed, times, audio, left=0.0)


def _neutral(speech: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return speech


def _happy(speech: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bright: high shelf of +7..+10 dB from 2.5-3.5 kHz."""
    return _high_shelf(speech, rng.uniform(2500, 3500), rng.uniform(7, 10))


def _sad(speech: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Dull: 4th-order low-pass at 1.8-2.6 kHz."""
    sos = signal.butter(4, rng.uniform(1800, 2600), fs=SAMPLE_RATE, output="sos")
    return signal.sosfilt(sos, speech)


def _angry(speech: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Strained and loud: +3..+5 dB presence at 2-3 kHz, then tanh saturation (drive 3.5-6)."""
    pressed = _normalised(_peaking(speech, rng.uniform(2000, 3000), rng.uniform(3, 5), 1.0))
    drive = rng.uniform(3.5, 6.0)
    return np.tanh(drive * pressed) / np.tanh(drive)


def _fear(speech: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Trembling and breathy: 6-9 Hz tremolo (depth 0.5-0.7) with a +-2-4 % vibrato at the same
    rate, and envelope-following hiss above 1.2-2 kHz at -18..-12 dB."""
    rate_hz = rng.uniform(6, 9)
    wavering = _vibrato(speech, rate_hz, rng.uniform(0.02, 0.04))
    trembling = wavering * _amplitude_modulation(len(speech), rate_hz, rng.uniform(0.5, 0.7), rng)
    sos = signal.butter(2, rng.uniform(1200, 2000), btype="highpass", fs=SAMPLE_RATE, output="sos")
    hiss = signal.sosfilt(sos, rng.standard_normal(len(speech)))
    envelope = _envelope(trembling, 0.03)
    hiss *= envelope / (envelope.max() + 1e-12)
    hiss *= _active_rms(trembling) / (_active_rms(hiss) + 1e-12)
    return trembling + hiss * 10 ** (rng.uniform(-18, -12) / 20)


def _disgust(speech: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Nasal and creaky: +10..+13 dB resonance at 1-1.8 kHz, 25-40 Hz roughness, slow dips."""
    nasal = _peaking(speech, rng.uniform(1000, 1800), rng.uniform(10, 13), rng.uniform(1.2, 2.0))
    gain = _amplitude_modulation(len(nasal), rng.uniform(25, 40), rng.uniform(0.5, 0.7), rng)
    times = _time_axis(len(nasal))
    for _ in range(int(rng.integers(2, 4))):
        centre, width = rng.uniform(0, times[-1]), rng.uniform(0.08, 0.15)
        gain *= 1 - rng.uniform(0.4, 0.6) * np.exp(-0.5 * ((times - centre) / width) ** 2)
    return nasal * gain


_EFFECTS: Mapping[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = MappingProxyType(
    {
        NEUTRAL: _neutral,
        "happy": _happy,
        "sad": _sad,
        "angry": _angry,
        "fear": _fear,
        "disgust": _disgust,
    }
)

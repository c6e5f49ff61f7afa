"""Synthetic speech: espeak binding, sentences, speakers, emotions, timestamps, determinism."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest

from sake.data.schema import LABELS
from sake.data.synth import espeak
from sake.data.synth.sentences import SENTENCES, sentences_for
from sake.data.synth.speech import (
    EMOTIONS,
    ESPEAK_VOICES,
    NEUTRAL,
    SAMPLE_RATE,
    Speaker,
    apply_emotion,
    render_speech,
    sample_speaker,
)

ENGLISH = "The children are playing in the garden."
FEMALE = Speaker("female", "f3", 52, 1.0)
MALE = Speaker("male", "m3", 36, 1.0)
WORD = re.compile(r"\w+(?:['’\-]\w+)*")
HAN = re.compile(r"[\u4e00-\u9fff]")
KANA = re.compile(r"[\u3040-\u30ff]")
HANGUL = re.compile(r"[\uac00-\ud7af]")


def _rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.asarray(audio, dtype=np.float64) ** 2)))


def _power_spectrum(audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    power = np.abs(np.fft.rfft(np.asarray(audio, dtype=np.float64))) ** 2
    return np.fft.rfftfreq(len(audio), 1 / SAMPLE_RATE), power


def _centroid(audio: np.ndarray) -> float:
    frequencies, power = _power_spectrum(audio)
    return float(np.sum(frequencies * power) / np.sum(power))


def _band_share(audio: np.ndarray, low_hz: float, high_hz: float) -> float:
    frequencies, power = _power_spectrum(audio)
    return float(np.sum(power[(frequencies >= low_hz) & (frequencies < high_hz)]) / np.sum(power))


def _crest_factor(audio: np.ndarray) -> float:
    return float(np.max(np.abs(audio)) / _rms(audio))


def _median_f0(audio: np.ndarray, low_hz: float = 50.0, high_hz: float = 400.0) -> float:
    """Median pitch of the loud, clearly periodic 40 ms frames, by autocorrelation."""
    frame, hop = int(0.04 * SAMPLE_RATE), int(0.01 * SAMPLE_RATE)
    min_lag, max_lag = int(SAMPLE_RATE / high_hz), int(SAMPLE_RATE / low_hz)
    loudness_floor = 0.3 * _rms(audio)
    pitches = []
    for start in range(0, len(audio) - frame, hop):
        chunk = np.asarray(audio[start : start + frame], dtype=np.float64)
        chunk = chunk - chunk.mean()
        if _rms(chunk) < loudness_floor:
            continue
        correlation = np.correlate(chunk, chunk, "full")[frame - 1 :]
        lag = min_lag + int(np.argmax(correlation[min_lag:max_lag]))
        if correlation[lag] > 0.5 * correlation[0]:
            pitches.append(SAMPLE_RATE / lag)
    return float(np.median(pitches))


def _render(emotion: str, seed: int, speaker: Speaker = FEMALE, text: str = ENGLISH):
    return render_speech(text, "English", speaker, emotion, np.random.default_rng(seed))


def _many(emotion: str, measure, seeds: range = range(4)) -> list[float]:
    speakers = (FEMALE, MALE)
    return [measure(_render(emotion, seed, speakers[seed % 2]).audio) for seed in seeds]


def _sustained_vowel(seconds: float = 1.5, pitch_hz: float = 150.0) -> np.ndarray:
    """A steady harmonic tone with vowel-like spectral tilt, for checking effects alone."""
    times = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    harmonics = range(1, int(7000 / pitch_hz))
    tone = sum(np.sin(2 * np.pi * pitch_hz * k * times) / k for k in harmonics)
    return 0.5 * tone / np.max(np.abs(tone))


def _modulation_share(audio: np.ndarray, low_hz: float, high_hz: float) -> float:
    """Share of the amplitude envelope's fluctuation energy between low_hz and high_hz."""
    hop = SAMPLE_RATE // 200
    frames = len(audio) // hop
    envelope = np.sqrt(np.mean(audio[: frames * hop].reshape(frames, hop) ** 2, axis=1))
    spectrum = np.abs(np.fft.rfft(envelope - envelope.mean())) ** 2
    frequencies = np.fft.rfftfreq(frames, 1 / 200)
    return float(
        np.sum(spectrum[(frequencies >= low_hz) & (frequencies <= high_hz)]) / spectrum.sum()
    )


def test_sentences_cover_every_sake_language_in_its_own_script():
    assert set(SENTENCES) == set(LABELS["Language"]) == set(ESPEAK_VOICES)
    for language, sentences in SENTENCES.items():
        assert len(set(sentences)) == len(sentences) >= 40, language
        for sentence in sentences:
            if language == "Chinese":
                assert 5 <= len(HAN.findall(sentence)) <= 16, sentence
            elif language == "Japanese":
                assert len(KANA.findall(sentence)) >= 8 and not HAN.search(sentence), sentence
                assert 2 <= len(sentence.split()) <= 8, sentence
            else:
                assert 4 <= len(WORD.findall(sentence)) <= 10, sentence
            if language == "Korean":
                assert HANGUL.search(sentence), sentence
    assert sentences_for("German") == SENTENCES["German"]
    with pytest.raises(ValueError, match="English"):
        sentences_for("Klingon")


def test_emotions_and_languages_are_the_sake_labels():
    assert LABELS["Emotion"] == EMOTIONS
    assert tuple(ESPEAK_VOICES) == LABELS["Language"]


def test_espeak_binding_synthesises_at_native_rate_with_word_events():
    settings = espeak.VoiceSettings("en", "m3", rate=175, pitch=50, pitch_range=50)
    result = espeak.synthesize("Hello there, my friend.", settings)
    assert result.sample_rate == espeak.NATIVE_SAMPLE_RATE == 22050
    assert result.audio.dtype == np.float32 and _rms(result.audio) > 0.01
    assert [event.char_start for event in result.words] == [0, 6, 13, 16]
    assert [event.start_s for event in result.words] == sorted(e.start_s for e in result.words)
    faster = espeak.synthesize("Hello there, my friend.", replace(settings, rate=350))
    assert len(faster.audio) < 0.7 * len(result.audio)
    with pytest.raises(espeak.EspeakError, match="no voice"):
        espeak.synthesize("Hello.", espeak.VoiceSettings("xx-nowhere", "", 175, 50, 50))


def test_espeak_output_does_not_depend_on_what_was_spoken_before():
    settings = espeak.VoiceSettings("en", "f5", rate=175, pitch=50, pitch_range=50, seed=3)
    first = espeak.synthesize(ENGLISH, settings).audio
    espeak.synthesize("Ganz etwas anderes.", espeak.VoiceSettings("de", "m1", 300, 10, 90, seed=9))
    assert np.array_equal(first, espeak.synthesize(ENGLISH, settings).audio)


@pytest.mark.parametrize("language", LABELS["Language"])
def test_every_language_renders_non_silent_16k_audio(language):
    rng = np.random.default_rng(11)
    speaker = sample_speaker("female", rng)
    clip = render_speech(SENTENCES[language][0], language, speaker, NEUTRAL, rng)
    assert clip.audio.dtype == np.float32 and clip.audio.ndim == 1
    assert clip.duration == pytest.approx(len(clip.audio) / SAMPLE_RATE)
    assert 0.8 <= clip.duration <= 4.0
    assert np.max(np.abs(clip.audio)) <= 1.0
    assert _rms(clip.audio) > 0.02
    assert clip.transcript == SENTENCES[language][0]


def test_same_seed_gives_identical_audio_and_another_seed_a_different_clip():
    first = _render("happy", seed=5)
    _render("sad", seed=6, speaker=MALE)
    again = _render("happy", seed=5)
    other = _render("happy", seed=7)
    assert np.array_equal(first.audio, again.audio) and first.words == again.words
    assert len(first.audio) != len(other.audio) or not np.array_equal(first.audio, other.audio)


def test_sample_speaker_draws_distinct_voices_and_rejects_unknown_gender():
    rng = np.random.default_rng(0)
    males = {sample_speaker("male", rng) for _ in range(20)}
    females = {sample_speaker("female", rng) for _ in range(20)}
    assert len({speaker.variant for speaker in males}) >= 4
    assert len({speaker.variant for speaker in females}) >= 4
    assert all(speaker.gender == "male" for speaker in males)
    with pytest.raises(ValueError, match="male, female"):
        sample_speaker("robot", rng)


def test_male_speakers_have_clearly_lower_pitch_than_female_speakers():
    rng = np.random.default_rng(21)
    pitches = {
        gender: [
            _median_f0(
                render_speech(ENGLISH, "English", sample_speaker(gender, rng), NEUTRAL, rng).audio
            )
            for _ in range(4)
        ]
        for gender in ("male", "female")
    }
    assert max(pitches["male"]) * 1.3 < min(pitches["female"])
    assert max(pitches["male"]) < 150 < min(pitches["female"])


def test_sad_is_quieter_and_darker_than_angry():
    assert max(_many("sad", _rms)) * 3 < min(_many("angry", _rms))
    assert max(_many("sad", _centroid)) < min(_many("angry", _centroid))


def test_each_emotion_carries_its_acoustic_signature_in_full_clips():
    def mean_of(emotion: str, measure) -> float:
        return float(np.mean(_many(emotion, measure)))

    def treble(audio: np.ndarray) -> float:
        return _band_share(audio, 3000, 8000)

    def nasal_band(audio: np.ndarray) -> float:
        return _band_share(audio, 1000, 2000)

    assert mean_of("happy", treble) > 2 * mean_of(NEUTRAL, treble)
    assert mean_of("disgust", nasal_band) > 1.6 * mean_of(NEUTRAL, nasal_band)
    assert max(_many("angry", _crest_factor)) < 0.75 * min(_many(NEUTRAL, _crest_factor))


def test_speaking_rate_follows_the_emotion():
    def speech_span(emotion: str) -> float:
        clips = [_render(emotion, seed, (FEMALE, MALE)[seed % 2]) for seed in range(4)]
        return float(np.mean([clip.words[-1][2] - clip.words[0][1] for clip in clips]))

    spans = {emotion: speech_span(emotion) for emotion in (*EMOTIONS, NEUTRAL)}
    assert spans["fear"] < spans["happy"] < spans[NEUTRAL] < spans["disgust"] < spans["sad"]
    assert spans["angry"] < spans[NEUTRAL]


def test_fear_trembles_at_six_to_nine_hertz():
    vowel = _sustained_vowel()
    scared = apply_emotion(vowel, "fear", np.random.default_rng(1))
    calm = apply_emotion(vowel, NEUTRAL, np.random.default_rng(1))
    assert _modulation_share(scared, 5.5, 9.5) > 0.5
    assert _modulation_share(calm, 5.5, 9.5) < 0.1


def test_emotion_effects_shape_the_spectrum_as_designed():
    vowel = _sustained_vowel()
    effects = {
        emotion: apply_emotion(vowel, emotion, np.random.default_rng(2))
        for emotion in (*EMOTIONS, NEUTRAL)
    }
    assert np.array_equal(effects[NEUTRAL], vowel)
    assert all(len(audio) == len(vowel) for audio in effects.values())
    assert _band_share(effects["sad"], 3000, 8000) < 0.05 * _band_share(vowel, 3000, 8000)
    assert _band_share(effects["happy"], 3000, 8000) > 2 * _band_share(vowel, 3000, 8000)
    assert _band_share(effects["disgust"], 1000, 2000) > 2 * _band_share(vowel, 1000, 2000)
    assert _crest_factor(effects["angry"]) < 0.8 * _crest_factor(vowel)


@pytest.mark.parametrize("language", LABELS["Language"])
def test_word_timestamps_are_monotonic_and_inside_the_clip(language):
    rng = np.random.default_rng(3)
    sentence = SENTENCES[language][7]
    clip = render_speech(sentence, language, sample_speaker("male", rng), "fear", rng)
    assert clip.words
    starts = [start for _, start, _ in clip.words]
    assert starts == sorted(starts)
    for word, start, end in clip.words:
        assert 0.0 < start <= end <= clip.duration
        assert word in clip.transcript
    remaining = clip.transcript
    for word, _, _ in clip.words:
        assert word in remaining, "words must follow the transcript's order"
        remaining = remaining[remaining.index(word) + len(word) :]


def test_long_speech_is_cut_at_a_word_boundary_with_its_transcript():
    text = "We spent the whole weekend at the beach and then we drove all the way home again."
    full = render_speech(text, "English", MALE, "sad", np.random.default_rng(4), max_seconds=30)
    short = render_speech(text, "English", MALE, "sad", np.random.default_rng(4), max_seconds=2.5)
    assert full.transcript == text and full.duration > 4.0
    assert short.duration <= 2.5
    assert text.startswith(short.transcript) and len(short.transcript) < len(text)
    assert [word for word, _, _ in short.words] == WORD.findall(short.transcript)
    assert short.words[-1][2] <= short.duration


def test_japanese_transcript_keeps_standard_spelling():
    sentence = "かれは けさ また かぎを わすれました。"
    clip = render_speech(sentence, "Japanese", FEMALE, NEUTRAL, np.random.default_rng(0))
    assert clip.transcript == sentence
    assert clip.words[0][0] == "かれは"


def test_unknown_language_or_emotion_names_the_valid_choices():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="English, German, Spanish"):
        render_speech(ENGLISH, "Klingon", MALE, "happy", rng)
    with pytest.raises(ValueError, match="happy, disgust, sad, fear, angry, neutral"):
        render_speech(ENGLISH, "English", MALE, "bored", rng)
    with pytest.raises(ValueError, match="no words"):
        render_speech("...", "English", MALE, "happy", rng)

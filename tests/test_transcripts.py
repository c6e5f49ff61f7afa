"""DeSTA2.5's transcript slot: manifest first, else Whisper after Silero VAD, cached per clip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

from sake.data.audio import write_audio
from sake.models.desta25 import desta25_transcriber
from sake.models.tokenizer import train_tokenizer
from sake.models.transcripts import (
    NO_SPEECH,
    ManifestThenWhisper,
    ManifestTranscriber,
    WhisperTranscriber,
    manifest_or_none,
)

WORDS = ["the", "speaker", "says", "hello", "world", "again", "and", "then", "stops"]


class TinyWhisperProcessor:
    """The two calls DeSTA2.5 makes of Whisper's processor: features, and decoding."""

    def __init__(self) -> None:
        self.features = WhisperFeatureExtractor(
            feature_size=16, sampling_rate=16000, chunk_length=1, n_fft=400, hop_length=160
        )
        self.tokenizer = train_tokenizer([" ".join(WORDS)] * 4, vocab_size=64)

    def __call__(self, waveforms, *, sampling_rate: int, return_tensors: str):
        return self.features(waveforms, sampling_rate=sampling_rate, return_tensors=return_tensors)

    def batch_decode(self, tokens, *, skip_special_tokens: bool) -> list[str]:
        return self.tokenizer.batch_decode(tokens, skip_special_tokens=skip_special_tokens)


@pytest.fixture(scope="module")
def whisper() -> WhisperForConditionalGeneration:
    config = WhisperConfig(
        vocab_size=64,
        num_mel_bins=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        d_model=16,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_source_positions=50,
        max_target_positions=64,
        decoder_start_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        bos_token_id=2,
    )
    torch.manual_seed(0)
    return WhisperForConditionalGeneration(config)


class CountingWhisper(WhisperTranscriber):
    """Counts how many waveforms reach Whisper, and in how many calls."""

    calls: list[int]

    def transcribe(self, waveforms):
        self.calls = [*getattr(self, "calls", []), len(waveforms)]
        return super().transcribe(waveforms)


def transcriber(whisper, cache: Path) -> CountingWhisper:
    """Every clip louder than a whisper counts as speech."""
    return CountingWhisper(
        whisper,
        TinyWhisperProcessor(),
        detector=lambda waveform: bool(np.abs(waveform).max() > 0.05),
        cache_dir=cache,
        identity="tiny-whisper",
        max_new_tokens=6,
        batch_clips=2,
    )


TONE = (0.3 * np.sin(np.linspace(0, 400 * np.pi, 16000))).astype(np.float32)


@pytest.fixture
def clips(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    tone = TONE
    return {
        "speech_a": write_audio(tmp_path / "audio" / "a.wav", tone),
        "speech_b": write_audio(
            tmp_path / "audio" / "b.wav", tone + 0.05 * rng.standard_normal(16000)
        ),
        "speech_c": write_audio(tmp_path / "audio" / "c.wav", tone[::-1].copy()),
        "silence": write_audio(tmp_path / "audio" / "quiet.wav", np.zeros(16000)),
    }


def test_whisper_transcribes_speech_in_batches_and_writes_a_space_for_silence(
    whisper, clips: dict[str, Path], tmp_path: Path
) -> None:
    transcribe = transcriber(whisper, tmp_path / "cache")
    transcribe.prefetch(list(clips.values()))
    assert transcribe.calls == [2, 1]
    assert transcribe(clips["silence"]) == NO_SPEECH
    texts = {name: transcribe(path) for name, path in clips.items() if name != "silence"}
    assert all(text == text.strip() and text for text in texts.values())
    assert texts["speech_a"] == transcribe.transcribe([TONE])[0]


def test_transcripts_are_cached_on_disk_by_content_and_settings(
    whisper, clips: dict[str, Path], tmp_path: Path
) -> None:
    first = transcriber(whisper, tmp_path / "cache")
    expected = first(clips["speech_a"])
    again = transcriber(whisper, tmp_path / "cache")
    moved = clips["speech_a"].rename(tmp_path / "moved.wav")
    assert again(moved) == expected
    assert not hasattr(again, "calls")
    entries = list((tmp_path / "cache").rglob("*.json"))
    assert len(entries) == 1
    assert json.loads(entries[0].read_text())["transcript"] == expected
    longer = CountingWhisper(
        whisper,
        TinyWhisperProcessor(),
        detector=lambda waveform: True,
        cache_dir=tmp_path / "cache",
        identity="tiny-whisper",
        max_new_tokens=3,
    )
    longer(moved)
    assert longer.calls == [1]


def test_manifest_transcript_wins_over_whisper(
    whisper, clips: dict[str, Path], tmp_path: Path
) -> None:
    (tmp_path / "audio" / "manifest.json").write_text(
        json.dumps({"a.wav": {"transcript": "  Hello   there "}, "b.wav": {"label": "x"}})
    )
    whisper_part = transcriber(whisper, tmp_path / "cache")
    chained = ManifestThenWhisper(ManifestTranscriber(), whisper_part)
    chained.prefetch([clips["speech_a"], clips["speech_b"]])
    assert whisper_part.calls == [1]
    assert chained(clips["speech_a"]) == "Hello there"
    assert chained(clips["speech_b"]) == whisper_part(clips["speech_b"])
    assert ManifestTranscriber()(clips["speech_b"]) == ""


def test_transcript_sources_are_checked(tmp_path: Path) -> None:
    assert manifest_or_none("none", "tiny") is None
    assert isinstance(manifest_or_none("manifest", "tiny"), ManifestTranscriber)
    with pytest.raises(ValueError, match="no Whisper decoder"):
        manifest_or_none("whisper", "tiny")
    with pytest.raises(ValueError, match="whisper, manifest, none"):
        desta25_transcriber("true", tmp_path, "x", tmp_path, torch.device("cpu"))
    assert desta25_transcriber("none", tmp_path, "x", tmp_path, torch.device("cpu")) is None


def test_silero_hears_speech_but_not_silence_or_a_tone() -> None:
    pytest.importorskip("silero_vad")
    from sake.data.audio import resample
    from sake.data.synth import espeak
    from sake.models.transcripts import silero_speech_detector

    voice = espeak.VoiceSettings("en", "", rate=175, pitch=50, pitch_range=50)
    spoken = espeak.synthesize("Hello there, my friend. How are you today?", voice)
    detect = silero_speech_detector()
    assert detect(resample(spoken.audio, spoken.sample_rate, 16000)) is True
    assert detect(np.zeros(16000, dtype=np.float32)) is False
    assert detect(TONE) is False

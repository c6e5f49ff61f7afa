"""Audio I/O: 16-bit WAV round trips, mono mixing, resampling, missing and broken files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sake.data.audio import (
    SAMPLE_RATE,
    audio_duration,
    read_audio,
    require_audio,
    resample,
    survey_audio,
    write_audio,
)
from sake.data.errors import DataError, MissingAudioError


def tone(frequency: float, seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def dominant_frequency(waveform: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(waveform))
    return float(np.fft.rfftfreq(len(waveform), 1 / rate)[np.argmax(spectrum)])


def test_write_then_read_is_exact_to_16_bit_precision(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    waveform = rng.uniform(-0.9, 0.9, SAMPLE_RATE).astype(np.float32)
    path = write_audio(tmp_path / "nested" / "clip.wav", waveform)
    info = sf.info(str(path))
    assert (info.format, info.subtype, info.samplerate, info.channels) == (
        "WAV",
        "PCM_16",
        SAMPLE_RATE,
        1,
    )
    back = read_audio(path)
    assert back.dtype == np.float32 and back.shape == waveform.shape
    assert np.max(np.abs(back - waveform)) <= 1 / 32768 + 1e-7
    assert audio_duration(path) == pytest.approx(1.0)


def test_out_of_range_samples_are_clipped(tmp_path: Path) -> None:
    path = write_audio(tmp_path / "loud.wav", np.array([2.0, -3.0, 0.25], dtype=np.float32))
    assert np.allclose(read_audio(path), [32767 / 32768, -1.0, 0.25], atol=1e-4)


def test_stereo_is_mixed_to_mono(tmp_path: Path) -> None:
    left, right = tone(440, 0.5, SAMPLE_RATE), np.zeros(SAMPLE_RATE // 2, dtype=np.float32)
    sf.write(str(tmp_path / "stereo.wav"), np.stack([left, right], axis=1), SAMPLE_RATE)
    mono = read_audio(tmp_path / "stereo.wav")
    assert mono.ndim == 1
    assert np.allclose(mono, left / 2, atol=1e-4)


@pytest.mark.parametrize("source_rate", [44_100, 48_000, 22_050, 8_000])
def test_reading_resamples_to_16_khz(tmp_path: Path, source_rate: int) -> None:
    sf.write(str(tmp_path / "clip.wav"), tone(440, 1.0, source_rate), source_rate)
    waveform = read_audio(tmp_path / "clip.wav")
    assert len(waveform) == SAMPLE_RATE
    assert dominant_frequency(waveform, SAMPLE_RATE) == pytest.approx(440, abs=2)
    assert np.max(np.abs(waveform[1000:-1000])) == pytest.approx(0.5, abs=0.02)


def test_resample_is_identity_at_the_same_rate() -> None:
    waveform = tone(300, 0.1, SAMPLE_RATE)
    assert np.array_equal(resample(waveform, SAMPLE_RATE, SAMPLE_RATE), waveform)
    assert len(resample(waveform, SAMPLE_RATE, 8_000)) == len(waveform) // 2


def test_missing_audio_is_reported_all_at_once(tmp_path: Path) -> None:
    present = write_audio(tmp_path / "here.wav", tone(440, 0.1, SAMPLE_RATE))
    missing = [tmp_path / "Animal" / f"cow_{i}.wav" for i in range(8)]
    with pytest.raises(MissingAudioError) as caught:
        require_audio([present, *missing])
    error = caught.value
    assert isinstance(error, DataError)
    assert error.total == 9 and error.missing == tuple(sorted(missing))
    message = str(error)
    assert message.startswith("8 of 9 audio files are missing; first:")
    assert str(sorted(missing)[0]) in message and "... and 3 more" in message
    assert str(sorted(missing)[-1]) not in message
    require_audio([present])


def test_survey_reports_missing_undecodable_and_durations(tmp_path: Path) -> None:
    one = write_audio(tmp_path / "one.wav", tone(440, 1.0, SAMPLE_RATE))
    half = write_audio(tmp_path / "half.wav", tone(440, 0.5, SAMPLE_RATE))
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF0000WAVEnot really audio")
    survey = survey_audio([one, half, broken, tmp_path / "gone.wav"])
    assert survey.files == 4
    assert survey.missing == (tmp_path / "gone.wav",)
    assert [path for path, _ in survey.undecodable] == [broken]
    assert survey.duration_summary() == {"min": 0.5, "mean": 0.75, "max": 1.0}


def test_undecodable_file_raises_a_data_error_naming_it(tmp_path: Path) -> None:
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"not audio at all")
    with pytest.raises(DataError, match=r"broken\.wav: cannot decode audio"):
        read_audio(broken)

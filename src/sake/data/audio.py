"""Audio I/O for SAKE corpora: float32 mono at 16 kHz in memory, 16-bit PCM WAV on disk.

Everything goes through soundfile; resampling uses a polyphase filter so that any source rate
(44.1 kHz animal calls, 48 kHz Common Voice clips) reaches the models' 16 kHz exactly.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from sake.data.errors import DataError, MissingAudioError
from sake.data.schema import EditCase

SAMPLE_RATE = 16_000


def read_audio(path: Path | str, *, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode a file to a float32 mono waveform at `sample_rate`."""
    try:
        data, source_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as error:
        raise DataError(f"cannot decode audio: {error}", path=path) from error
    return resample(data.mean(axis=1), source_rate, sample_rate)


def resample(waveform: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Polyphase resampling between integer rates; a no-op when the rates agree."""
    if source_rate == target_rate:
        return np.asarray(waveform, dtype=np.float32)
    common = gcd(int(source_rate), int(target_rate))
    resampled = resample_poly(waveform, target_rate // common, source_rate // common)
    return resampled.astype(np.float32)


def write_audio(path: Path | str, waveform: np.ndarray, *, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write a mono waveform in [-1, 1] as 16-bit PCM WAV (clipping what lies outside)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = np.clip(np.asarray(waveform, dtype=np.float32), -1.0, 1.0)
    sf.write(str(path), samples, sample_rate, subtype="PCM_16", format="WAV")
    return path


def audio_duration(path: Path | str) -> float:
    """Duration in seconds, read from the file header."""
    return float(sf.info(str(path)).duration)


def clips_longer_than(paths: Iterable[Path], seconds: float) -> list[tuple[Path, float]]:
    """The readable clips among `paths` that last longer than `seconds`, with their durations,
    longest first (headers only: nothing is decoded)."""
    found = []
    for path in sorted(set(paths)):
        try:
            duration = audio_duration(path)
        except (sf.LibsndfileError, RuntimeError):
            continue
        if duration > seconds + 1e-6:
            found.append((path, duration))
    return sorted(found, key=lambda item: -item[1])


def case_audio_paths(cases: Iterable[EditCase]) -> dict[Path, str]:
    """Every resolved audio path of the cases, mapped to the first case that uses it."""
    users: dict[Path, str] = {}
    for case in cases:
        for probe in case.probes():
            if probe.audio_path is not None:
                users.setdefault(probe.audio_path, case.case_id)
    return users


def find_missing_audio(paths: Iterable[Path]) -> list[Path]:
    return sorted(path for path in set(paths) if not path.is_file())


def require_audio(paths: Iterable[Path]) -> None:
    """Raise one error listing every missing file (count and the first few paths)."""
    paths = set(paths)
    missing = find_missing_audio(paths)
    if missing:
        raise MissingAudioError(missing, total=len(paths))


@dataclass(frozen=True)
class AudioSurvey:
    """What a corpus's audio looks like on disk."""

    files: int
    missing: tuple[Path, ...]
    undecodable: tuple[tuple[Path, str], ...]
    durations: tuple[float, ...]
    decoded: tuple[Path, ...] = ()  # the files of `durations`, in the same order

    def duration_summary(self) -> dict[str, float] | None:
        if not self.durations:
            return None
        values = np.asarray(self.durations)
        return {
            "min": round(float(values.min()), 3),
            "mean": round(float(values.mean()), 3),
            "max": round(float(values.max()), 3),
        }


def survey_audio(paths: Iterable[Path]) -> AudioSurvey:
    """Check that every file exists and decodes, and collect durations."""
    paths = sorted(set(paths))
    missing = tuple(find_missing_audio(paths))
    absent = set(missing)
    present = [path for path in paths if path not in absent]
    undecodable: list[tuple[Path, str]] = []
    durations: list[float] = []
    decoded: list[Path] = []
    for path in present:
        try:
            data, rate = sf.read(str(path), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as error:
            undecodable.append((path, str(error)))
            continue
        durations.append(len(data) / rate)
        decoded.append(path)
    return AudioSurvey(len(paths), missing, tuple(undecodable), tuple(durations), tuple(decoded))

"""Whisper-compatible log-mel front end, computed in torch.

It reproduces what Whisper's feature extractor does (and therefore what DeSTA2.5-Audio feeds its
encoder): 16 kHz audio zero-padded or truncated to a fixed number of seconds, a centred STFT with
a periodic Hann window (n_fft 400, hop 160), power spectrum without the last frame, a Slaney-style
mel filterbank (librosa's default: Slaney mel scale and Slaney area normalisation), log10 with a
1e-10 floor, a dynamic-range clamp at the per-clip maximum minus 8, and the (x + 4) / 4 scaling.

The filterbank is built here in numpy so that no audio library is needed at run time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

_SLANEY_LINEAR_HZ_PER_MEL = 200.0 / 3.0
_SLANEY_LOG_START_HZ = 1000.0
_SLANEY_LOG_STEP = math.log(6.4) / 27.0
_LOG_FLOOR = 1e-10
_DYNAMIC_RANGE_LOG10 = 8.0


@dataclass(frozen=True)
class MelConfig:
    """Front-end settings; the defaults are Whisper's (80 bins; large-v3 uses 128)."""

    sample_rate: int = 16000
    n_fft: int = 400
    hop_length: int = 160
    n_mels: int = 80
    max_seconds: float | None = 30.0

    @property
    def n_samples(self) -> int | None:
        """Samples per clip after padding/truncation; None keeps each batch's longest length."""
        if self.max_seconds is None:
            return None
        return round(self.max_seconds * self.sample_rate)

    @property
    def n_frames(self) -> int | None:
        """Mel frames per padded clip (Whisper: 3000 for 30 s)."""
        n_samples = self.n_samples
        return None if n_samples is None else n_samples // self.hop_length


def hz_to_mel(frequencies: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above (librosa with htk=False)."""
    frequencies = np.asarray(frequencies, dtype=np.float64)
    linear = frequencies / _SLANEY_LINEAR_HZ_PER_MEL
    log_start_mel = _SLANEY_LOG_START_HZ / _SLANEY_LINEAR_HZ_PER_MEL
    safe = np.maximum(frequencies, _SLANEY_LOG_START_HZ)
    logarithmic = log_start_mel + np.log(safe / _SLANEY_LOG_START_HZ) / _SLANEY_LOG_STEP
    return np.where(frequencies >= _SLANEY_LOG_START_HZ, logarithmic, linear)


def mel_to_hz(mels: np.ndarray) -> np.ndarray:
    """Inverse of `hz_to_mel`."""
    mels = np.asarray(mels, dtype=np.float64)
    log_start_mel = _SLANEY_LOG_START_HZ / _SLANEY_LINEAR_HZ_PER_MEL
    linear = mels * _SLANEY_LINEAR_HZ_PER_MEL
    logarithmic = _SLANEY_LOG_START_HZ * np.exp(_SLANEY_LOG_STEP * (mels - log_start_mel))
    return np.where(mels >= log_start_mel, logarithmic, linear)


def mel_filterbank(
    sample_rate: int,
    n_fft: int,
    n_mels: int,
    f_min: float = 0.0,
    f_max: float | None = None,
) -> np.ndarray:
    """Triangular Slaney filters of shape (n_mels, n_fft // 2 + 1), area-normalised.

    Equal to `librosa.filters.mel(sr, n_fft, n_mels)` (the matrix Whisper ships as mel_filters).
    """
    f_max = sample_rate / 2.0 if f_max is None else f_max
    fft_frequencies = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    edges_hz = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    widths = np.diff(edges_hz)
    distances = edges_hz[:, None] - fft_frequencies[None, :]
    rising = -distances[:-2] / widths[:-1, None]
    falling = distances[2:] / widths[1:, None]
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    area_norm = 2.0 / (edges_hz[2:] - edges_hz[:-2])
    return (triangles * area_norm[:, None]).astype(np.float32)


def pad_or_trim(waveforms: Tensor, n_samples: int) -> Tensor:
    """Zero-pad or cut the last axis to exactly `n_samples`, as Whisper does before the STFT."""
    length = waveforms.shape[-1]
    if length >= n_samples:
        return waveforms[..., :n_samples]
    return nn.functional.pad(waveforms, (0, n_samples - length))


def stack_waveforms(
    waveforms: Sequence[np.ndarray | Tensor], n_samples: int | None = None
) -> tuple[Tensor, Tensor]:
    """Right-pad mono clips into one float32 batch; returns (batch, lengths before padding).

    With `n_samples` every clip is padded or truncated to that length; lengths are clipped too.
    """
    tensors = [torch.as_tensor(clip, dtype=torch.float32).reshape(-1) for clip in waveforms]
    if not tensors:
        raise ValueError("stack_waveforms needs at least one clip")
    target = n_samples if n_samples is not None else max(t.shape[0] for t in tensors)
    batch = torch.stack([pad_or_trim(t, target) for t in tensors])
    lengths = torch.tensor([min(t.shape[0], target) for t in tensors], dtype=torch.long)
    return batch, lengths


class LogMelSpectrogram(nn.Module):
    """Batched Whisper log-mel features with a mask of the frames that cover real audio.

    Computed in float32 whatever dtype the model is cast to; callers cast the features.
    """

    def __init__(self, config: MelConfig) -> None:
        super().__init__()
        self.config = config
        filters = mel_filterbank(config.sample_rate, config.n_fft, config.n_mels)
        self.register_buffer("window", torch.hann_window(config.n_fft), persistent=False)
        self.register_buffer("filters", torch.from_numpy(filters), persistent=False)

    def forward(self, waveforms: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(batch, samples) audio -> (batch, n_mels, frames) features and a (batch, frames) mask.

        `lengths` gives each clip's number of real samples (default: all samples are real).
        Audio is padded or truncated to `config.max_seconds` first when that is set.
        """
        if waveforms.dim() != 2:
            raise ValueError(f"expected (batch, samples) audio, got shape {tuple(waveforms.shape)}")
        n_samples = self.config.n_samples
        if n_samples is not None:
            waveforms = pad_or_trim(waveforms, n_samples)
        if lengths is None:
            lengths = torch.full((waveforms.shape[0],), waveforms.shape[-1], dtype=torch.long)
        lengths = lengths.clamp(max=waveforms.shape[-1])
        features = self._log_mel(waveforms.float())
        return features, self.frame_mask(lengths.to(features.device), features.shape[-1])

    def frame_mask(self, lengths: Tensor, n_frames: int) -> Tensor:
        """Frame t is real when its centre sample t * hop lies inside the clip (Whisper's rule)."""
        real_frames = (lengths + self.config.hop_length - 1) // self.config.hop_length
        return torch.arange(n_frames, device=lengths.device)[None, :] < real_frames[:, None]

    def _log_mel(self, waveforms: Tensor) -> Tensor:
        spectrum = torch.stft(
            waveforms,
            self.config.n_fft,
            self.config.hop_length,
            window=self.window.float(),
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )
        power = spectrum[..., :-1].abs() ** 2
        log_mel = torch.clamp(self.filters.float() @ power, min=_LOG_FLOOR).log10()
        clip_max = log_mel.amax(dim=(-2, -1), keepdim=True)
        log_mel = torch.maximum(log_mel, clip_max - _DYNAMIC_RANGE_LOG10)
        return (log_mel + 4.0) / 4.0

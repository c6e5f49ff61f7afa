"""The synthetic corpus's clips as training material: labels, log-mel features, encoder states.

Features are computed once per run with the model's own front end (the path `DestaLALM`
takes at inference: decode at 16 kHz, pad to the encoder's clip length, log-mel), kept in
memory as float16. The frozen encoder's tapped-layer outputs are cached the same way for
connector training, so that a training step costs only the connector and the LLM.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from sake.data.audio import read_audio
from sake.data.schema import ATTRIBUTES, LABELS
from sake.data.synth import auditory
from sake.data.synth.pools import read_manifest, task_track
from sake.models.configuration_desta import DestaAudioEncoderConfig
from sake.models.mel import LogMelSpectrogram, stack_waveforms
from sake.models.modeling_desta import WhisperAudioEncoder
from sake.training.examples import ClipInfo

FEATURE_CHUNK = 64
FLOAT16_MAX = torch.finfo(torch.float16).max


@dataclass(frozen=True)
class Clip:
    """A clip on disk and what is known about it."""

    info: ClipInfo
    path: Path
    fingerprint: str


def manifest_clips(audio_root: Path, split: str) -> list[Clip]:
    """Every clip of `split` listed in the corpus manifest, in path order."""
    manifest = read_manifest(Path(audio_root))
    if not manifest:
        raise FileNotFoundError(
            f"no clip manifest under {audio_root}; generate the corpus first "
            "(`python train.py task=corpus` or `python -m sake.data.synth`)"
        )
    return [
        Clip(
            ClipInfo.from_manifest(relative_path, entry),
            Path(audio_root) / relative_path,
            str(entry.get("fingerprint", "")),
        )
        for relative_path, entry in sorted(manifest.items())
        if entry["split"] == split
    ]


def label_families() -> dict[str, tuple[str, ...]]:
    """Every classification target a clip can carry: the four attributes and each task."""
    families = {attribute: LABELS[attribute] for attribute in ATTRIBUTES}
    for task in auditory.AUDITORY_TASKS:
        families[task_track(task.name)] = tuple(task.labels)
    return families


def label_targets(
    clips: Sequence[Clip],
    families: dict[str, tuple[str, ...]],
    *,
    own_track_only: bool = False,
    own_track_families: Collection[str] = (),
) -> Tensor:
    """(clips, families) class indices, -1 where a clip has no label in that family.

    With `own_track_only` a clip keeps only the label of its own track, as SAKE asks about
    an attribute only on clips recorded for it (English dominates the other speech tracks);
    `own_track_families` does the same for the listed families only.
    """
    names = list(families)
    unknown = sorted(set(own_track_families) - set(names))
    if unknown:
        raise ValueError(f"own_track_families names unknown families {unknown}; known: {names}")
    targets = torch.full((len(clips), len(names)), -1, dtype=torch.long)
    for row, clip in enumerate(clips):
        for family, label in clip.info.labels.items():
            own_only = own_track_only or family in own_track_families
            if own_only and family != clip.info.track:
                continue
            targets[row, names.index(family)] = families[family].index(label)
    return targets


def class_weights(targets: Tensor, families: dict[str, tuple[str, ...]]) -> list[Tensor]:
    """Per family, inverse-frequency weights of its labels (mean 1 over the labelled clips).

    English is spoken on every speech track, so unweighted the language head would learn
    to answer English; labels absent from the data get weight 0.
    """
    weights = []
    for column, labels in enumerate(families.values()):
        present = targets[:, column][targets[:, column] >= 0]
        counts = torch.bincount(present, minlength=len(labels)).float()
        inverse = torch.where(counts > 0, 1.0 / counts.clamp(min=1.0), torch.zeros_like(counts))
        scale = len(present) / max(float((inverse * counts).sum()), 1e-9)
        weights.append(inverse * scale)
    return weights


@dataclass
class ClipFeatures:
    """Log-mel features (clips, n_mels, frames) in float16 and their real-frame masks."""

    features: Tensor
    masks: Tensor

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @staticmethod
    def concatenate(parts: Sequence[ClipFeatures]) -> ClipFeatures:
        return ClipFeatures(
            torch.cat([p.features for p in parts]), torch.cat([p.masks for p in parts])
        )


def compute_features(
    paths: Sequence[Path], config: DestaAudioEncoderConfig, *, progress: bool = False
) -> ClipFeatures:
    """Features exactly as the model computes them at inference, chunk by chunk."""
    front_end = LogMelSpectrogram(config.mel_config())
    n_samples = config.mel_config().n_samples
    features, masks = [], []
    chunks = range(0, len(paths), FEATURE_CHUNK)
    for begin in tqdm(chunks, desc="log-mel features", unit="chunk", disable=not progress):
        waveforms = [
            read_audio(path, sample_rate=config.sample_rate)
            for path in paths[begin : begin + FEATURE_CHUNK]
        ]
        batch, lengths = stack_waveforms(waveforms, n_samples)
        with torch.no_grad():
            chunk_features, chunk_masks = front_end(batch, lengths)
        features.append(chunk_features.to(torch.float16))
        masks.append(chunk_masks)
    if not features:
        frames = config.n_mel_frames
        return ClipFeatures(
            torch.zeros((0, config.n_mels, frames), dtype=torch.float16),
            torch.zeros((0, frames), dtype=torch.bool),
        )
    return ClipFeatures(torch.cat(features), torch.cat(masks))


def cached_features(
    clips: Sequence[Clip],
    config: DestaAudioEncoderConfig,
    cache_dir: Path | None,
    *,
    progress: bool = False,
) -> ClipFeatures:
    """`compute_features` of the clips, kept under `cache_dir` (None: not kept).

    The key is the front end's settings and every clip's path and fingerprint, so the
    encoder and distillation stages compute a pool's features once between them.
    """
    if cache_dir is None:
        return compute_features([c.path for c in clips], config, progress=progress)
    payload = {
        "front_end": asdict(config.mel_config()),
        "clips": [(c.info.relative_path, c.fingerprint) for c in clips],
    }
    key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"features-{key}.pt"
    if path.is_file():
        stored = torch.load(path, map_location="cpu", weights_only=True)
        return ClipFeatures(stored["features"], stored["masks"])
    features = compute_features([c.path for c in clips], config, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save({"features": features.features, "masks": features.masks}, partial)
    partial.replace(path)
    return features


@dataclass
class EncoderStates:
    """The frozen encoder's tapped-layer outputs (clips, n_tapped, frames, width), float16.

    `frame_masks` is None when the encoder does not mask padded frames.
    """

    tapped_layers: tuple[int, ...]
    n_layers: int
    states: Tensor
    frame_masks: Tensor | None

    def hidden_states(self, clips: Tensor, device: torch.device) -> list[Tensor | None]:
        """The encoder's per-layer outputs as the connector reads them (untapped ones None)."""
        chosen = self.states[clips.cpu()].to(device=device, dtype=torch.float32)
        hidden: list[Tensor | None] = [None] * (self.n_layers + 1)
        for position, layer in enumerate(self.tapped_layers):
            hidden[layer + 1] = chosen[:, position]
        return hidden

    def frame_mask(self, clips: Tensor, device: torch.device) -> Tensor | None:
        if self.frame_masks is None:
            return None
        return self.frame_masks[clips.cpu()].to(device)


@torch.no_grad()
def compute_encoder_states(
    encoder: WhisperAudioEncoder,
    features: ClipFeatures,
    tapped_layers: Sequence[int],
    *,
    progress: bool = False,
) -> EncoderStates:
    """Run the frozen encoder once over every clip and keep the tapped layers."""
    was_training = encoder.training
    encoder.eval()
    states, masks = [], []
    chunks = range(0, len(features), FEATURE_CHUNK)
    for begin in tqdm(chunks, desc="encoder states", unit="chunk", disable=not progress):
        chunk = features.features[begin : begin + FEATURE_CHUNK].float()
        chunk_masks = features.masks[begin : begin + FEATURE_CHUNK]
        hidden = encoder(chunk, chunk_masks)
        tapped = torch.stack([hidden[i + 1] for i in tapped_layers], dim=1)
        if not bool(tapped.abs().amax() < FLOAT16_MAX):
            raise FloatingPointError("encoder states overflow float16; the encoder diverged")
        states.append(tapped.half())
        frame_mask = encoder.frame_mask(chunk_masks)
        if frame_mask is not None:
            masks.append(frame_mask)
    encoder.train(was_training)
    return EncoderStates(
        tapped_layers=tuple(int(i) for i in tapped_layers),
        n_layers=encoder.config.n_layers,
        states=torch.cat(states),
        frame_masks=torch.cat(masks) if masks else None,
    )


def sample_clips(clips: Sequence[Clip], n: int | None, rng: np.random.Generator) -> list[Clip]:
    """At most `n` clips drawn without replacement, in their original order (all if None)."""
    if n is None or n >= len(clips):
        return list(clips)
    chosen = np.sort(rng.choice(len(clips), size=n, replace=False))
    return [clips[int(i)] for i in chosen]

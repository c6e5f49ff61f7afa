"""Transcripts for DeSTA-style audio spans: a corpus manifest first, else the model's Whisper.

DeSTA2.5-Audio writes a transcript of each clip after the clip's audio features. Its own
`generate` (kehanlu/DeSTA2.5-Audio, `desta/models/modeling_desta25.py`) takes the transcript
given with a clip; when none is given it asks Silero VAD whether the clip holds speech, writes
a single space when it does not, and otherwise transcribes the clip with its Whisper model
(the checkpoint's own generation settings, at most 128 new tokens, special tokens dropped,
stripped). `WhisperTranscriber` does the same, once per clip: each transcript is cached on
disk under a key made of the clip's bytes and the transcriber's settings, so a re-run, a
resumed run or another method on the same data never transcribes a clip again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from sake.data.audio import read_audio
from sake.utils.errors import UserError
from sake.utils.run import atomic_write_text

MANIFEST_NAME = "manifest.json"
NO_SPEECH = " "
RELEASE_MAX_NEW_TOKENS = 128
WHISPER_SAMPLE_RATE = 16_000
DEFAULT_BATCH_CLIPS = 8
TRANSCRIPT_SOURCES = ("whisper", "manifest", "none")

SpeechDetector = Callable[[np.ndarray], bool]


class Transcriber(Protocol):
    """Maps a clip to the transcript written into its span; `prefetch` prepares many at once."""

    def __call__(self, clip: Path) -> str: ...

    def prefetch(self, clips: Sequence[Path]) -> None: ...


class ManifestTranscriber:
    """Transcripts from a corpus manifest (`manifest.json` at the audio root), "" when absent.

    The manifest maps each clip's path relative to its directory to an entry with a
    `transcript` (or to the transcript itself), as the synthetic corpus writes it.
    """

    def __init__(self, manifest_name: str = MANIFEST_NAME) -> None:
        self.manifest_name = manifest_name
        self._manifests: dict[Path, dict[str, Any] | None] = {}

    def __call__(self, clip: Path) -> str:
        return self.lookup(clip) or ""

    def prefetch(self, clips: Sequence[Path]) -> None:
        """Nothing to prepare: manifests are read on first use."""

    def lookup(self, clip: Path) -> str | None:
        """The manifest's transcript of `clip`, None when no manifest records one."""
        path = Path(clip).resolve()
        for root in path.parents:
            manifest = self._manifest(root)
            if manifest is None:
                continue
            entry = manifest.get(path.relative_to(root).as_posix())
            text = entry.get("transcript") if isinstance(entry, Mapping) else entry
            return None if text is None else " ".join(str(text).split())
        return None

    def _manifest(self, directory: Path) -> dict[str, Any] | None:
        if directory not in self._manifests:
            path = directory / self.manifest_name
            self._manifests[directory] = (
                json.loads(path.read_text("utf-8")) if path.is_file() else None
            )
        return self._manifests[directory]


class WhisperTranscriber:
    """DeSTA2.5's transcription of clips given without a transcript, cached per clip on disk.

    `model` is a `WhisperForConditionalGeneration` and `processor` its processor (feature
    extractor and tokenizer); `detector` says whether a waveform holds speech; `identity`
    names the checkpoint, so that two Whisper models never share cached transcripts.
    """

    def __init__(
        self,
        model: nn.Module,
        processor: Any,
        *,
        detector: SpeechDetector,
        cache_dir: str | Path,
        identity: str,
        max_new_tokens: int = RELEASE_MAX_NEW_TOKENS,
        batch_clips: int = DEFAULT_BATCH_CLIPS,
    ) -> None:
        self.model = model.eval()
        self.processor = processor
        self.detector = detector
        self.max_new_tokens = max_new_tokens
        self.batch_clips = batch_clips
        settings = f"{identity}|max_new_tokens={max_new_tokens}|vad=silero"
        self.cache_dir = Path(cache_dir) / hashlib.sha256(settings.encode()).hexdigest()[:16]
        self._known: dict[Path, str] = {}

    def __call__(self, clip: Path) -> str:
        self.prefetch([clip])
        return self._known[Path(clip)]

    def prefetch(self, clips: Sequence[Path]) -> None:
        """Transcribe every clip not seen or cached yet, speech clips in batches."""
        waiting: list[tuple[Path, Path, np.ndarray]] = []
        for clip in dict.fromkeys(Path(c) for c in clips):
            if clip in self._known:
                continue
            entry = self._entry(clip)
            if entry.is_file():
                self._known[clip] = json.loads(entry.read_text("utf-8"))["transcript"]
                continue
            waveform = read_audio(clip, sample_rate=WHISPER_SAMPLE_RATE)
            if self.detector(waveform):
                waiting.append((clip, entry, waveform))
            else:
                self._store(clip, entry, NO_SPEECH)
        for start in range(0, len(waiting), self.batch_clips):
            chunk = waiting[start : start + self.batch_clips]
            texts = self.transcribe([waveform for _, _, waveform in chunk])
            for (clip, entry, _), text in zip(chunk, texts, strict=True):
                self._store(clip, entry, text)

    def transcribe(self, waveforms: Sequence[np.ndarray]) -> list[str]:
        """Whisper's greedy transcripts of 16 kHz waveforms (its window: the first 30 s)."""
        features = self.processor(
            list(waveforms), sampling_rate=WHISPER_SAMPLE_RATE, return_tensors="pt"
        ).input_features
        parameter = next(self.model.parameters())
        with torch.no_grad():
            tokens = self.model.generate(
                input_features=features.to(parameter.device, parameter.dtype),
                max_new_tokens=self.max_new_tokens,
            )
        return [
            text.strip() for text in self.processor.batch_decode(tokens, skip_special_tokens=True)
        ]

    def _entry(self, clip: Path) -> Path:
        digest = hashlib.sha256(Path(clip).read_bytes()).hexdigest()[:32]
        return self.cache_dir / f"{digest}.json"

    def _store(self, clip: Path, entry: Path, text: str) -> None:
        entry.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(entry, json.dumps({"clip": str(clip), "transcript": text}) + "\n")
        self._known[clip] = text


class ManifestThenWhisper:
    """The manifest's transcript where it records one, DeSTA2.5's own transcription otherwise."""

    def __init__(self, manifest: ManifestTranscriber, whisper: WhisperTranscriber) -> None:
        self.manifest = manifest
        self.whisper = whisper

    def __call__(self, clip: Path) -> str:
        recorded = self.manifest.lookup(clip)
        return self.whisper(clip) if recorded is None else recorded

    def prefetch(self, clips: Sequence[Path]) -> None:
        self.whisper.prefetch([clip for clip in clips if self.manifest.lookup(clip) is None])


def silero_speech_detector() -> SpeechDetector:
    """Silero VAD, as DeSTA2.5 runs it: speech when it finds any speech segment at 16 kHz."""
    try:
        from silero_vad import get_speech_timestamps, load_silero_vad
    except ImportError as error:
        raise UserError(
            "DeSTA2.5 decides with Silero VAD whether a clip needs a transcript: install it "
            "with pip install 'sake[desta]' (or pip install silero-vad), or read transcripts "
            "from the corpus manifest only with model.load.transcripts=manifest"
        ) from error
    vad = load_silero_vad()

    def has_speech(waveform: np.ndarray) -> bool:
        audio = torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float32))
        return bool(get_speech_timestamps(audio, vad, sampling_rate=WHISPER_SAMPLE_RATE))

    return has_speech


def check_transcript_source(source: str) -> str:
    if source not in TRANSCRIPT_SOURCES:
        raise ValueError(
            f"model.load.transcripts must be one of {', '.join(TRANSCRIPT_SOURCES)}, got {source!r}"
        )
    return source


def manifest_or_none(source: str, model_name: str) -> ManifestTranscriber | None:
    """The transcriber of a model without a Whisper decoder: the manifest, or no transcripts."""
    if check_transcript_source(source) == "whisper":
        raise ValueError(
            f"{model_name} has no Whisper decoder to transcribe with: set "
            "model.load.transcripts=manifest (or none)"
        )
    return ManifestTranscriber() if source == "manifest" else None

"""Pools of synthetic audio clips: what to render, rendering in parallel, and the on-disk cache.

Every clip is described by a `ClipSpec` whose fingerprint covers everything that decides its
samples; a clip is rendered again only when its fingerprint changes or its file is missing.
Train and test pools never share a file.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from sake.data.schema import ATTRIBUTES, LABELS
from sake.data.synth import animals, auditory, sentences, speech
from sake.data.synth.scales import SynthScale

GENERATOR_VERSION = 1
SAMPLE_RATE = 16000
TASK_TRACK_PREFIX = "AuditoryTasks"
MANIFEST_NAME = "manifest.json"

LANGUAGE_CODES = {
    "English": "en",
    "German": "de",
    "Spanish": "es",
    "French": "fr",
    "Italian": "it",
    "Chinese": "zh",
    "Japanese": "ja",
    "Korean": "ko",
}


@dataclass(frozen=True)
class ClipSpec:
    """Everything that decides one clip's samples, plus where it lives."""

    track: str
    file: str
    label: str
    split: str
    seed: int
    language: str | None = None
    gender: str | None = None
    emotion: str | None = None
    sentence_index: int | None = None

    @property
    def relative_path(self) -> str:
        return f"{self.track}/{self.file}"

    @property
    def is_speech(self) -> bool:
        return self.language is not None

    def fingerprint(self) -> str:
        payload = json.dumps({"v": GENERATOR_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def stable_seed(*parts: object) -> int:
    """A 32-bit seed from strings and ints that does not depend on Python's hash salt."""
    words = [zlib.crc32(str(p).encode()) for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1)[0])


def task_track(task_name: str) -> str:
    return f"{TASK_TRACK_PREFIX}/{task_name}"


def _speech_spec(
    track: str, label: str, split: str, index: int, seed: int, rng: np.random.Generator
) -> ClipSpec:
    """Speech clips carry all three speech attributes; the track decides which one varies."""
    language = label if track == "Language" else "English"
    gender = label if track == "Gender" else str(rng.choice(LABELS["Gender"]))
    emotion = label if track == "Emotion" else "neutral"
    n_sentences = len(sentences.SENTENCES[language])
    prefix = LANGUAGE_CODES[language] if track == "Language" else label
    return ClipSpec(
        track=track,
        file=f"{prefix}_{split}_{index:04d}.wav",
        label=label,
        split=split,
        seed=stable_seed(seed, track, label, split, index),
        language=language,
        gender=gender,
        emotion=emotion,
        sentence_index=int(rng.integers(n_sentences)),
    )


def plan_pools(scale: SynthScale, seed: int) -> dict[str, dict[tuple[str, str], list[ClipSpec]]]:
    """Per split, the clips of every (track, label): attribute tracks and auditory tasks."""
    pools: dict[str, dict[tuple[str, str], list[ClipSpec]]] = {}
    for split in ("train", "test"):
        rng = np.random.default_rng(stable_seed(seed, "pools", split))
        split_pools: dict[tuple[str, str], list[ClipSpec]] = {}
        for attribute in ATTRIBUTES:
            for label in LABELS[attribute]:
                split_pools[(attribute, label)] = [
                    _attribute_clip(attribute, label, split, i, seed, rng)
                    for i in range(scale.clips_per_label(split))
                ]
        for task in auditory.AUDITORY_TASKS:
            track = task_track(task.name)
            for label in task.labels:
                split_pools[(track, label)] = [
                    ClipSpec(
                        track=track,
                        file=f"{task.name.lower()}_{_slug(label)}_{split}_{i:04d}.wav",
                        label=label,
                        split=split,
                        seed=stable_seed(seed, track, label, split, i),
                    )
                    for i in range(scale.task_clips_per_label(split))
                ]
        pools[split] = split_pools
    return pools


def _attribute_clip(
    attribute: str, label: str, split: str, index: int, seed: int, rng: np.random.Generator
) -> ClipSpec:
    if attribute == "Animal":
        return ClipSpec(
            track="Animal",
            file=f"{label}_{split}_{index:04d}.wav",
            label=label,
            split=split,
            seed=stable_seed(seed, "Animal", label, split, index),
        )
    return _speech_spec(attribute, label, split, index, seed, rng)


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-")


@dataclass(frozen=True)
class RenderedClip:
    """What the manifest records about a clip beside its fingerprint."""

    relative_path: str
    fingerprint: str
    duration: float
    transcript: str | None
    words: tuple[tuple[str, float, float], ...]


def render_clip(spec: ClipSpec) -> tuple[np.ndarray, str | None, tuple]:
    """Samples (float32, 16 kHz), transcript and word timestamps of one clip."""
    rng = np.random.default_rng(spec.seed)
    if spec.is_speech:
        assert spec.language is not None and spec.gender is not None
        assert spec.emotion is not None and spec.sentence_index is not None
        speaker = speech.sample_speaker(spec.gender, rng)
        text = sentences.SENTENCES[spec.language][spec.sentence_index]
        clip = speech.render_speech(text, spec.language, speaker, spec.emotion, rng)
        return clip.audio, clip.transcript, tuple(clip.words)
    if spec.track == "Animal":
        return animals.render_animal(spec.label, rng), None, ()
    task = auditory.task_by_name(spec.track.removeprefix(f"{TASK_TRACK_PREFIX}/"))
    return task.render(spec.label, rng), None, ()


def _render_to_disk(job: tuple[ClipSpec, str]) -> RenderedClip:
    spec, audio_root = job
    audio, transcript, words = render_clip(spec)
    path = Path(audio_root) / spec.relative_path
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.clip(audio, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16")
    return RenderedClip(
        relative_path=spec.relative_path,
        fingerprint=spec.fingerprint(),
        duration=round(len(audio) / SAMPLE_RATE, 4),
        transcript=transcript,
        words=tuple((w, round(s, 3), round(e, 3)) for w, s, e in words),
    )


def read_manifest(audio_root: Path) -> dict[str, dict]:
    path = audio_root / MANIFEST_NAME
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def manifest_entry(spec: ClipSpec, rendered: RenderedClip) -> dict:
    return {
        "track": spec.track,
        "label": spec.label,
        "split": spec.split,
        "language": spec.language,
        "gender": spec.gender,
        "emotion": spec.emotion,
        "transcript": rendered.transcript,
        "words": [list(w) for w in rendered.words],
        "duration": rendered.duration,
        "fingerprint": rendered.fingerprint,
    }


def render_pools(
    specs: Sequence[ClipSpec], audio_root: Path, *, workers: int = 2, progress: bool = True
) -> dict[str, dict]:
    """Render every clip whose cached copy is missing or stale; return the full manifest."""
    audio_root.mkdir(parents=True, exist_ok=True)
    cached = read_manifest(audio_root)
    todo = [s for s in specs if not _is_cached(s, cached.get(s.relative_path), audio_root)]
    rendered = _render_many(todo, audio_root, workers=workers, progress=progress)
    fresh = {r.relative_path: r for r in rendered}
    manifest = {}
    for spec in sorted(specs, key=lambda s: s.relative_path):
        if spec.relative_path in fresh:
            manifest[spec.relative_path] = manifest_entry(spec, fresh[spec.relative_path])
        else:
            manifest[spec.relative_path] = cached[spec.relative_path]
    text = json.dumps(manifest, indent=1, ensure_ascii=False, sort_keys=True)
    (audio_root / MANIFEST_NAME).write_text(text + "\n", encoding="utf-8")
    return manifest


def _is_cached(spec: ClipSpec, entry: dict | None, audio_root: Path) -> bool:
    return (
        entry is not None
        and entry.get("fingerprint") == spec.fingerprint()
        and (audio_root / spec.relative_path).is_file()
    )


def _render_many(
    specs: Sequence[ClipSpec], audio_root: Path, *, workers: int, progress: bool
) -> list[RenderedClip]:
    jobs = [(spec, str(audio_root)) for spec in specs]
    if not jobs:
        return []
    bar = tqdm(total=len(jobs), desc="rendering audio", unit="clip", disable=not progress)
    results: list[RenderedClip] = []
    if workers <= 1:
        for job in jobs:
            results.append(_render_to_disk(job))
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for result in pool.map(_render_to_disk, jobs, chunksize=16):
                results.append(result)
                bar.update()
    bar.close()
    return results


def all_specs(pools: dict[str, dict[tuple[str, str], list[ClipSpec]]]) -> Iterable[ClipSpec]:
    for split_pools in pools.values():
        for clips in split_pools.values():
            yield from clips

"""Preservation corpora and MEMIT's key statistics, cached on disk.

Methods that must leave unrelated behaviour alone (UnKE, WISE, MEMIT) draw their preservation
inputs from the training split: every distinct probe of the training cases, audio and text
alike, so that what is preserved covers both modalities the benchmark's locality probes ask
about.

MEMIT needs, for every edited layer, the second moment C = E[k k^T] of the keys (the inputs of
the edited projection) over a preservation corpus. Computing it takes a pass over the corpus,
so it is cached under `<root>/<model fingerprint>/<role>-<corpus id>.pt`: a different model,
layer or corpus never reuses another's statistics.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from sake.data.schema import EditCase, Probe, ProbeKind
from sake.methods.hooks import ModuleRecorder, run_recording
from sake.models.base import LALM

log = logging.getLogger(__name__)


def preservation_probes(train_cases: Iterable[EditCase]) -> list[Probe]:
    """Every distinct probe (by question and audio) of the training cases, in a stable order."""
    distinct: dict[tuple[str, str], Probe] = {}
    for case in train_cases:
        for probe in case.probes():
            key = (probe.question, "" if probe.audio_path is None else str(probe.audio_path))
            distinct.setdefault(key, probe)
    return [distinct[key] for key in sorted(distinct)]


@dataclass(frozen=True)
class PreservationPools:
    """What preservation prompts are drawn from: the training split's distinct text-only
    probes, and per attribute the distinct audio probes that ask about it (its cases'
    reliability and generality probes)."""

    text: tuple[Probe, ...] = ()
    audio: Mapping[str, tuple[Probe, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, train_cases: Sequence[EditCase]) -> PreservationPools:
        text: dict[str, Probe] = {}
        audio: dict[str, dict[tuple[str, str], Probe]] = {}
        for case in train_cases:
            for probe in case.probes():
                if probe.audio_path is None:
                    text.setdefault(probe.question, probe)
                elif probe.kind in (ProbeKind.RELIABILITY, ProbeKind.GENERALITY):
                    key = (probe.question, str(probe.audio_path))
                    audio.setdefault(case.attribute, {}).setdefault(key, probe)
        return cls(
            tuple(text[key] for key in sorted(text)),
            {a: tuple(found[k] for k in sorted(found)) for a, found in sorted(audio.items())},
        )

    @classmethod
    def for_editor(
        cls, train_cases: Sequence[EditCase], name: str, text: int, audio: int
    ) -> PreservationPools:
        """The pools of editor `name`, which draws `text` + `audio` preservation prompts per
        edit; a dataset without training cases to draw them from is refused, saying what to do."""
        pools = cls.of(train_cases)
        if text + audio and pools.empty:
            raise ValueError(
                f"{name} draws preservation prompts from the training split, but the dataset "
                "has no training cases; use a dataset with a train split, or "
                "text_preservation=0 audio_preservation=0"
            )
        return pools

    @property
    def empty(self) -> bool:
        return not self.text and not self.audio

    def draw(
        self, case: EditCase, text: int, audio: int, seed: int
    ) -> tuple[list[Probe], list[Probe]]:
        """`text` text prompts and `audio` audio prompts about the other attributes, drawn by
        a generator of the seed and the case, so that the order of edits does not matter."""
        rng = case_rng(seed, case.case_id)
        others = [p for a, pool in self.audio.items() if a != case.attribute for p in pool]
        return sample_probes(self.text, text, rng), sample_probes(others, audio, rng)


def sample_probes(pool: Sequence[Probe], size: int, rng: np.random.Generator) -> list[Probe]:
    """`size` probes of `pool` without replacement (all of them when it is smaller)."""
    count = min(size, len(pool))
    return [pool[i] for i in rng.choice(len(pool), count, replace=False)] if count else []


def case_rng(seed: int, case_id: str) -> np.random.Generator:
    """A generator that depends on the seed and the case only, not on the order of edits."""
    digest = hashlib.sha256(f"{seed}:{case_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def corpus_id(probes: Sequence[Probe]) -> str:
    """A short hash of the corpus as a set: questions and audio files (path, size, mtime).

    Statistics are sums over the corpus, so the order of the probes does not enter the id.
    """
    identity = []
    for probe in probes:
        audio = None
        if probe.audio_path is not None:
            stat = Path(probe.audio_path).stat()
            audio = [str(Path(probe.audio_path).resolve()), stat.st_size, stat.st_mtime_ns]
        identity.append([probe.question, audio])
    identity.sort(key=json.dumps)
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SecondMoment:
    """E[k k^T] over `count` keys, in float32."""

    matrix: Tensor
    count: int


def key_second_moments(
    lalm: LALM, roles: Sequence[str], probes: Sequence[Probe], batch_size: int
) -> dict[str, SecondMoment]:
    """Second moments of the inputs of every role's module over every real prompt token.

    Padding positions are left out by the batch's own attention mask; sums run in float64.
    """
    modules = {role: lalm.modules.resolve(role).module for role in roles}
    sums = {role: torch.zeros(()) for role in roles}
    count = 0
    for start in range(0, len(probes), batch_size):
        batch = lalm.prepare(probes[start : start + batch_size])
        recorders = {role: ModuleRecorder(module) for role, module in modules.items()}
        run_recording(lambda b=batch: lalm.next_token_logits(b), *recorders.values())
        real = batch.attention_mask.bool()
        for role, recorder in recorders.items():
            keys = recorder.last.hidden_states[real].double().cpu()
            sums[role] = sums[role] + keys.T @ keys
        count += int(real.sum())
    return {role: SecondMoment((total / count).float(), count) for role, total in sums.items()}


class SecondMomentCache:
    """Key second moments per (model fingerprint, role, corpus), on disk when `root` is set."""

    def __init__(self, root: Path | str | None) -> None:
        self.root = None if root is None else Path(root)
        self.computed = 0
        self.loaded = 0

    def path(self, fingerprint: str, role: str, corpus: str) -> Path | None:
        if self.root is None:
            return None
        safe_role = "".join(c if c.isalnum() or c in "-_." else "_" for c in role)
        return self.root / fingerprint / f"{safe_role}-{corpus}.pt"

    def get(
        self,
        lalm: LALM,
        fingerprint: str,
        roles: Sequence[str],
        probes: Sequence[Probe],
        batch_size: int,
    ) -> dict[str, SecondMoment]:
        """The statistics of every role: loaded when cached, otherwise computed and stored."""
        corpus = corpus_id(probes)
        found = {role: self._load(self.path(fingerprint, role, corpus)) for role in roles}
        missing = [role for role, moment in found.items() if moment is None]
        if missing:
            log.info("key statistics: %d probes through %s", len(probes), ", ".join(missing))
            fresh = key_second_moments(lalm, missing, probes, batch_size)
            self.computed += len(fresh)
            for role, moment in fresh.items():
                self._store(self.path(fingerprint, role, corpus), moment)
            found.update(fresh)
        self.loaded += len(roles) - len(missing)
        return {role: moment for role, moment in found.items() if moment is not None}

    @staticmethod
    def _load(path: Path | None) -> SecondMoment | None:
        if path is None or not path.is_file():
            return None
        stored: Mapping[str, object] = torch.load(path, map_location="cpu", weights_only=True)
        return SecondMoment(stored["matrix"], int(stored["count"]))

    @staticmethod
    def _store(path: Path | None, moment: SecondMoment) -> None:
        """Write through a temporary file, so that jobs sharing the cache never read half."""
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save({"matrix": moment.matrix, "count": moment.count}, tmp)
        os.replace(tmp, path)

"""Datasets as the entry points see them: a SAKE-format directory, optionally generated."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from sake.data.readers import SakeRelease, load_release
from sake.data.schema import EditCase, Sequence
from sake.data.synth.build import build_synthetic_release, is_built
from sake.data.synth.scales import SynthScale, resolve_scale

log = logging.getLogger(__name__)


class SakeDataset:
    """A SAKE-format release directory (`root/data/...`, audio under `root/audio`)."""

    def __init__(
        self,
        name: str,
        root: str | Path,
        audio_root: str | Path | None = None,
        split: str = "test",
        limit: int | None = None,
    ) -> None:
        self.name = name
        self.root = Path(root)
        self.audio_root = Path(audio_root) if audio_root else self.root / "audio"
        self.split = split
        if limit is not None and int(limit) < 1:
            raise ValueError(
                f"dataset.limit={limit} leaves no case to edit; give a positive number of "
                "cases, or dataset.limit=null for all of them"
            )
        self.limit = limit

    def prepare(self) -> None:
        """Make the data available; a real release must already be on disk."""
        if not (self.root / "data").is_dir():
            raise FileNotFoundError(
                f"no SAKE release at {self.root} (expected {self.root / 'data'}); "
                "set dataset.root=/path/to/SAKE"
            )

    @functools.cached_property
    def release(self) -> SakeRelease:
        self.prepare()
        return load_release(self.root, audio_root=self.audio_root)

    def cases(self, split: str | None = None) -> list[EditCase]:
        """The cases of `split` (default: the configured one), cut to `limit` if set.

        A limit takes the first cases of every attribute in turn, so that a quick run on a
        split ordered by attribute still covers all four.
        """
        cases = self.release.splits[split or self.split]
        return cases if self.limit is None else balanced_head(cases, int(self.limit))

    def sequences(self) -> list[Sequence]:
        sequences = self.release.sequences
        return sequences if self.limit is None else sequences[: max(1, int(self.limit) // 10)]


def balanced_head(cases: list[EditCase], limit: int) -> list[EditCase]:
    """The first `limit` cases taken round-robin over attributes, each in its own order."""
    by_attribute: dict[str, list[EditCase]] = {}
    for case in cases:
        by_attribute.setdefault(case.attribute, []).append(case)
    queues = list(by_attribute.values())
    picked: list[EditCase] = []
    for rank in range(max((len(q) for q in queues), default=0)):
        picked.extend(q[rank] for q in queues if rank < len(q))
        if len(picked) >= limit:
            break
    return picked[:limit]


class SyntheticSakeDataset(SakeDataset):
    """The project's synthetic corpus, generated into `root` on first use and then reused."""

    def __init__(
        self,
        name: str,
        root: str | Path,
        scale: str = "default",
        seed: int = 0,
        audio_root: str | Path | None = None,
        split: str = "test",
        limit: int | None = None,
        workers: int = 2,
        **scale_overrides: int,
    ) -> None:
        super().__init__(name, root, audio_root, split, limit)
        self.scale: SynthScale = resolve_scale(scale, **scale_overrides)
        self.seed = int(seed)
        self.workers = int(workers)

    def prepare(self) -> None:
        if is_built(self.root, self.scale, self.seed):
            return
        log.info("generating the synthetic corpus at %s (seed %d)", self.root, self.seed)
        build_synthetic_release(self.root, self.scale, self.seed, workers=self.workers)

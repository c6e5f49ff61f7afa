"""Build a synthetic SAKE-format release directory (audio under audio/, JSON under data/), or
a clip pool alone (audio and its manifest, no cases) for pretraining an audio encoder."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from sake.data.synth.corpus import SyntheticCorpus, build_corpus
from sake.data.synth.pools import GENERATOR_VERSION, all_specs, plan_pools, render_pools
from sake.data.synth.scales import SynthScale
from sake.data.writers import write_release

STAMP_NAME = "corpus.json"


def corpus_stamp(scale: SynthScale, seed: int) -> dict:
    """What identifies a generated corpus; a directory whose stamp differs is rebuilt."""
    return {"generator_version": GENERATOR_VERSION, "seed": seed, "scale": asdict(scale)}


def is_built(out: Path, scale: SynthScale, seed: int) -> bool:
    stamp = Path(out) / STAMP_NAME
    if not stamp.is_file():
        return False
    return json.loads(stamp.read_text(encoding="utf-8")) == corpus_stamp(scale, seed)


def build_synthetic_release(
    out: Path, scale: SynthScale, seed: int, *, workers: int = 2, progress: bool = True
) -> SyntheticCorpus:
    """Generate (or refresh) the corpus at `out`; clips already rendered are reused.

    The stamp is written last, so an interrupted build is never mistaken for a finished one.
    """
    out = Path(out)
    stamp = out / STAMP_NAME
    stamp.unlink(missing_ok=True)
    pools = plan_pools(scale, seed)
    corpus = build_corpus(scale, seed, pools)
    render_pools(list(all_specs(pools)), out / "audio", workers=workers, progress=progress)
    write_release(corpus.splits, corpus.sequences, out)
    stamp.write_text(json.dumps(corpus_stamp(scale, seed), indent=2) + "\n", encoding="utf-8")
    return corpus


def build_clip_pool(
    out: Path,
    scale: SynthScale,
    seed: int,
    *,
    split: str = "train",
    workers: int = 2,
    progress: bool = True,
) -> Path:
    """Render the clips of one split of a corpus plan at `out` (no cases); return `out`.

    An encoder learns from more clips than the cases need: a pool is the generator's clip plan
    at a larger scale. Clips already rendered with the same specification are reused.
    """
    out = Path(out)
    pools = plan_pools(scale, seed)
    if split not in pools:
        raise ValueError(f"unknown split {split!r}; a clip plan has {sorted(pools)}")
    specs = list(all_specs({split: pools[split]}))
    render_pools(specs, out, workers=workers, progress=progress)
    return out

"""`python -m sake.bench.generation`: how fast one batch of probes is answered, in what memory.

    python -m sake.bench.generation [--batch 32] [--repeats 5] [--model desta_tiny]
                                    [--dataset sake_synth] [--split test] [--threads N]
                                    [HYDRA_OVERRIDE ...]

A batch of probes spread over the split (every kind of probe, every attribute) is answered
greedily with the evaluation settings' `max_new_tokens`, `repeats` times each way:

- cold: the model's audio caches are emptied first, so the time covers decoding the clips,
  their log-mel features, the encoder, the connector and generation, as a fresh batch costs;
- warm: log-mel features are kept from the previous repeat (as within a run), encoder and
  connector run again, then generation.

It prints the median and fastest seconds per batch each way, the model's size and the peak
resident memory of the process (which includes the interpreter and the libraries); the last
line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from time import perf_counter

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from sake.bench.cli import spread
from sake.bench.measure import peak_rss_bytes
from sake.bench.reference import forget_audio
from sake.data.schema import Probe
from sake.models.base import LALM
from sake.runner import eval_settings
from sake.utils.resolvers import project_root, register_resolvers

GIB = 1024**3


@dataclass(frozen=True)
class GenerationTiming:
    """Seconds per batch over the repeats, cold and warm, and the process's peak memory."""

    batch: int
    max_new_tokens: int
    cold_median_s: float
    cold_best_s: float
    warm_median_s: float
    warm_best_s: float
    parameters: int
    peak_rss_gib: float


def time_generation(
    lalm: LALM, probes: Sequence[Probe], *, max_new_tokens: int, repeats: int
) -> GenerationTiming:
    """Answer `probes` as one batch, `repeats` times cold and `repeats` times warm.

    One untimed batch first takes one-off start-up costs (allocator, kernel choice) out of
    the first timed repeat.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")

    def answer() -> list[str]:
        return lalm.generate(lalm.prepare(probes), max_new_tokens)

    answer()
    cold = [_timed(answer, before=lambda: forget_audio(lalm)) for _ in range(repeats)]
    warm = [_timed(answer) for _ in range(repeats)]
    return GenerationTiming(
        batch=len(probes),
        max_new_tokens=max_new_tokens,
        cold_median_s=statistics.median(cold),
        cold_best_s=min(cold),
        warm_median_s=statistics.median(warm),
        warm_best_s=min(warm),
        parameters=sum(p.numel() for p in lalm.model.parameters()),
        peak_rss_gib=peak_rss_bytes() / GIB,
    )


def _timed(work: Callable[[], object], before: Callable[[], None] | None = None) -> float:
    if before is not None:
        before()
    started = perf_counter()
    work()
    return perf_counter() - started


def report(timing: GenerationTiming) -> list[str]:
    """Readable lines, then the JSON line."""
    return [
        f"batch of {timing.batch} probes, max_new_tokens {timing.max_new_tokens}, "
        f"{timing.parameters / 1e6:.1f} M parameters",
        f"cold (decode, features, encoder, connector, generation): median "
        f"{timing.cold_median_s:.3f} s, best {timing.cold_best_s:.3f} s",
        f"warm (features cached): median {timing.warm_median_s:.3f} s, "
        f"best {timing.warm_best_s:.3f} s",
        f"peak RSS of the process: {timing.peak_rss_gib:.2f} GiB",
        json.dumps({key: _rounded(value) for key, value in asdict(timing).items()}),
    ]


def _rounded(value: float | int) -> float | int:
    return round(value, 4) if isinstance(value, float) else value


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sake.bench.generation",
        description="Time one batch of probes answered greedily; print its peak memory.",
    )
    parser.add_argument("--batch", type=int, default=32, help="probes per batch")
    parser.add_argument("--repeats", type=int, default=5, help="timed batches each way")
    parser.add_argument("--model", default="desta_tiny", help="a config in configs/model")
    parser.add_argument("--dataset", default="sake_synth", help="a config in configs/dataset")
    parser.add_argument("--split", default="test", help="the split the probes come from")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of configs/edit.yaml")
    return parser.parse_args(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    register_resolvers()
    config_dir = project_root() / "configs"
    overrides = [f"model={args.model}", f"dataset={args.dataset}", "logger=none", *args.overrides]
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        cfg = compose("edit", overrides=overrides)
    dataset = instantiate(cfg.dataset)
    probes = [probe for case in dataset.cases(args.split) for probe in case.probes()]
    chosen = spread(probes, args.batch, "probes", "--batch")
    lalm = instantiate(cfg.model.load)
    timing = time_generation(
        lalm,
        chosen,
        max_new_tokens=eval_settings(cfg.eval).max_new_tokens,
        repeats=args.repeats,
    )
    print(
        f"model {cfg.model.name}, {args.split} split of {cfg.dataset.name}, "
        f"torch threads {torch.get_num_threads()}"
    )
    for line in report(timing):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

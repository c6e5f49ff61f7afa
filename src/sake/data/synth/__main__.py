"""`python -m sake.data.synth out=DIR [scale=default|small|tiny] [seed=0] [workers=2] [FIELD=N]`.

FIELD is any size of `SynthScale` (e.g. `test_cases_per_attribute=50`).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from sake.data.synth.build import build_synthetic_release
from sake.data.synth.scales import resolve_scale

USAGE = __doc__


def parse_assignments(argv: list[str]) -> dict[str, str]:
    pairs = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise SystemExit(f"expected KEY=VALUE, got {arg!r}\n{USAGE}")
        pairs[key] = value
    return pairs


def main(argv: list[str] | None = None) -> int:
    args = parse_assignments(sys.argv[1:] if argv is None else argv)
    if "out" not in args:
        raise SystemExit(f"missing out=DIR\n{USAGE}")
    out = Path(args.pop("out"))
    seed = int(args.pop("seed", "0"))
    workers = int(args.pop("workers", "2"))
    scale = resolve_scale(args.pop("scale", "default"), **{k: int(v) for k, v in args.items()})
    started = time.perf_counter()
    corpus = build_synthetic_release(out, scale, seed, workers=workers)
    counts = {split: len(cases) for split, cases in corpus.splits.items()}
    elapsed = time.perf_counter() - started
    print(f"wrote {out} in {elapsed:.1f} s: {counts}, {len(corpus.sequences)} sequences")
    return 0


if __name__ == "__main__":
    sys.exit(main())

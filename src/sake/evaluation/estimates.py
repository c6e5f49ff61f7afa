"""Proportions with the number of probes behind them, and their Wilson 95% intervals."""

from __future__ import annotations

import math
from dataclasses import dataclass

Z_95 = 1.959963984540054


def wilson_interval(p: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a proportion `p` observed over `n` trials; NaNs for n = 0."""
    if n <= 0 or math.isnan(p):
        return math.nan, math.nan
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z * math.sqrt(max(p * (1 - p), 0.0) / n + z2 / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Estimate:
    """A proportion and the number of probes behind it."""

    value: float
    n: int

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.value, self.n)

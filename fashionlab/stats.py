"""Is a difference between two classifiers real? Small, exact statistics for run comparisons.

Two models scored on the same 10,000 test images are paired samples: McNemar's test looks only
at the images exactly one of them gets right, which is far more sensitive than comparing two
independent accuracies. The interval on one accuracy is Wilson's score interval: unlike the
normal approximation it stays inside [0, 1] and keeps its coverage near 0 or 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054  # two-sided 95% normal quantile


@dataclass(frozen=True)
class McNemar:
    """Discordant pairs (only_a: A right and B wrong; only_b: the reverse) and the exact p."""

    only_a: int
    only_b: int
    p_value: float

    @property
    def p_text(self) -> str:
        """The p-value as printed: below float's range it is "< 1e-300", not a false 0."""
        return "< 1e-300" if self.p_value == 0 else f"{self.p_value:.3g}"


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> McNemar:
    """Exact two-sided McNemar test on per-image correctness of two models.

    Under "no difference" each discordant image is a fair coin flip, so the p-value is the
    two-sided binomial tail: min(1, 2 * P[X <= min(b, c)]) with X ~ Bin(b + c, 1/2).
    """
    from scipy.stats import binom

    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"correctness arrays differ in shape: {a.shape} vs {b.shape}")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n = only_a + only_b
    p = 1.0 if n == 0 else min(1.0, 2.0 * float(binom.cdf(min(only_a, only_b), n, 0.5)))
    return McNemar(only_a, only_b, p)


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion (95% by default); (nan, nan) when n = 0."""
    if n <= 0:
        return math.nan, math.nan
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; nan for fewer than two values)."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else math.nan

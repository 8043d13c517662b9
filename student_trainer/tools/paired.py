"""Paired per-seed differences with Student-t confidence intervals.

Two arms run with the same seeds share the data order, the initial weights and
the augmentation of every image, so most of the seed-to-seed noise cancels in
their difference; the interval is on that difference, not on pooled spreads.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

# Two-sided 97.5 % quantiles of Student's t by degrees of freedom (1..30); the normal one beyond.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def t975(df: int) -> float:
    if df < 1:
        raise ValueError("a confidence interval needs at least two pairs")
    return _T975[df - 1] if df <= len(_T975) else 1.960


@dataclass(frozen=True)
class PairedDifference:
    diffs: tuple[float, ...]      # a - b, seed by seed
    mean: float
    low: float                    # 95 % confidence interval of the mean difference
    high: float

    @property
    def verdict(self) -> str:
        """'higher', 'lower' or 'no detectable difference' (the interval holds 0)."""
        if self.low > 0:
            return "higher"
        if self.high < 0:
            return "lower"
        return "no detectable difference"

    def __str__(self) -> str:
        return f"{self.mean:+.2f} [{self.low:+.2f}, {self.high:+.2f}]"


def paired_difference(a: list[float], b: list[float]) -> PairedDifference:
    """Mean of a - b over pairs, with its 95 % interval (t with n - 1 degrees of freedom)."""
    if len(a) != len(b):
        raise ValueError(f"paired arms need the same seeds: {len(a)} values against {len(b)}")
    diffs = tuple(x - y for x, y in zip(a, b))
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return PairedDifference(diffs, mean, float("-inf"), float("inf"))
    half = t975(len(diffs) - 1) * statistics.stdev(diffs) / len(diffs) ** 0.5
    return PairedDifference(diffs, mean, mean - half, mean + half)

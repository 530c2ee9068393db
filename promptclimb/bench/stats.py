"""The statistics the search benchmark reports: means, 95% intervals, paired wins/ties/losses.

Plain Python on purpose (no SciPy for a table of Student's t quantiles).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

# Student's t, two-sided 95% (the 0.975 quantile), by degrees of freedom 1..30; beyond, the normal's.
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t975(df: int) -> float:
    """The two-sided 95% critical value of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        return math.inf
    return _T975[df - 1] if df <= len(_T975) else 1.960


@dataclass(frozen=True)
class Paired:
    """A paired comparison of ``a`` against ``b`` over the same splits (differences a - b)."""

    mean: float
    low: float  # the 95% interval of the mean difference (t-interval)
    high: float
    wins: int
    ties: int
    losses: int
    worst: float  # the most negative difference

    def interval(self, scale: float = 100.0, digits: int = 1) -> str:
        """``+1.2 [+0.3, +2.1]`` in points."""
        f = f"{{:+.{digits}f}}"
        return f"{f.format(self.mean * scale)} [{f.format(self.low * scale)}, {f.format(self.high * scale)}]"


def paired(a: Sequence[float], b: Sequence[float], tie: float = 1e-9) -> Paired:
    """Mean difference ``a - b`` with its 95% t-interval, and wins/ties/losses of ``a``."""
    if len(a) != len(b) or not a:
        raise ValueError("paired comparison needs two equally long, non-empty sequences")
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    mean = statistics.fmean(diffs)
    half = (
        t975(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.inf
    )
    return Paired(
        mean=mean,
        low=mean - half,
        high=mean + half,
        wins=sum(d > tie for d in diffs),
        ties=sum(abs(d) <= tie for d in diffs),
        losses=sum(d < -tie for d in diffs),
        worst=min(diffs),
    )


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

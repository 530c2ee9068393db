"""Noise-aware comparison of two templates on the same few images: a seeded paired bootstrap.

On a 1-shot split of a 10-class set a template that gets one more image right than another is
not better in any sense a test split would confirm. Comparing the per-image results *paired*
(the same images under both templates) asks the sharper question: how sure are we that the mean
per-image difference is above 0? :func:`difference_interval` resamples the images with
replacement ``RESAMPLES`` times -- the same resamples for every pair of a split, drawn from a seed,
so the verdicts are deterministic and replay identically -- and reads the quantiles of the mean
difference. Only the images where the two templates differ move the correctness difference, so a
comparison costs ``RESAMPLES`` x (differing images), not x (all images).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from promptclimb.common.per_image import unpack_correct, unpack_loss

RESAMPLES = 1000
ALPHA = 0.05  # one-sided: replace only when the 5% quantile of the mean difference is above 0


@dataclass(frozen=True, eq=False)
class PerImage:
    """One template's results on each image of a split, in the split's image order."""

    correct: npt.NDArray[np.bool_]
    loss: npt.NDArray[np.float64] | None = None  # None when the scorer sent none

    @classmethod
    def decode(cls, correct: bytes, loss: bytes, total: int) -> PerImage | None:
        """From the wire/journal form (:mod:`promptclimb.common.per_image`); None when absent or malformed."""
        if not correct or total <= 0:
            return None
        try:
            bits = unpack_correct(correct, total)
            losses = unpack_loss(loss) if loss else None
        except ValueError:
            return None
        return cls(bits, losses if losses is not None and len(losses) == total else None)

    def __len__(self) -> int:
        return len(self.correct)


@lru_cache(maxsize=8)
def _weights(n: int, seed: int) -> npt.NDArray[np.int64]:
    """(RESAMPLES, n) image multiplicities of the bootstrap resamples of ``n`` paired images."""
    digest = hashlib.sha256(f"paired-bootstrap/{seed}/{n}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "big"))
    return rng.multinomial(n, np.full(n, 1.0 / n), size=RESAMPLES)


def difference_interval(
    diff: npt.NDArray[np.floating] | npt.NDArray[np.integer], seed: int
) -> tuple[float, float]:
    """The (ALPHA, 1 - ALPHA) bootstrap quantiles of the mean of the paired differences ``diff``."""
    n = len(diff)
    moved = np.flatnonzero(diff)
    if n == 0 or len(moved) == 0:
        return 0.0, 0.0
    means = np.sort(_weights(n, seed)[:, moved] @ np.asarray(diff, dtype=np.float64)[moved]) / n
    k = int(ALPHA * RESAMPLES)
    return float(means[k]), float(means[RESAMPLES - 1 - k])


def confidently_better(candidate: PerImage, incumbent: PerImage, seed: int) -> bool:
    """Whether ``candidate`` wins by more than the bootstrap margin.

    On correctness: the lower quantile of the mean per-image difference is above 0. When both get
    exactly the same images right, on the per-image losses the same way (lower is better).
    """
    if len(candidate) != len(incumbent):
        return False  # not the same images: no paired comparison
    diff = candidate.correct.astype(np.int8) - incumbent.correct.astype(np.int8)
    if diff.any():
        return difference_interval(diff, seed)[0] > 0
    if candidate.loss is None or incumbent.loss is None:
        return False
    return difference_interval(incumbent.loss - candidate.loss, seed)[0] > 0


def tied(other: PerImage, winner: PerImage, seed: int) -> bool:
    """Whether the bootstrap interval of ``other``'s mean correctness difference to ``winner`` contains 0."""
    if len(other) != len(winner):
        return False
    low, high = difference_interval(other.correct.astype(np.int8) - winner.correct.astype(np.int8), seed)
    return low <= 0.0 <= high

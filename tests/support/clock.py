"""A clock for tests of time-dependent logic: it moves only when the test says."""

from __future__ import annotations


class ManualClock:
    """A wall clock (epoch seconds) that moves only when told; pass it where ``time.time`` goes."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self.t += seconds

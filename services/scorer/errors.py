"""The scorer's domain errors; the servicer maps each to one gRPC status code."""

from __future__ import annotations

from collections.abc import Sequence


class ScorerError(Exception):
    """Base of the engine's request errors."""


class NotReady(ScorerError):
    """The model or the features are still loading (UNAVAILABLE)."""


class DatasetNotReady(NotReady):
    """A registered dataset's image features are still being computed (UNAVAILABLE, retry)."""

    def __init__(self, dataset: str, done: int, total: int) -> None:
        super().__init__(f"dataset {dataset!r} is not ready: image features {done} of {total} computed")
        self.dataset, self.done, self.total = dataset, done, total


class DatasetFailed(ScorerError):
    """Computing a dataset's features failed (FAILED_PRECONDITION); registering it again retries."""

    def __init__(self, dataset: str, reason: str) -> None:
        super().__init__(f"dataset {dataset!r}: {reason}; register it again to retry")
        self.dataset = dataset


class UnknownDataset(ScorerError):
    """No dataset with that id (NOT_FOUND)."""

    def __init__(self, dataset: str) -> None:
        super().__init__(f"dataset {dataset!r} is not registered")
        self.dataset = dataset


class UnknownSplit(ScorerError):
    """The dataset has no such split (NOT_FOUND)."""

    def __init__(self, dataset: str, split: str, known: Sequence[str]) -> None:
        super().__init__(f"dataset {dataset!r} has no split {split!r} (has: {', '.join(known)})")
        self.dataset, self.split = dataset, split


class BadRequest(ScorerError):
    """The request as a whole is invalid (INVALID_ARGUMENT); ``field`` names the culprit."""

    def __init__(self, message: str, field: str, violations: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.field = field
        self.violations = list(violations) or [(field, message)]


class QueueFull(ScorerError):
    """Too many templates are waiting (RESOURCE_EXHAUSTED); retry after ``retry_after`` seconds."""

    def __init__(self, waiting: int, limit: int, retry_after: float) -> None:
        super().__init__(f"scorer queue is full ({waiting} of {limit} templates waiting)")
        self.waiting, self.limit, self.retry_after = waiting, limit, retry_after


class DatasetConflict(ScorerError):
    """A dataset id is already registered from another source (ALREADY_EXISTS)."""


class SourceNotAllowed(ScorerError):
    """A RegisterDataset path lies outside the configured register roots (PERMISSION_DENIED)."""


class TooManyDatasets(ScorerError):
    """The registry is at ``max_datasets`` (RESOURCE_EXHAUSTED)."""

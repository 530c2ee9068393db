"""Per-running-search metrics: one set of series for each search running on this replica.

The fleet metrics (:mod:`services.coordinator.metrics`) carry no search id; these do, and stay
bounded because they exist only while a search runs here: :class:`RunningSearches` reads the
runner's ``live`` map at every scrape, so a search's series appear when it starts running on this
replica and are gone from the next scrape once it ends, is cancelled, or moves to another replica
(lease lost, replica stopping). At most ``max_running_searches`` searches run on a replica, so at
most that many sets of series (docs/METRICS.md gives the count).

The values are the search's own progress — the fields ``GetSearch`` reports, from the same state
the runner checkpoints — read in the metrics server's thread, as the store's worker threads read
it to save it.

For the stall alert each search also has the time a scrape first saw its current count of
finished iterations, and the replica exports its ``search_stall_seconds`` setting.

One counter outlives the searches: ``promptclimb_coordinator_searches_unimproved_total``, the
searches that ended on a budget with their best template still one of the seed pool's.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Protocol

from prometheus_client import REGISTRY, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from promptclimb.common.vocabulary import Phase
from services.coordinator.search import SearchConfig, SearchState
from services.coordinator.store import SearchRecord

log = logging.getLogger(__name__)

PREFIX = "promptclimb_coordinator_search_"
LABELS = ("search_id", "display_name", "dataset", "strategy", "model")
MAX_DISPLAY_NAME = 64  # label values stay short: a display name is free text
# The budgets, named as a search's end_reason names them ("budget: max_llm_calls").
BUDGETS = ("max_llm_calls", "max_tokens", "max_evaluations", "max_duration")

UNIMPROVED = Counter(
    "promptclimb_coordinator_searches_unimproved",
    "Searches that ended on a budget with their best template still one of the seed pool's.",
    ["budget"],
)
for _budget in BUDGETS:  # every series from 0, so the first such search is an increase
    UNIMPROVED.labels(_budget)


def count_search_end(state: SearchState | None, end_reason: str) -> None:
    """Count a search that spent a budget without improving on its seed pool.

    "Improving" is the search's own notion of best: the template its objective ranks first came
    from an iteration (>= 1), not from the seed pool (iteration 0); for a description search, the
    kept description set scores above its slot template alone.
    """
    budget = end_reason.removeprefix("budget: ")
    if state is None or budget == end_reason or budget not in BUDGETS:
        return
    best = state.best
    if state.config.descriptions is not None:
        kept = state.iterations[-1].best_accuracy if state.iterations else None
        if best is not None and (kept is None or kept <= best.accuracy):
            UNIMPROVED.labels(budget).inc()
    elif best is not None and best.iteration == 0:
        UNIMPROVED.labels(budget).inc()


class LiveSearches(Protocol):
    """What the collector reads: the runner's map of the searches running on this replica."""

    @property
    def live(self) -> dict[str, tuple[SearchRecord, SearchState]]: ...


def identity(record: SearchRecord) -> list[str]:
    """The label values of a search: id, display name, dataset, strategy (``a+b`` for a mix,
    ``describe`` for a description search), model."""
    config: SearchConfig = record.config
    strategy = "describe" if config.descriptions else "+".join(s.value for s in config.proposers)
    return [record.id, config.display_name[:MAX_DISPLAY_NAME], config.dataset, strategy, config.model]


def budget_used(record: SearchRecord, state: SearchState, now: float) -> dict[str, float]:
    """Used fraction of each budget the search has (0 = unlimited ones are left out).

    The quantities the search's budget check compares: LLM calls, tokens, selection-split
    evaluations inside the loop, wall time since the search first started.
    """
    b, u = state.config.budget, state.usage
    used: dict[str, float] = {}
    if b.max_llm_calls:
        used["max_llm_calls"] = u.llm_calls / b.max_llm_calls
    if b.max_tokens:
        used["max_tokens"] = u.tokens / b.max_tokens
    if b.max_evaluations:
        used["max_evaluations"] = u.search_evaluations / b.max_evaluations
    if b.max_duration_seconds and record.start_time is not None:
        used["max_duration"] = max(0.0, now - record.start_time) / b.max_duration_seconds
    return used


class RunningSearches(Collector):
    """Collects the per-search series of every tracked runner at scrape time."""

    def __init__(self, clock: Callable[[], float] = time.time, *, stall_seconds: float = 1800.0) -> None:
        self.clock = clock
        self.stall_seconds = stall_seconds  # exported for the stall alert (a coordinator setting)
        self._sources: weakref.WeakSet[LiveSearches] = weakref.WeakSet()
        # Per search: the finished-iteration count last seen and when a scrape first saw it.
        self._progress: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()  # scrapes run in the metrics server's threads, maybe two at once

    def track(self, source: LiveSearches) -> None:
        """Export the searches of ``source`` (a :class:`~services.coordinator.runner.SearchRunner`)."""
        self._sources.add(source)

    def untrack(self, source: LiveSearches) -> None:
        """Stop exporting them."""
        self._sources.discard(source)

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return list(self._families().values())

    def collect(self) -> Iterable[GaugeMetricFamily]:
        families = self._families()
        families["threshold"].add_metric([], self.stall_seconds)
        now = self.clock()
        seen: set[str] = set()
        with self._lock:
            for source in list(self._sources):
                # A copy made in one step: the event loop's thread adds and removes searches meanwhile.
                for record, state in source.live.copy().values():
                    seen.add(record.id)
                    try:
                        samples = self._samples(record, state, now)
                    except Exception:  # one search read mid-change must not fail the whole scrape
                        log.warning("search metrics skipped", extra={"search": record.id}, exc_info=True)
                        continue
                    for key, labels, value in samples:
                        families[key].add_metric(labels, value)
            for gone in self._progress.keys() - seen:
                del self._progress[gone]
        return list(families.values())

    def _progressed_at(self, search_id: str, completed: int, now: float) -> float:
        """When a scrape first saw the search with ``completed`` finished iterations."""
        last = self._progress.get(search_id)
        if last is None or last[0] != completed:
            last = (completed, now)
            self._progress[search_id] = last
        return last[1]

    def _families(self) -> dict[str, GaugeMetricFamily]:
        def family(name: str, doc: str, *extra: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(
                PREFIX + name, doc + " (a search running on this replica).", labels=[*LABELS, *extra]
            )

        return {
            "best": family("best_accuracy", "Selection accuracy of the best template so far"),
            "mean": family("mean_accuracy", "Mean selection accuracy of the pool after the last iteration"),
            "restart": family("restart", "Restart the search is in (0-based)"),
            "iteration": family("iteration", "Iteration the search is in (0 while seeding)"),
            "completed": family("iterations_completed", "Iterations finished, the seeding one included"),
            "phase": family("phase", "1 for the phase the search is in, else 0", "phase"),
            "scored": family("templates_scored", "Templates scored, on any split"),
            "calls": family("llm_calls", "LLM calls spent"),
            "tokens": family("llm_tokens", "LLM tokens spent", "kind"),
            "cost": family("llm_cost_usd", "LLM spend in US dollars at the configured prices"),
            "budget": family("budget_used_ratio", "Used fraction of each budget set (1 = spent)", "budget"),
            "progressed": family(
                "progress_timestamp_seconds",
                "Unix time a scrape first saw the current count of finished iterations",
            ),
            "threshold": GaugeMetricFamily(
                PREFIX + "stall_threshold_seconds",
                "A running search that finishes no iteration for this long is stalled (the alert's setting).",
            ),
        }

    def _samples(
        self, record: SearchRecord, state: SearchState, now: float
    ) -> list[tuple[str, list[str], float]]:
        """(family key, label values, value) of every series of one search."""
        labels = identity(record)
        out: list[tuple[str, list[str], float]] = []
        best = state.best
        iterations = list(state.iterations)
        if record.config.descriptions is not None and iterations:
            out.append(("best", labels, iterations[-1].best_accuracy))  # the kept description set
        elif best is not None:
            out.append(("best", labels, best.accuracy))
        if iterations:
            out.append(("mean", labels, iterations[-1].mean_accuracy))
        out += [
            ("restart", labels, state.restart),
            ("iteration", labels, state.iteration),
            ("completed", labels, len(iterations)),
            ("progressed", labels, self._progressed_at(record.id, len(iterations), now)),
        ]
        out += [("phase", [*labels, phase.value], float(state.phase is phase)) for phase in Phase]
        u = state.usage
        out += [
            ("scored", labels, u.evaluations),
            ("calls", labels, u.llm_calls),
            ("tokens", [*labels, "prompt"], u.prompt_tokens),
            ("tokens", [*labels, "completion"], u.completion_tokens),
            ("cost", labels, u.cost_usd),
        ]
        out += [("budget", [*labels, b], used) for b, used in budget_used(record, state, now).items()]
        return out


RUNNING_SEARCHES = RunningSearches()
REGISTRY.register(RUNNING_SEARCHES)

"""Per-running-search series: what a scrape of the collector gives for the runner's ``live`` map.

The end-to-end check against a real coordinator, GetSearch and Prometheus is
tests/deploy/test_search_dashboard.py; these pin the collector's own rules.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from services.coordinator.search import (
    Budget,
    DescriptionSpec,
    IterationSummary,
    Phase,
    ScoredTemplate,
    SearchConfig,
    SearchState,
    Strategy,
)
from services.coordinator.search_metrics import RunningSearches, count_search_end
from services.coordinator.store import Progress, SearchRecord, searches
from tests.coordinator.conftest import Harness

START = 1_000_000.0


@dataclass(eq=False)  # hashed by identity, as a SearchRunner is
class Runner:
    live: dict[str, tuple[SearchRecord, SearchState]] = field(default_factory=dict)


def _record(search_id: str, config: SearchConfig) -> SearchRecord:
    return SearchRecord(
        search_id,
        None,
        config,
        "RUNNING",
        "seeding",
        0,
        0,
        Progress(),
        START,
        START,
        START,
        None,
        "r",
        None,
        False,
    )


def _scrape(collector: RunningSearches) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _values(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], search_id: str
) -> dict[str, float]:
    """name (with the extra label, e.g. ``phase=scoring``) -> value, for one search."""
    out = {}
    for (name, labels), value in samples.items():
        d = dict(labels)
        if d.get("search_id") != search_id:
            continue
        extra = [f"{k}={v}" for k, v in d.items() if k in ("phase", "kind", "budget")]
        out[name.removeprefix("promptclimb_coordinator_search_") + "".join(f"[{e}]" for e in extra)] = value
    return out


def _climbing_state(config: SearchConfig) -> SearchState:
    state = SearchState(config)
    state.history = [
        ScoredTemplate("a photo of a {}.", 0.5, 5, 10, 0, 0, "pool"),
        ScoredTemplate("a {} in the wild.", 0.3, 3, 10, 0, 0, "pool"),
        ScoredTemplate("a sharp photo of a {}.", 0.7, 7, 10, 0, 1, "llm"),
    ]
    state.iterations = [IterationSummary(0, 0, 0.5, 0.4, 2), IterationSummary(0, 1, 0.7, 0.5, 3)]
    state.phase, state.restart, state.iteration = Phase.PROPOSING, 0, 2
    u = state.usage
    u.llm_calls, u.prompt_tokens, u.completion_tokens, u.cost_usd = 2, 300, 100, 0.25
    u.evaluations, u.search_evaluations = 3, 3
    return state


def test_a_running_search_is_exported_with_its_progress_and_budget_use() -> None:
    config = SearchConfig(
        dataset="pets",
        model="rn50-openai",
        display_name="nightly pets",
        strategy=Strategy.CONTRAST,
        budget=Budget(max_llm_calls=8, max_tokens=1000, max_evaluations=0, max_duration_seconds=100.0),
    )
    runner = Runner({"s1": (_record("s1", config), _climbing_state(config))})
    collector = RunningSearches(clock=lambda: START + 25.0)
    collector.track(runner)
    samples = _scrape(collector)
    assert _values(samples, "s1") == {
        "best_accuracy": 0.7,
        "mean_accuracy": 0.5,
        "restart": 0,
        "iteration": 2,
        "iterations_completed": 2,
        "progress_timestamp_seconds": START + 25.0,  # first seen with 2 iterations at this scrape
        "phase[phase=seeding]": 0,
        "phase[phase=proposing]": 1,
        "phase[phase=scoring]": 0,
        "phase[phase=evaluating]": 0,
        "phase[phase=done]": 0,
        "templates_scored": 3,
        "llm_calls": 2,
        "llm_tokens[kind=prompt]": 300,
        "llm_tokens[kind=completion]": 100,
        "llm_cost_usd": 0.25,
        "budget_used_ratio[budget=max_llm_calls]": 0.25,
        "budget_used_ratio[budget=max_tokens]": 0.4,
        "budget_used_ratio[budget=max_duration]": 0.25,  # unlimited evaluations: no series
    }
    labels = dict(next(labels for (name, labels) in samples if name.endswith("_llm_calls")))
    assert labels == {
        "search_id": "s1",
        "display_name": "nightly pets",
        "dataset": "pets",
        "strategy": "contrast",
        "model": "rn50-openai",
    }


def test_series_go_with_the_search_and_the_families_stay() -> None:
    mixed = SearchConfig(dataset="pets", mix=(Strategy.CONTRAST, Strategy.EDIT), display_name="x" * 300)
    runner = Runner({"s1": (_record("s1", mixed), SearchState(mixed))})
    collector = RunningSearches()
    collector.track(runner)
    seeding = _values(_scrape(collector), "s1")
    # Nothing scored yet: no best and no mean (GetSearch has none either), the rest from zero.
    assert "best_accuracy" not in seeding and "mean_accuracy" not in seeding
    assert seeding["phase[phase=seeding]"] == 1 and seeding["iterations_completed"] == 0
    labels = dict(next(labels for (name, labels) in _scrape(collector) if name.endswith("_restart")))
    assert labels["strategy"] == "contrast+edit" and len(labels["display_name"]) == 64

    del runner.live["s1"]  # the search ended (or moved to a peer)
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    assert "s1" not in text
    assert "# TYPE promptclimb_coordinator_search_best_accuracy gauge" in text  # names stay discoverable


def test_several_runners_and_an_untracked_one() -> None:
    config = SearchConfig(dataset="pets")
    a, b = Runner({"a": (_record("a", config), SearchState(config))}), Runner()
    b.live["b"] = (_record("b", config), SearchState(config))
    collector = RunningSearches()
    collector.track(a)
    collector.track(b)
    ids = {dict(labels)["search_id"] for _, labels in _scrape(collector) if labels}
    assert ids == {"a", "b"}
    collector.untrack(b)
    assert {dict(labels)["search_id"] for _, labels in _scrape(collector) if labels} == {"a"}


def _unimproved(budget: str) -> float:
    value = REGISTRY.get_sample_value("promptclimb_coordinator_searches_unimproved_total", {"budget": budget})
    assert value is not None  # every budget's series exists from the start
    return value


def test_a_budget_spent_on_the_seed_pool_is_counted() -> None:
    config = SearchConfig(dataset="pets")
    seed_best = SearchState(config)
    seed_best.history = [
        ScoredTemplate("a photo of a {}.", 0.5, 5, 10, 0, 0, "pool"),
        ScoredTemplate("a drawing of a {}.", 0.4, 4, 10, 0, 1, "llm"),
    ]
    improved = _climbing_state(config)
    before = {b: _unimproved(b) for b in ("max_llm_calls", "max_tokens")}
    count_search_end(seed_best, "budget: max_llm_calls")
    count_search_end(improved, "budget: max_tokens")  # the best came from iteration 1
    count_search_end(seed_best, "completed")  # no budget spent
    count_search_end(seed_best, "converged")
    count_search_end(None, "budget: max_tokens")  # ended before it ran
    assert _unimproved("max_llm_calls") == before["max_llm_calls"] + 1
    assert _unimproved("max_tokens") == before["max_tokens"]


def test_a_description_search_reports_its_kept_set_and_is_unimproved_only_at_the_template() -> None:
    config = SearchConfig(dataset="pets", descriptions=DescriptionSpec(template="a photo of a {}."))
    state = SearchState(config)
    state.history = [ScoredTemplate("a photo of a {}.", 0.5, 5, 10, 0, 0, "pool")]  # the template alone
    state.iterations = [IterationSummary(0, 0, 0.6, 0.6, 2), IterationSummary(0, 1, 0.7, 0.55, 3)]
    runner = Runner({"d1": (_record("d1", config), state)})  # tracked weakly: keep it
    collector = RunningSearches()
    collector.track(runner)
    values = _values(_scrape(collector), "d1")
    assert values["best_accuracy"] == 0.7 and values["mean_accuracy"] == 0.55
    assert {dict(labels).get("strategy") for _, labels in _scrape(collector) if labels} == {"describe"}

    before = _unimproved("max_llm_calls")
    count_search_end(state, "budget: max_llm_calls")  # the kept set beats the template alone
    assert _unimproved("max_llm_calls") == before
    state.iterations = [IterationSummary(0, 0, 0.4, 0.4, 2)]
    count_search_end(state, "budget: max_llm_calls")  # nothing above the template alone
    assert _unimproved("max_llm_calls") == before + 1


async def _until_async(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_a_search_taken_over_by_a_peer_leaves_this_replicas_series(harness: Harness) -> None:
    """A real runner: the series exist while the search runs here, and go when a peer holds it."""
    collector = RunningSearches()
    collector.track(harness.runner)
    harness.optimizer.delay = 0.2  # slow iterations: it is still running when the lease moves
    search = await harness.client.start(dataset="toy", iterations=50)

    def exported() -> dict[str, float]:
        return _values(_scrape(collector), search.id)

    await _until_async(lambda: exported().get("iterations_completed", 0) >= 2, "two iterations exported")
    with harness.store.engine.begin() as conn:  # a peer replica now holds the lease
        conn.execute(update(searches).where(searches.c.id == search.id).values(lease_owner="peer-replica"))
    await _until_async(lambda: search.id not in harness.runner.live, "the runner to let the search go")
    assert exported() == {}
    record = harness.store.get(search.id)
    assert record is not None and record.state == "RUNNING" and record.lease_owner == "peer-replica"


def test_progress_time_is_when_a_scrape_first_saw_the_iteration_count() -> None:
    config = SearchConfig(dataset="pets")
    state = SearchState(config)
    runner = Runner({"s1": (_record("s1", config), state)})
    now = [START]
    collector = RunningSearches(clock=lambda: now[0], stall_seconds=900.0)
    collector.track(runner)

    def scrape() -> tuple[float, float]:
        samples = _scrape(collector)
        threshold = samples[("promptclimb_coordinator_search_stall_threshold_seconds", ())]
        return _values(samples, "s1")["progress_timestamp_seconds"], threshold

    assert scrape() == (START, 900.0)
    now[0] += 60
    assert scrape() == (START, 900.0)  # still seeding: no progress
    state.iterations.append(IterationSummary(0, 0, 0.5, 0.4, 2))
    now[0] += 60
    assert scrape()[0] == START + 120  # an iteration finished since the last scrape
    now[0] += 600
    assert scrape()[0] == START + 120
    del runner.live["s1"]
    _scrape(collector)  # gone: forgotten
    runner.live["s1"] = (_record("s1", config), state)  # back (resumed here): a fresh wait
    now[0] += 5
    assert scrape()[0] == START + 725

"""The pure search and the store, without gRPC: replay after a crash, leases, idempotency."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import pytest

from services.coordinator.pools import initial_templates
from services.coordinator.search import (
    HillClimb,
    Proposal,
    ProposalRequest,
    Score,
    SearchConfig,
    SearchState,
)
from services.coordinator.store import SearchStore
from tests.coordinator.fakes import fake_accuracy
from tests.support.clock import ManualClock


class Crash(Exception):
    pass


class MemoryJournal:
    def __init__(self) -> None:
        self.scores: dict[tuple[str, str], Score] = {}
        self.proposals: dict[str, Proposal] = {}
        self.checkpoints: list[str] = []

    def recorded_score(self, split: str, template: str) -> Score | None:
        return self.scores.get((split, template))

    async def record_scores(
        self, split: str, scores: Sequence[Score], restart: int, iteration: int, origin: str
    ) -> None:
        for s in scores:
            self.scores[(split, s.template)] = s

    def recorded_proposal(self, key: str) -> Proposal | None:
        return self.proposals.get(key)

    async def record_proposal(self, key: str, proposal: Proposal) -> None:
        self.proposals[key] = proposal

    async def checkpoint(self, state: SearchState, event: str) -> None:
        self.checkpoints.append(event)


class CountingScorer:
    def __init__(self) -> None:
        self.scored: Counter[tuple[str, str]] = Counter()

    async def class_names(self, dataset: str) -> list[str]:
        return ["cat", "dog"]

    async def score(
        self,
        dataset: str,
        split: str,
        templates: Sequence[str],
        on_chunk: Callable[[list[Score]], Awaitable[None]],
    ) -> list[Score]:
        out = []
        for t in templates:
            self.scored[(split, t)] += 1
            out.append(Score(t, fake_accuracy(t), 1, 2))
        await on_chunk(out)
        return out

    async def ensemble_accuracy(self, dataset: str, split: str, templates: Sequence[str]) -> float:
        return 0.5


class ScriptedProposer:
    def __init__(self, crash_after: int | None = None) -> None:
        self.calls = 0
        self.crash_after = crash_after

    async def propose(self, request: ProposalRequest) -> Proposal:
        if self.crash_after is not None and self.calls >= self.crash_after:
            raise Crash
        self.calls += 1
        return Proposal(
            tuple(f"{{}} v{self.calls}-{i}" for i in range(request.num_templates)),
            prompt_tokens=10,
            completion_tokens=5,
        )


def climb(
    config: SearchConfig,
    journal: MemoryJournal,
    scorer: CountingScorer,
    proposer: ScriptedProposer,
    clock: Callable[[], float] = time.time,
) -> HillClimb:
    return HillClimb(SearchState(config), scorer, proposer, journal, initial_templates, clock=clock)


async def test_replay_after_crash_reuses_every_recorded_reply_and_score() -> None:
    config = SearchConfig(dataset="d", restarts=2, iterations=3, templates_per_iteration=2)
    journal, scorer = MemoryJournal(), CountingScorer()
    with pytest.raises(Crash):
        await climb(config, journal, scorer, ScriptedProposer(crash_after=4)).run()
    resumed = ScriptedProposer()
    resumed.calls = 4  # continue numbering as a real LLM would produce new text
    state = await climb(config, journal, scorer, resumed).run()
    assert resumed.calls - 4 == 2  # only the two steps never recorded were asked
    assert max(scorer.scored.values()) == 1
    assert len(state.history) == 5 + 6 * 2
    assert state.usage.llm_calls == 6 and state.usage.tokens == 90
    assert state.end_reason == "completed"

    uninterrupted = await climb(config, MemoryJournal(), CountingScorer(), ScriptedProposer()).run()
    assert [t.template for t in uninterrupted.history] == [t.template for t in state.history]
    assert uninterrupted.result is not None and state.result is not None
    assert uninterrupted.result.best == state.result.best


async def test_duration_budget_is_not_applied_to_recorded_steps() -> None:
    """A resumed search past its deadline still replays everything recorded before stopping."""
    config = SearchConfig(dataset="d", iterations=4, templates_per_iteration=1)
    journal, scorer = MemoryJournal(), CountingScorer()
    with pytest.raises(Crash):
        await climb(config, journal, scorer, ScriptedProposer(crash_after=3)).run()
    late = SearchConfig(
        dataset="d",
        iterations=4,
        templates_per_iteration=1,
        budget=config.budget.__class__(max_duration_seconds=1),
    )
    c = climb(late, journal, scorer, ScriptedProposer())
    c.started_at = time.time() - 100
    state = await c.run()
    assert state.end_reason == "budget: max_duration"
    assert len(state.history) == 5 + 3


def test_request_id_is_unique_and_leases_are_exclusive(tmp_path: Path) -> None:
    clock = ManualClock()  # leases expire when the test says, not when real time has raced past
    store = SearchStore(str(tmp_path / "s.db"), clock=clock)
    other = SearchStore(str(tmp_path / "s.db"), clock=clock)  # a second replica on the same database
    a, created = store.create(SearchConfig(dataset="d"), "req-1")
    b, created_again = other.create(SearchConfig(dataset="e"), "req-1")
    assert created and not created_again and a.id == b.id and b.config.dataset == "d"
    assert store.try_acquire(a.id, "replica-1", lease_seconds=60)
    assert not other.try_acquire(a.id, "replica-2", lease_seconds=60)
    assert other.claimable() == []
    assert store.try_acquire(a.id, "replica-1", lease_seconds=1)  # renew to a short lease
    clock.advance(0.9)
    assert other.claimable() == []
    clock.advance(0.2)
    assert other.claimable() == [a.id]
    assert other.try_acquire(a.id, "replica-2", lease_seconds=60)
    # The old owner's progress writes are fenced off now.
    assert not store.save_progress(a.id, "replica-1", SearchState(a.config), 1.0)
    assert other.save_progress(a.id, "replica-2", SearchState(a.config), 1.0)
    store.close()
    other.close()


class EchoingProposer:
    """A deterministic LLM: the same request (seed included) gets the same reply, like a seeded model."""

    def __init__(self) -> None:
        self.seeds: list[int | None] = []

    async def propose(self, request: ProposalRequest) -> Proposal:
        self.seeds.append(request.seed)
        return Proposal((f"{{}} from seed {request.seed}",), prompt_tokens=1, completion_tokens=1)


async def test_a_seeded_search_sends_a_different_seed_per_call_and_does_not_stall() -> None:
    config = SearchConfig(dataset="d", iterations=4, templates_per_iteration=1, seed=7)
    proposer = EchoingProposer()
    state = await climb(config, MemoryJournal(), CountingScorer(), proposer).run()  # type: ignore[arg-type]
    assert len(set(proposer.seeds)) == len(proposer.seeds) == 4  # one fresh seed per call
    assert [t.origin for t in state.history].count("llm") == 4  # so every iteration found a new template
    again = EchoingProposer()
    await climb(config, MemoryJournal(), CountingScorer(), again).run()  # type: ignore[arg-type]
    assert again.seeds == proposer.seeds  # reproducible for the same search seed
    unseeded = EchoingProposer()
    await climb(
        SearchConfig(dataset="d", iterations=2, templates_per_iteration=1),
        MemoryJournal(),
        CountingScorer(),
        unseeded,  # type: ignore[arg-type]
    ).run()
    assert unseeded.seeds[0] is None


def test_accuracy_ties_go_to_the_lower_loss_then_to_the_earliest() -> None:
    from services.coordinator.search import ScoredTemplate

    state = SearchState(SearchConfig(dataset="d"))
    state.history = [
        ScoredTemplate("a photo of a {}.", 0.9, 9, 10, 0, 0, "pool", loss=0.80),
        ScoredTemplate("old {}", 0.9, 9, 10, 0, 0, "pool"),  # recorded before losses existed
        ScoredTemplate("a {} on black.", 0.9, 9, 10, 0, 1, "llm", loss=0.55),
        ScoredTemplate("a {}, worse.", 0.8, 8, 10, 0, 1, "llm", loss=0.10),
        ScoredTemplate("a grey {}.", 0.9, 9, 10, 0, 2, "llm", loss=0.55),
    ]
    assert state.best is not None and state.best.template == "a {} on black."
    assert [t.template for t in state.top(5)] == [
        "a {} on black.",  # accuracy first; at 0.9 the lowest loss, earliest of the two at 0.55
        "a grey {}.",
        "a photo of a {}.",
        "old {}",  # unknown loss ranks after known ones at the same accuracy
        "a {}, worse.",  # a lower loss never beats a higher accuracy
    ]


def test_a_database_from_before_the_loss_column_is_upgraded_in_place(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "old.db"
    store = SearchStore(str(db))
    record, _ = store.create(SearchConfig(dataset="d"), None)
    store.close()
    with sqlite3.connect(db) as c:  # make it look like the earlier schema, with one old row
        c.execute("DROP TABLE promptclimb_schema")  # made before the schema was versioned
        c.execute("ALTER TABLE scored_templates DROP COLUMN loss")
        c.execute(
            "INSERT INTO scored_templates (search_id, split, template, accuracy, correct, total, restart,"
            " iteration, origin) VALUES (?, 'train', 'old {}', 0.5, 1, 2, 0, 0, 'pool')",
            (record.id,),
        )
    upgraded = SearchStore(str(db))
    upgraded.add_scores(record.id, "train", [Score("new {}", 0.5, 1, 2, loss=0.25)], 0, 1, "llm")
    scores = upgraded.scores(record.id)
    assert scores[("train", "old {}")].loss is None
    assert scores[("train", "new {}")].loss == 0.25
    got = upgraded.get(record.id, with_history=True)
    assert got is not None and [t.loss for t in got.history] == [None, 0.25]
    upgraded.close()


def test_each_objective_picks_its_own_best() -> None:
    from services.coordinator.search import Objective, ScoredTemplate

    def scored(template: str, accuracy: float, loss: float | None) -> ScoredTemplate:
        return ScoredTemplate(template, accuracy, int(accuracy * 10), 10, 0, 0, "pool", loss)

    history = [
        scored("a {} first.", 0.8, 1.9),  # earliest of the two at 80%
        scored("a {} sure.", 0.8, 0.6),  # same accuracy, far lower cross-entropy
        scored("a {} lucky.", 0.9, 3.5),  # one image more, but CLIP is unsure of all of them
    ]
    picks = {}
    for objective in Objective:
        state = SearchState(SearchConfig(dataset="d", objective=objective, objective_weight=0.05))
        state.history = list(history)
        picks[objective] = state.best.template if state.best else None
    assert picks == {
        Objective.ACCURACY: "a {} lucky.",
        Objective.ACCURACY_THEN_LOSS: "a {} lucky.",
        # 0.9 - 0.05 x 3.5 = 0.725 < 0.8 - 0.05 x 0.6 = 0.77
        Objective.BLENDED: "a {} sure.",
        # Without per-image results CONFIDENT compares by accuracy then loss, in history order.
        Objective.CONFIDENT: "a {} lucky.",
    }
    history[2] = scored("a {} lucky.", 0.8, 3.5)  # now three-way tie on accuracy
    for objective, expected in (
        (Objective.ACCURACY, "a {} first."),  # the paper: ties to the earliest
        (Objective.ACCURACY_THEN_LOSS, "a {} sure."),
    ):
        state = SearchState(SearchConfig(dataset="d", objective=objective))
        state.history = list(history)
        assert state.best is not None and state.best.template == expected


def test_stored_configs_without_an_objective_load_with_the_default() -> None:
    from services.coordinator.search import Objective

    stored = SearchConfig(dataset="d").to_json()
    del stored["objective"], stored["objective_weight"]
    assert SearchConfig.from_json(stored).objective is Objective.ACCURACY_THEN_LOSS

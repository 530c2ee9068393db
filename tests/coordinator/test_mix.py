"""Several strategies in one search: SPLIT shares every iteration, BANDIT picks one per iteration."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

import grpc
import pytest

from promptclimb.api.v1 import common_pb2
from promptclimb.api.v1 import coordinator_pb2 as pb
from promptclimb.client import make_spec
from promptclimb.common.errors import ServiceError
from services.coordinator.convert import config_from_spec, spec_from_config
from services.coordinator.pools import initial_templates
from services.coordinator.search import (
    HillClimb,
    MixMode,
    Proposal,
    ProposalRequest,
    Score,
    SearchConfig,
    SearchState,
    Strategy,
    proposal_key,
    split_shares,
)
from tests.coordinator.conftest import Harness
from tests.coordinator.fakes import FakeOptimizer, fake_accuracy
from tests.coordinator.test_core import Crash, MemoryJournal

pytestmark = pytest.mark.timeout(60)


# ---- in-process ports --------------------------------------------------------------------------


ACC = re.compile(r"acc=([0-9.]+)")


class ReadingScorer:
    """A template's accuracy is written in it (``acc=0.42``), else :func:`fake_accuracy`."""

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
            m = ACC.search(t)
            out.append(Score(t, float(m.group(1)) if m else fake_accuracy(t), 1, 2))
        await on_chunk(out)
        return out

    async def ensemble_accuracy(self, dataset: str, split: str, templates: Sequence[str]) -> float:
        return 0.5


class ByStrategy:
    """Replies per strategy: ``improving`` gets ever better templates, the others worse than the pool.

    Without ``improving``, replies are a function of the request (seed, strategy) alone, as a
    seeded LLM's are; ``crash_after`` calls it raises, as a coordinator killed mid-search.
    """

    def __init__(self, improving: Strategy | None = None, crash_after: int | None = None) -> None:
        self.improving = improving
        self.crash_after = crash_after
        self.asked: list[Strategy] = []

    async def propose(self, request: ProposalRequest) -> Proposal:
        if self.crash_after is not None and len(self.asked) >= self.crash_after:
            raise Crash
        self.asked.append(request.strategy)
        s, n = request.strategy.value, len(self.asked)
        if self.improving is None:
            templates = tuple(f"{{}} {s} {request.seed} {i}" for i in range(request.num_templates))
        elif request.strategy is self.improving:
            templates = tuple(
                f"{{}} {s} {n} {i} acc={0.5 + 0.01 * n:.3f}" for i in range(request.num_templates)
            )
        else:
            templates = tuple(f"{{}} {s} {n} {i} acc=0.100" for i in range(request.num_templates))
        return Proposal(templates, llm_calls=int(request.strategy is not Strategy.EDIT))


def climb(config: SearchConfig, journal: MemoryJournal, proposer: ByStrategy) -> HillClimb:
    return HillClimb(SearchState(config), ReadingScorer(), proposer, journal, initial_templates)


def chosen(state: SearchState) -> list[str]:
    """The strategy asked in each iteration after seeding (one each in BANDIT mode)."""
    return ["+".join(i.strategies) for i in state.iterations if i.iteration > 0]


POOL = ("a {} acc=0.300", "a photo of a {} acc=0.200")


# ---- BANDIT ------------------------------------------------------------------------------------


@pytest.mark.parametrize("improving", [Strategy.CONTRAST, Strategy.EDIT])
async def test_the_bandit_prefers_the_strategy_that_keeps_making_new_bests(improving: Strategy) -> None:
    tried_both = 0
    for seed in range(1, 6):
        config = SearchConfig(
            dataset="d",
            user_templates=POOL,
            iterations=30,
            seed=seed,
            mix=(Strategy.CONTRAST, Strategy.EDIT),
            mix_mode=MixMode.BANDIT,
        )
        state = await climb(config, MemoryJournal(), ByStrategy(improving)).run()
        picks = chosen(state)
        assert len(picks) == 30 and set(picks) <= {"contrast", "edit"}
        assert picks.count(improving.value) >= 24, (seed, picks)
        assert picks[-10:].count(improving.value) >= 9, (seed, picks)  # and more so as evidence grows
        tried_both += len(set(picks)) == 2
        assert {t.origin for t in state.history if t.iteration > 0} == set(picks)  # origins name strategies
    assert tried_both >= 3  # it explores: the other strategy is tried too, not ignored from the start


async def test_bandit_choices_are_the_same_when_the_search_resumes_from_its_journal() -> None:
    config = SearchConfig(
        dataset="d",
        restarts=2,
        iterations=8,
        templates_per_iteration=2,
        seed=7,
        mix=(Strategy.CONTRAST, Strategy.TRAJECTORY, Strategy.EDIT),
        mix_mode=MixMode.BANDIT,
    )
    uninterrupted = await climb(config, MemoryJournal(), ByStrategy()).run()
    sequence = chosen(uninterrupted)
    assert len(set(sequence)) >= 2  # a real sequence of choices, not one strategy throughout

    journal = MemoryJournal()
    with pytest.raises(Crash):
        await climb(config, journal, ByStrategy(crash_after=7)).run()
    resumed_proposer = ByStrategy()
    resumed = await climb(config, journal, resumed_proposer).run()
    assert chosen(resumed) == sequence
    assert len(resumed_proposer.asked) == 16 - 7  # the 7 recorded replies were not asked again
    assert [t.template for t in resumed.history] == [t.template for t in uninterrupted.history]
    assert [t.origin for t in resumed.history] == [t.origin for t in uninterrupted.history]
    # Each choice is journaled under its strategy's own key.
    assert proposal_key(0, 1, 0, Strategy[sequence[0].upper()]) in journal.proposals


# ---- SPLIT -------------------------------------------------------------------------------------


def test_split_shares_rotate_the_remainder_so_every_strategy_gets_its_turns() -> None:
    mix = (Strategy.CONTRAST, Strategy.EDIT, Strategy.EVOLVE)
    assert split_shares(mix, 7, 0) == [(Strategy.CONTRAST, 3), (Strategy.EDIT, 2), (Strategy.EVOLVE, 2)]
    assert split_shares(mix, 7, 1) == [(Strategy.CONTRAST, 2), (Strategy.EDIT, 3), (Strategy.EVOLVE, 2)]
    turns = [split_shares(mix, 1, turn) for turn in range(3)]
    assert turns == [[(Strategy.CONTRAST, 1)], [(Strategy.EDIT, 1)], [(Strategy.EVOLVE, 1)]]


@pytest.mark.parametrize("fake_optimizer", [FakeOptimizer(tag_strategy=True)])
async def test_a_split_search_has_templates_from_both_strategies_every_iteration(harness: Harness) -> None:
    spec = make_spec(
        "toy", iterations=3, templates_per_iteration=3, mix=["contrast", "edit"], seed=4, max_llm_calls=3
    )
    done = await harness.client.wait((await harness.client.start(spec)).name)
    assert done.state == pb.SEARCH_STATE_SUCCEEDED, done.end_reason
    assert done.end_reason == "completed"  # edit's calls do not count against max_llm_calls
    per_iteration = {i: Counter(t.origin for t in done.history if t.iteration == i) for i in range(1, 4)}
    # 3 templates per iteration, the odd one going to each strategy in turn.
    assert per_iteration == {
        1: Counter(contrast=2, edit=1),
        2: Counter(contrast=1, edit=2),
        3: Counter(contrast=2, edit=1),
    }
    for t in done.history:
        if t.iteration > 0:  # the origin is the strategy that proposed it
            assert f"({t.origin} take" in t.template
    asked = [(r.strategy, r.num_templates) for r in harness.optimizer.requests]
    assert asked == [
        (common_pb2.STRATEGY_CONTRAST, 2),
        (common_pb2.STRATEGY_EDIT, 1),
        (common_pb2.STRATEGY_CONTRAST, 1),
        (common_pb2.STRATEGY_EDIT, 2),
        (common_pb2.STRATEGY_CONTRAST, 2),
        (common_pb2.STRATEGY_EDIT, 1),
    ]
    assert done.usage.llm_calls == 3 and done.usage.prompt_tokens == 30  # only contrast spent any
    assert list(done.spec.mix) == [common_pb2.STRATEGY_CONTRAST, common_pb2.STRATEGY_EDIT]
    assert done.spec.mix_mode == pb.MIX_MODE_SPLIT


async def test_an_unmixed_search_keeps_its_journal_keys_and_the_llm_origin() -> None:
    config = SearchConfig(dataset="d", user_templates=POOL, iterations=2, seed=1)
    journal = MemoryJournal()
    state = await climb(config, journal, ByStrategy()).run()
    assert sorted(journal.proposals) == ["r0/i1/a0", "r0/i2/a0"]  # as journals were always written
    assert [t.origin for t in state.history] == ["user", "user", "llm", "llm"]
    edit = await climb(
        SearchConfig(**{**config.__dict__, "strategy": Strategy.EDIT}), MemoryJournal(), ByStrategy()
    ).run()
    assert [t.origin for t in edit.history][2:] == ["edit", "edit"]  # no LLM: not called "llm"


# ---- the spec ----------------------------------------------------------------------------------


def violations(spec: pb.SearchSpec) -> set[str]:
    with pytest.raises(ServiceError) as err:
        config_from_spec(spec)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    return {f for f, _ in err.value.field_violations}


def test_mix_and_mode_round_trip_and_bad_mixes_are_refused() -> None:
    spec = make_spec("toy", pool="basic", mix=["evolve", "edit"], mix_mode="bandit")
    config = config_from_spec(spec)
    assert config.mix == (Strategy.EVOLVE, Strategy.EDIT) and config.mix_mode is MixMode.BANDIT
    assert config_from_spec(spec_from_config(config)) == config
    assert SearchConfig.from_json(config.to_json()) == config
    assert config_from_spec(make_spec("toy")).mix == ()

    assert violations(make_spec("toy", mix=["edit", "edit"])) == {"spec.mix"}
    assert violations(make_spec("toy", mix=["edit"], mix_mode="bandit")) == {"spec.mix"}
    unknown = make_spec("toy")
    unknown.mix.append(99)  # type: ignore[arg-type]
    assert violations(unknown) == {"spec.mix[0]"}
    assert violations(make_spec("toy", strategy="edit", llm_starters=4)) == {"spec.initial_pool.llm_starters"}


def test_stored_configs_from_before_mixes_load_unmixed() -> None:
    stored = SearchConfig(dataset="d").to_json()
    del stored["mix"], stored["mix_mode"]
    config = SearchConfig.from_json(stored)
    assert config.mix == () and config.mix_mode is MixMode.SPLIT and config.proposers == (Strategy.CONTRAST,)

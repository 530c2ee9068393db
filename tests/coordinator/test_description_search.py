"""The description search (DescriptionClimb) over a real in-process scorer (tiny CLIP), a scripted
proposer and an in-memory journal: the loop's rules, replay after a crash, budgets, partial results."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from promptclimb.common.vocabulary import DescriptionStrategy
from promptclimb.testing.tiny_clip import make_image_folder, make_tiny_model_dir
from services.coordinator.clients import DescriptionProposal, GrpcScorer
from services.coordinator.description_search import BARE, DESCRIBE_KEY, DescriptionClimb, refine_key
from services.coordinator.search import (
    Budget,
    DescriptionSpec,
    SearchConfig,
    SearchFailed,
    SearchState,
)
from tests.coordinator.test_core import MemoryJournal

# Rewrites tried per round, for whatever classes the search asks to refine.
REWRITES = [
    ["a {} drawn in thick strokes", "a {} on a white card"],
    ["{}, seen from far away", "a blurry {}"],
    ["a bright {} pattern", "{}"],
    ["an old photo of a {}", "a {} in the dark"],
]


class Crash(Exception):
    pass


class StepJournal(MemoryJournal):
    """The in-memory journal with description steps."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: dict[str, dict[str, Any]] = {}

    def recorded_step(self, key: str) -> dict[str, Any] | None:
        return self.steps.get(key)

    async def record_step(self, key: str, payload: dict[str, Any]) -> None:
        self.steps[key] = payload


@dataclass
class ScriptedProposer:
    """Describes every class but the last; each refine rewrites what it is asked with the next wording.

    ``crash_at``: the call (0-based) that raises :class:`Crash` instead of answering (a dead process).
    """

    calls: list[dict[str, Any]] = field(default_factory=list)
    crash_at: int | None = None
    llm_calls_per_reply: int = 1

    async def propose_descriptions(self, strategy: DescriptionStrategy, **kwargs: Any) -> DescriptionProposal:
        if self.crash_at is not None and len(self.calls) == self.crash_at:
            raise Crash()
        self.calls.append({"strategy": strategy, **kwargs})
        n = self.llm_calls_per_reply
        if strategy is DescriptionStrategy.DESCRIBE:
            names = list(kwargs["class_names"])[:-1]
            return DescriptionProposal(
                {c: ("a photo of a {}.", "a {} shape") for c in names}, (kwargs["class_names"][-1],), n, 10, 5
            )
        scored: Mapping[str, tuple[Sequence[str], float]] = kwargs["scored"]
        weakest = sorted(scored, key=lambda c: scored[c][1])[: kwargs["weakest_k"]]
        wording = tuple(REWRITES[(len(self.calls) - 2) % len(REWRITES)])
        return DescriptionProposal({c: wording for c in weakest}, (), n, 10, 5)


def description_search(template: str = "", **knobs: Any) -> SearchState:
    budget = knobs.pop("budget", Budget())
    spec = DescriptionSpec(template=template, **{"rounds": 4, "weakest_k": 2, **knobs})
    return SearchState(SearchConfig(dataset="demo", seed=5, budget=budget, descriptions=spec))


@pytest.fixture
async def scorer(tmp_path: Path) -> AsyncIterator[GrpcScorer]:
    import torch

    from services.scorer.datasets import parse_dataset_spec
    from services.scorer.engine import ScoringEngine
    from services.scorer.main import build_server
    from services.scorer.settings import ScorerSettings

    torch.set_num_threads(1)
    root = tmp_path
    model = make_tiny_model_dir(root / "model")
    images = make_image_folder(root / "images", per_split={"train": 3, "test": 4})
    settings = ScorerSettings(model=f"local-dir:{model}")
    engine = ScoringEngine(settings)
    server = build_server(settings, engine)
    port = await server.start()
    await asyncio.to_thread(engine.load_model)
    await asyncio.to_thread(engine.register, parse_dataset_spec(f"demo={images}"))
    await server.set_ready(True)
    client = GrpcScorer(f"127.0.0.1:{port}")
    yield client
    await client.close()
    await engine.close()
    await server.stop(0)


@pytest.mark.parametrize("template", ["", "itap of a {}"])
async def test_refine_rounds_keep_only_improvements_and_evaluate_the_pick_once(
    scorer: GrpcScorer, template: str
) -> None:
    proposer, journal = ScriptedProposer(), StepJournal()
    state = await DescriptionClimb(description_search(template), scorer, proposer, journal).run()
    assert state.result is not None and state.result.descriptions is not None
    result = state.result.descriptions
    classes = await scorer.class_names("demo")  # the dataset's order (what the search describes in)

    # The class the LLM never described is scored with its bare name, and reported.
    initial = {c: ("a photo of a {}.", "a {} shape") for c in classes[:-1]} | {classes[-1]: BARE}
    (first,) = await scorer.evaluate_descriptions(
        "demo", "train", {"s": initial}, template=template, per_class=True, top_confusions=50
    )
    assert result.initial_selection_accuracy == first.accuracy
    # The first refine saw the scorer's own per-class accuracy and confusions of that set.
    refine = proposer.calls[1]
    assert refine["strategy"] is DescriptionStrategy.REFINE and refine["weakest_k"] == 2
    assert {c: a for c, (_, a) in refine["scored"].items()} == dict(
        zip(classes, first.per_class_accuracy, strict=True)
    )
    assert tuple(refine["confusions"]) == first.confusions
    assert len({c["seed"] for c in proposer.calls}) == len(proposer.calls)  # a seed of its own per call

    # Replay the rounds independently: a round wins only over the incumbent at its time.
    incumbent, best = dict(initial), (first.accuracy, -first.loss)
    for round_, call in zip(result.rounds, proposer.calls[1:], strict=True):
        weakest = sorted(call["scored"], key=lambda c: call["scored"][c][1])[:2]
        assert round_.rewritten == tuple(c for c in classes if c in weakest)
        candidate = incumbent | {c: tuple(REWRITES[(round_.index - 1) % len(REWRITES)]) for c in weakest}
        (tried,) = await scorer.evaluate_descriptions("demo", "train", {"s": candidate}, template=template)
        assert (round_.accuracy, round_.loss) == (tried.accuracy, tried.loss)
        assert round_.accepted == ((tried.accuracy, -tried.loss) > best)
        if round_.accepted:
            incumbent, best = candidate, (tried.accuracy, -tried.loss)
    assert {c.class_name: c.descriptions for c in result.classes} == incumbent
    assert result.selection_accuracy == best[0]
    # The evaluation split, scored once for the pick, equals a direct call; so does the template alone.
    (test,) = await scorer.evaluate_descriptions("demo", "test", {"s": incumbent}, template=template)
    assert result.evaluation_accuracy == test.accuracy
    alone = await scorer.score("demo", "test", [template or "{}"], _ignore)
    assert result.template_evaluation_accuracy == alone[0].accuracy == state.result.best_evaluation_accuracy
    assert state.history[0].template == (template or "{}")
    assert result.missing == (() if incumbent[classes[-1]] != BARE else (classes[-1],))
    assert state.usage.llm_calls == len(proposer.calls) and state.usage.prompt_tokens == 10 * len(
        proposer.calls
    )
    # One summary per step: the described set, then each round (best = the incumbent's accuracy).
    assert [s.iteration for s in state.iterations] == list(range(len(result.rounds) + 1))
    assert state.iterations[-1].best_accuracy == result.selection_accuracy
    assert state.end_reason == "completed"


async def _ignore(_chunk: list[Any]) -> None:
    pass


async def test_a_crashed_search_resumes_from_its_journal_without_asking_again(scorer: GrpcScorer) -> None:
    journal = StepJournal()
    crashing = ScriptedProposer(crash_at=3)  # describe, two refines, then the process dies
    with pytest.raises(Crash):
        await DescriptionClimb(description_search(), scorer, crashing, journal).run()
    recorded = dict(journal.steps)
    assert DESCRIBE_KEY in recorded and refine_key(1) in recorded and refine_key(2) not in recorded

    resumed = ScriptedProposer()
    resumed.calls = [dict(c) for c in crashing.calls]  # the script goes on where it was
    state = await DescriptionClimb(description_search(), scorer, resumed, journal).run()
    # Only the steps never recorded were asked for; every recorded step is kept as it was.
    assert len(resumed.calls) - len(crashing.calls) == 4 - 2
    assert all(journal.steps[k] == v for k, v in recorded.items())
    # The same search uninterrupted gives the same result.
    fresh = await DescriptionClimb(description_search(), scorer, ScriptedProposer(), StepJournal()).run()
    assert state.result == fresh.result and state.usage == fresh.usage


async def test_budgets_stop_refining_and_the_pick_is_still_evaluated(scorer: GrpcScorer) -> None:
    calls = await DescriptionClimb(
        description_search(budget=Budget(max_llm_calls=3)), scorer, ScriptedProposer(), StepJournal()
    ).run()
    assert calls.end_reason == "budget: max_llm_calls" and calls.usage.llm_calls == 3
    assert calls.result is not None and calls.result.descriptions is not None
    assert len(calls.result.descriptions.rounds) == 2

    evaluations = await DescriptionClimb(
        description_search(budget=Budget(max_evaluations=3)), scorer, ScriptedProposer(), StepJournal()
    ).run()
    assert evaluations.end_reason == "budget: max_evaluations"
    assert evaluations.usage.search_evaluations == 3  # the template alone, the first set, one round

    # The optimizer is told how many calls are left, so one request can not overspend.
    proposer = ScriptedProposer(llm_calls_per_reply=2)
    await DescriptionClimb(
        description_search(budget=Budget(max_llm_calls=5)), scorer, proposer, StepJournal()
    ).run()
    assert [c["max_llm_calls"] for c in proposer.calls] == [5, 3, 1]


async def test_an_optimizer_gone_after_the_first_set_leaves_a_partial_result(scorer: GrpcScorer) -> None:
    class Gone(ScriptedProposer):
        async def propose_descriptions(
            self, strategy: DescriptionStrategy, **kwargs: Any
        ) -> DescriptionProposal:
            if strategy is DescriptionStrategy.REFINE:
                raise SearchFailed("UNAVAILABLE", "optimizer unavailable")
            return await super().propose_descriptions(strategy, **kwargs)

    state = description_search()
    with pytest.raises(SearchFailed, match="optimizer unavailable"):
        await DescriptionClimb(state, scorer, Gone(), StepJournal()).run()
    assert state.result is not None and state.result.partial
    assert state.result.descriptions is not None and state.result.descriptions.evaluation_accuracy > 0


async def test_an_over_long_description_is_left_out_not_a_failed_search(scorer: GrpcScorer) -> None:
    """The scorer's 77-token context: a long LLM text once failed a benchmark search; it is now
    dropped from its class (a class left with none keeps its bare name) and the search goes on."""
    long_text = "{}, " + "with very many numbers 1.2.5.03-1789-64 " * 12

    class Verbose(ScriptedProposer):
        async def propose_descriptions(
            self, strategy: DescriptionStrategy, **kwargs: Any
        ) -> DescriptionProposal:
            proposal = await super().propose_descriptions(strategy, **kwargs)
            if strategy is not DescriptionStrategy.DESCRIBE:
                return proposal
            names = list(kwargs["class_names"])
            texts = {**proposal.descriptions, names[0]: ("a {} shape", long_text), names[1]: (long_text,)}
            return DescriptionProposal(texts, (), 1, 10, 5)

    state = await DescriptionClimb(
        description_search("a photo of a {}."), scorer, Verbose(), StepJournal()
    ).run()
    assert state.end_reason == "completed" and state.result is not None
    d = state.result.descriptions
    assert d is not None
    kept = {c.class_name: c.descriptions for c in d.classes}
    names = await scorer.class_names("demo")
    assert long_text not in {t for texts in kept.values() for t in texts}
    # The first set's score is that of the set without the long texts.
    pruned = {c: ("a photo of a {}.", "a {} shape") for c in names}
    pruned |= {names[0]: ("a {} shape",), names[1]: BARE, names[-1]: BARE}  # the last: never described
    (first,) = await scorer.evaluate_descriptions("demo", "train", {"s": pruned}, template="a photo of a {}.")
    assert (d.initial_selection_accuracy, state.iterations[0].best_accuracy) == (first.accuracy,) * 2
    assert names[1] in d.missing or any(names[1] in r.rewritten and r.accepted for r in d.rounds)

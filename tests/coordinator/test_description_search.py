"""The description search loop over a real in-process scorer (tiny CLIP) and a scripted proposer."""

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
from promptclimb.testing.tiny_clip import TINY_CLASSES, make_image_folder, make_tiny_model_dir
from services.coordinator.clients import DescriptionProposal, GrpcScorer
from services.coordinator.description_search import (
    BARE,
    DescriptionSearchConfig,
    run_description_search,
)

CLASSES = tuple(c.replace("_", " ") for c in TINY_CLASSES)
# Rewrites tried per round, for whatever classes the search asks to refine.
REWRITES = [
    ["a {} drawn in thick strokes", "a {} on a white card"],
    ["{}, seen from far away", "a blurry {}"],
    ["a bright {} pattern", "{}"],
    ["an old photo of a {}", "a {} in the dark"],
]


@dataclass
class ScriptedProposer:
    """Describes every class but the last; each refine rewrites what it is asked with the next wording."""

    calls: list[dict[str, Any]] = field(default_factory=list)

    async def propose_descriptions(self, strategy: DescriptionStrategy, **kwargs: Any) -> DescriptionProposal:
        self.calls.append({"strategy": strategy, **kwargs})
        if strategy is DescriptionStrategy.DESCRIBE:
            names = list(kwargs["class_names"])[:-1]
            return DescriptionProposal(
                {c: ("a photo of a {}.", "a {} shape") for c in names}, (CLASSES[-1],), 1, 10, 5
            )
        scored: Mapping[str, tuple[Sequence[str], float]] = kwargs["scored"]
        weakest = sorted(scored, key=lambda c: scored[c][1])[: kwargs["weakest_k"]]
        wording = tuple(REWRITES[(len(self.calls) - 2) % len(REWRITES)])
        return DescriptionProposal({c: wording for c in weakest}, (), 1, 10, 5)


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
    config = DescriptionSearchConfig(
        dataset="demo", class_names=CLASSES, template=template, rounds=4, weakest_k=2, seed=5
    )
    proposer = ScriptedProposer()
    result = await run_description_search(config, scorer, proposer)

    # The class the LLM never described is scored with its bare name, and reported.
    initial = {c: ("a photo of a {}.", "a {} shape") for c in CLASSES[:-1]} | {CLASSES[-1]: BARE}
    (first,) = await scorer.evaluate_descriptions(
        "demo", "train", {"s": initial}, template=template, per_class=True, top_confusions=50
    )
    assert result.initial_accuracy == first.accuracy
    # The first refine saw the scorer's own per-class accuracy and confusions of that set.
    refine = proposer.calls[1]
    assert refine["strategy"] is DescriptionStrategy.REFINE and refine["weakest_k"] == 2
    assert {c: a for c, (_, a) in refine["scored"].items()} == dict(
        zip(CLASSES, first.per_class_accuracy, strict=True)
    )
    assert tuple(refine["confusions"]) == first.confusions
    assert [c["seed"] for c in proposer.calls] == [5, 6, 7, 8, 9][: len(proposer.calls)]

    # Replay the rounds independently: a round wins only over the incumbent at its time.
    incumbent, best = dict(initial), (first.accuracy, -first.loss)
    for round_, call in zip(result.rounds, proposer.calls[1:], strict=True):
        weakest = sorted(call["scored"], key=lambda c: call["scored"][c][1])[:2]
        assert round_.rewritten == tuple(c for c in CLASSES if c in weakest)
        candidate = incumbent | {c: tuple(REWRITES[round_.index % len(REWRITES)]) for c in weakest}
        (tried,) = await scorer.evaluate_descriptions("demo", "train", {"s": candidate}, template=template)
        assert (round_.accuracy, round_.loss) == (tried.accuracy, tried.loss)
        assert round_.accepted == ((tried.accuracy, -tried.loss) > best)
        if round_.accepted:
            incumbent, best = candidate, (tried.accuracy, -tried.loss)
    assert result.descriptions == incumbent
    assert result.selection_accuracy == best[0]
    # The evaluation split, scored once for the pick, equals a direct call.
    (test,) = await scorer.evaluate_descriptions("demo", "test", {"s": incumbent}, template=template)
    assert result.evaluation_accuracy == test.accuracy
    assert result.missing == (() if result.descriptions[CLASSES[-1]] != BARE else (CLASSES[-1],))
    assert result.llm_calls == len(proposer.calls) and result.prompt_tokens == 10 * len(proposer.calls)

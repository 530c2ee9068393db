"""What-if replay: re-run a finished search from its journal under other stopping or picking rules.

The search's recorded LLM replies and scores drive the same :class:`HillClimb` again, so a rule
that only stops earlier (``patience``, ``min_delta``) or only changes the final pick
(``ensemble_k``, the selection objective) costs no LLM call and no selection scoring; a new pick is
scored once on the evaluation split (the only scoring a replay may do). A rule that would change
what the LLM is shown, or a replay that needs a reply the search never got, is refused, saying why.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.coordinator.pools import initial_templates
from services.coordinator.search import (
    HillClimb,
    ModelScorers,
    Proposal,
    ProposalRequest,
    Score,
    SearchConfig,
    SearchResult,
    SearchState,
    TemplateScorer,
)

# Settings a replay may change: none of them changes a request the LLM saw.
REPLAYABLE = ("patience", "min_delta", "ensemble_k", "objective")
# Why the others may not change (shown to the user).
_WHY_NOT = "it changes what the LLM is shown or what is scored during the search; start a new search"


class ReplayRefused(Exception):
    """The replay cannot be done without calling the LLM or scoring on the selection split."""


@dataclass
class _RecordedJournal:
    """The search's journal, read-only: a replay records nothing."""

    scores: Mapping[tuple[str, str], Score]
    proposals: Mapping[str, Proposal]

    def recorded_score(self, split: str, template: str) -> Score | None:
        return self.scores.get((split, template))

    async def record_scores(
        self, split: str, scores: Sequence[Score], restart: int, iteration: int, origin: str
    ) -> None:
        return None

    def recorded_proposal(self, key: str) -> Proposal | None:
        return self.proposals.get(key)

    async def record_proposal(self, key: str, proposal: Proposal) -> None:
        return None

    async def checkpoint(self, state: SearchState, event: str) -> None:
        return None


class _NoLLM:
    """The proposer of a replay: every reply must come from the journal."""

    async def propose(self, request: ProposalRequest) -> Proposal:
        raise ReplayRefused(
            "this rule needs LLM calls the search never made (it would run past where the search "
            "stopped); start a new search instead"
        )


@dataclass
class _EvaluationOnly:
    """The scorer of a replay: the evaluation split only, and only for what was not recorded."""

    scorer: TemplateScorer
    config: SearchConfig
    original: SearchResult | None
    scored: list[str] = field(default_factory=list)  # templates scored for this replay

    async def class_names(self, dataset: str) -> list[str]:
        return []  # only LLM requests use them, and a replay sends none

    async def score(
        self,
        dataset: str,
        split: str,
        templates: Sequence[str],
        on_chunk: Callable[[list[Score]], Awaitable[None]],
        *,
        per_image: bool = False,  # asked for on the selection split only, which a replay refuses
    ) -> list[Score]:
        if split != self.config.evaluation_split:
            raise ReplayRefused(f"this rule needs new scores on the selection split {split!r}")
        self.scored.extend(templates)
        return await self.scorer.score(dataset, split, templates, on_chunk)

    async def ensemble_accuracy(self, dataset: str, split: str, templates: Sequence[str]) -> float:
        if split != self.config.evaluation_split:
            # The greedy ensemble's forward selection: ensembles, not template scores (none recorded).
            return await self.scorer.ensemble_accuracy(dataset, split, templates)
        if self.original is not None and tuple(templates) == self.original.ensemble_templates:
            return self.original.ensemble_evaluation_accuracy
        if self.original is not None and tuple(templates) == self.original.greedy_ensemble_templates:
            return self.original.greedy_ensemble_evaluation_accuracy
        self.scored.append(f"ensemble of {len(templates)}")
        return await self.scorer.ensemble_accuracy(dataset, split, templates)


@dataclass
class Replay:
    """The replayed state and what the replay itself cost."""

    state: SearchState
    scored: list[str]  # evaluation-split scores the replay made (a new pick, a new ensemble)


def refuse_unless_replayable(name: str) -> None:
    """Raise :class:`ReplayRefused`, saying why, for a setting a replay may not change."""
    if name not in REPLAYABLE:
        raise ReplayRefused(f"{name} cannot be replayed: {_WHY_NOT}")


def replay_config(config: SearchConfig, overrides: Mapping[str, Any]) -> SearchConfig:
    """``config`` with ``overrides``; raises :class:`ReplayRefused` for a setting a replay may not change."""
    for name in overrides:
        refuse_unless_replayable(name)
    return dataclasses.replace(config, **overrides)


async def replay(
    config: SearchConfig,
    original: SearchResult | None,
    scores: Mapping[tuple[str, str], Score],
    proposals: Mapping[str, Proposal],
    scorer: TemplateScorer,
    overrides: Mapping[str, Any],
    started_at: float,
) -> Replay:
    """Run the search again from its journal with ``overrides``; nothing is stored."""
    changed = replay_config(config, overrides)
    # The journal holds the selection scores as the search ranked them (aggregated over its
    # objective's models): the replay needs only the search's own model, for the evaluation split.
    # Transfer scores are not replayed.
    own = scorer.scorer_of(config.model) if isinstance(scorer, ModelScorers) else scorer
    climbed = dataclasses.replace(changed, model="", transfer_models=(), objective_models=())
    evaluation_only = _EvaluationOnly(own, climbed, original)
    climb = HillClimb(
        SearchState(climbed),
        evaluation_only,
        _NoLLM(),
        _RecordedJournal(scores, proposals),
        initial_templates,
        started_at=started_at,
        clock=lambda: started_at,  # a duration budget judged as when the search ran: it never fires here
    )
    state = await climb.run()
    state.config = changed
    return Replay(state, evaluation_only.scored)

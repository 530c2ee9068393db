"""The description search (issue 18): describe every class, then refine the weakest, durably.

A search with ``SearchConfig.descriptions`` set runs this instead of the template hill climb, under
the same runner (lease, state machine, checkpoints, cancel, budgets, partial results)::

    seeding:    the slot template alone (the class name in its slot) scored on the selection split
    proposing:  DESCRIBE: k descriptions per class (the optimizer batches classes per call)
    scoring:    the described set on the selection split, with per-class accuracy and confusions
    for round i in 1..rounds:
        proposing:  REFINE: the weakest classes, their accuracy and confusions -> rewritten ones
        scoring:    the rewritten set; it replaces the incumbent only when it scores higher
                    (accuracy, then the lower loss)
    evaluating: the pick and the template alone, each scored once on the evaluation split

A class the LLM never described keeps the bare class name (``"{}"``) and is reported in
``missing``. Durability is the template search's: every optimizer reply and every description
set's score is journaled under its step's key (``llm/describe``, ``llm/refine/2``,
``score/selection/round-2``, ...) before it is used, and a resumed search runs from the start
again, taking each recorded step from the journal and calling out only for the first step that
was never recorded. The template-alone scores go through the template journal, so they show in
the search's history.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from promptclimb.common.vocabulary import DescriptionStrategy, Phase
from services.coordinator.clients import DescriptionProposal, DescriptionScore
from services.coordinator.search import (
    BudgetExhausted,
    ClassDescriptions,
    Converged,
    DescriptionResult,
    DescriptionRound,
    DescriptionSpec,
    IterationSummary,
    Journal,
    ModelScorers,
    Score,
    ScoredTemplate,
    SearchConfig,
    SearchFailed,
    SearchResult,
    SearchState,
    StopSearch,
    TemplateScorer,
    call_seed,
)

Descriptions = dict[str, tuple[str, ...]]  # class name -> descriptions ("{}" = the class name)
BARE = ("{}",)  # what a class the LLM never described is scored with
SLOT = "{}"
DESCRIBE_KEY = "llm/describe"


def refine_key(index: int) -> str:
    """The journal key of refine round ``index``'s LLM reply."""
    return f"llm/refine/{index}"


def score_key(split: str, step: str) -> str:
    """The journal key of a description set's score (``split``: "selection" or "evaluation")."""
    return f"score/{split}/{step}"


class DescriptionScorer(TemplateScorer, Protocol):
    """Scores templates and description sets (:class:`~services.coordinator.clients.GrpcScorer`)."""

    async def evaluate_descriptions(
        self,
        dataset: str,
        split: str,
        sets: Mapping[str, Mapping[str, Sequence[str]]],
        *,
        template: str = "",
        per_class: bool = False,
        top_confusions: int = 0,
        drop_overlong: bool = False,
    ) -> list[DescriptionScore]:
        """One score per set, in order."""
        ...


class DescriptionProposer(Protocol):
    """Writes descriptions (:class:`~services.coordinator.clients.GrpcProposer` is one)."""

    async def propose_descriptions(
        self,
        strategy: DescriptionStrategy,
        *,
        class_names: Sequence[str] = (),
        scored: Mapping[str, tuple[Sequence[str], float]] | None = None,
        confusions: Sequence[tuple[str, str, int]] = (),
        task_description: str = "",
        descriptions_per_class: int | None = None,
        weakest_k: int | None = None,
        max_classes_per_call: int | None = None,
        max_llm_calls: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
    ) -> DescriptionProposal:
        """Descriptions for the classes asked (describe) or the weakest ones (refine)."""
        ...


class StepJournal(Journal, Protocol):
    """A :class:`~services.coordinator.search.Journal` that also keeps description search steps."""

    def recorded_step(self, key: str) -> dict[str, Any] | None:
        """The step recorded under ``key`` (JSON), or None."""
        ...

    async def record_step(self, key: str, payload: dict[str, Any]) -> None:
        """Persist a step before the search uses it."""
        ...


@dataclass
class DescriptionClimb:
    """Runs one description search to the end (or to a budget) against the ports."""

    state: SearchState
    scorer: DescriptionScorer | ModelScorers
    proposer: DescriptionProposer
    journal: StepJournal
    started_at: float = field(default_factory=time.time)
    clock: Callable[[], float] = time.time
    _names: list[str] = field(default_factory=list)
    _scorer: DescriptionScorer | None = None
    _incumbent: Descriptions | None = None
    _score: DescriptionScore | None = None
    _initial: float = 0.0
    _missing: tuple[str, ...] = ()
    _rounds: list[DescriptionRound] = field(default_factory=list)

    @property
    def config(self) -> SearchConfig:
        """The search's specification."""
        return self.state.config

    @property
    def spec(self) -> DescriptionSpec:
        """The description knobs."""
        assert self.config.descriptions is not None
        return self.config.descriptions

    @property
    def base_template(self) -> str:
        """The slot template alone: the class name in it (the bare name without a template)."""
        return self.spec.template or SLOT

    async def run(self) -> SearchState:
        """Seed, describe, refine, evaluate; returns the final state (``result`` and ``end_reason`` set)."""
        scorer = self.scorer
        if isinstance(scorer, ModelScorers):
            scorer = scorer.scorer_of(self.config.model)  # type: ignore[assignment]
        self._scorer = scorer  # type: ignore[assignment]
        self._names = await self._port.class_names(self.config.dataset)
        await self._seed()
        try:
            await self._describe()
            for index in range(self.spec.rounds):
                if self._score is not None and all(a >= 1.0 for a in self._score.per_class_accuracy):
                    break  # every class right: nothing to rewrite
                await self._refine(index)
                if self.converged():
                    raise Converged()
            self.state.end_reason = "completed"
        except StopSearch as done:
            if self._incumbent is None:
                raise SearchFailed(
                    "RESOURCE_EXHAUSTED",
                    f"{done.reason} reached before the first description set was scored",
                ) from done
            self.state.end_reason = done.reason
        except SearchFailed as failure:
            if failure.salvageable and self._incumbent is not None:
                try:
                    await self._evaluate(partial=True)
                except SearchFailed:
                    self.state.result = None
            raise
        await self._evaluate()
        return self.state

    def converged(self) -> bool:
        """``patience`` refine rounds in a row kept nothing (or raised accuracy by <= ``min_delta``)."""
        if self.config.patience <= 0:
            return False
        since, best = 0, self._initial
        for r in self._rounds:
            if r.accepted and r.accuracy > best + self.config.min_delta:
                since, best = 0, r.accuracy
            else:
                since += 1
        return since >= self.config.patience

    # -- steps ----------------------------------------------------------------------------------

    @property
    def _port(self) -> DescriptionScorer:
        assert self._scorer is not None
        return self._scorer

    async def _seed(self) -> None:
        self.state.phase = Phase.SEEDING
        await self.journal.checkpoint(self.state, "phase")
        (score,) = await self._templates(self.config.selection_split, self.base_template, count=True)
        if score.error is not None:
            raise SearchFailed("INVALID_ARGUMENT", f"the slot template was rejected: {score.error}")
        self.state.history.append(
            ScoredTemplate(
                score.template, score.accuracy, score.correct, score.total, 0, 0, "pool", score.loss
            )
        )
        await self.journal.checkpoint(self.state, "phase")

    async def _describe(self) -> None:
        cfg, spec = self.config, self.spec
        self.state.phase = Phase.PROPOSING
        await self.journal.checkpoint(self.state, "phase")
        t0 = self.clock()
        first = await self._propose(
            DESCRIBE_KEY,
            DescriptionStrategy.DESCRIBE,
            class_names=self._names,
            descriptions_per_class=spec.descriptions_per_class,
        )
        current = {c: first.descriptions.get(c) or BARE for c in self._names}
        self._missing = tuple(c for c in self._names if c not in first.descriptions)
        t1 = self.clock()
        self.state.phase = Phase.SCORING
        await self.journal.checkpoint(self.state, "phase")
        score, current = await self._score_set(
            score_key("selection", "initial"), cfg.selection_split, current
        )
        self._incumbent, self._score, self._initial = current, score, score.accuracy
        self._missing = tuple(c for c in self._names if c in self._missing or current[c] == BARE)
        self._summarise(0, score.accuracy, t1 - t0, self.clock() - t1)
        await self.journal.checkpoint(self.state, "iteration")

    async def _refine(self, index: int) -> None:
        cfg, spec = self.config, self.spec
        assert self._incumbent is not None and self._score is not None
        current, score = self._incumbent, self._score
        self.state.iteration = index + 1
        self.state.phase = Phase.PROPOSING
        await self.journal.checkpoint(self.state, "phase")
        t0 = self.clock()
        per_class = dict(zip(self._names, score.per_class_accuracy, strict=True))
        proposal = await self._propose(
            refine_key(index),
            DescriptionStrategy.REFINE,
            scored={c: (current[c], per_class[c]) for c in self._names},
            confusions=score.confusions,
            descriptions_per_class=spec.descriptions_per_class,
            weakest_k=spec.weakest_k,
        )
        rewritten = tuple(c for c in self._names if c in proposal.descriptions)
        t1 = self.clock()
        if not rewritten:
            self._rounds.append(DescriptionRound(index + 1, (), score.accuracy, score.loss, False))
            self._summarise(index + 1, score.accuracy, t1 - t0, 0.0)
            await self.journal.checkpoint(self.state, "iteration")
            return
        candidate = {**current, **{c: proposal.descriptions[c] for c in rewritten}}
        self.state.phase = Phase.SCORING
        await self.journal.checkpoint(self.state, "phase")
        tried, candidate = await self._score_set(
            score_key("selection", f"round-{index}"), cfg.selection_split, candidate
        )
        better = (tried.accuracy, -tried.loss) > (score.accuracy, -score.loss)
        self._rounds.append(DescriptionRound(index + 1, rewritten, tried.accuracy, tried.loss, better))
        if better:
            self._incumbent, self._score = candidate, tried
            self._missing = tuple(
                c for c in self._names if (c in self._missing and c not in rewritten) or candidate[c] == BARE
            )
        self._summarise(index + 1, tried.accuracy, t1 - t0, self.clock() - t1)
        await self.journal.checkpoint(self.state, "iteration")

    async def _evaluate(self, *, partial: bool = False) -> None:
        cfg, spec = self.config, self.spec
        assert self._incumbent is not None and self._score is not None
        self.state.phase = Phase.EVALUATING
        await self.journal.checkpoint(self.state, "phase")
        (plain,) = await self._templates(cfg.evaluation_split, self.base_template, count=False)
        picked, _ = await self._score_set(
            score_key("evaluation", "pick"), cfg.evaluation_split, self._incumbent, selection=False
        )
        score = self._score
        described = DescriptionResult(
            classes=tuple(
                ClassDescriptions(c, self._incumbent[c], a)
                for c, a in zip(self._names, score.per_class_accuracy, strict=True)
            ),
            selection_accuracy=score.accuracy,
            evaluation_accuracy=picked.accuracy,
            template=spec.template,
            template_selection_accuracy=self.state.history[0].accuracy,
            template_evaluation_accuracy=plain.accuracy,
            initial_selection_accuracy=self._initial,
            missing=self._missing,
            rounds=tuple(self._rounds),
            from_search=spec.from_search,
        )
        self.state.result = SearchResult(
            self.state.history[0], plain.accuracy, (), 0.0, partial=partial, descriptions=described
        )
        self.state.phase = Phase.DONE

    # -- journaled calls ------------------------------------------------------------------------

    async def _propose(self, key: str, strategy: DescriptionStrategy, **kwargs: Any) -> DescriptionProposal:
        cfg = self.config
        recorded = self.journal.recorded_step(key)
        if recorded is not None:
            proposal = DescriptionProposal.from_json(recorded)
        else:
            self._check_budget(llm=True)
            b, u = cfg.budget, self.state.usage
            proposal = await self.proposer.propose_descriptions(
                strategy,
                task_description=cfg.task_description or f"images of the dataset '{cfg.dataset}'",
                max_classes_per_call=self.spec.max_classes_per_call or None,
                max_llm_calls=b.max_llm_calls - u.llm_calls if b.max_llm_calls else None,
                temperature=cfg.temperature,
                seed=call_seed(cfg.seed, key) if cfg.seed else None,
                **kwargs,
            )
            await self.journal.record_step(key, proposal.to_json())
        u = self.state.usage
        u.llm_calls += proposal.llm_calls
        u.prompt_tokens += proposal.prompt_tokens
        u.completion_tokens += proposal.completion_tokens
        u.cost_usd += proposal.cost_usd
        return proposal

    async def _score_set(
        self, key: str, split: str, descriptions: Descriptions, *, selection: bool = True
    ) -> tuple[DescriptionScore, Descriptions]:
        """The set's score and the set as scored: a text over the scorer's token context is left
        out of its class (a class left with none keeps its bare name), not a reason to fail."""
        recorded = self.journal.recorded_step(key)
        if recorded is not None:
            score = DescriptionScore.from_json(recorded)
        else:
            if selection:
                self._check_budget(evaluations=1)
            (score,) = await self._port.evaluate_descriptions(
                self.config.dataset,
                split,
                {"descriptions": descriptions},
                template=self.spec.template,
                per_class=True,
                top_confusions=self.spec.top_confusions if selection else 0,
                drop_overlong=True,
            )
            if score.error is not None:
                raise SearchFailed("INTERNAL", f"the scorer rejected a description set: {score.error}")
            await self.journal.record_step(key, score.to_json())
        self.state.usage.evaluations += 1
        if selection:
            self.state.usage.search_evaluations += 1
        dropped = {c: set(texts) for c, texts in score.dropped}
        scored = {
            c: tuple(t for t in ts if t not in dropped.get(c, ())) or BARE for c, ts in descriptions.items()
        }
        return score, scored

    async def _templates(self, split: str, template: str, *, count: bool) -> list[Score]:
        """The slot template alone on ``split``, through the template journal (so in the history)."""
        recorded = self.journal.recorded_score(split, template)
        if recorded is None:
            if count:
                self._check_budget(evaluations=1)

            async def checkpoint(chunk: list[Score]) -> None:
                await self.journal.record_scores(split, chunk, 0, 0, "pool" if count else "evaluation")

            scored = await self._port.score(self.config.dataset, split, [template], checkpoint)
            if not scored:
                raise SearchFailed("INTERNAL", f"the scorer returned no score for {template!r}")
            recorded = scored[0]
        self.state.usage.evaluations += 1
        if count:
            self.state.usage.search_evaluations += 1
        return [recorded]

    def _check_budget(self, *, llm: bool = False, evaluations: int = 0) -> None:
        """Raise :class:`BudgetExhausted` when the next live step would exceed a budget."""
        b, u = self.config.budget, self.state.usage
        if b.max_duration_seconds and self.clock() - self.started_at >= b.max_duration_seconds:
            raise BudgetExhausted("max_duration")
        if llm and b.max_llm_calls and u.llm_calls >= b.max_llm_calls:
            raise BudgetExhausted("max_llm_calls")
        if llm and b.max_tokens and u.tokens >= b.max_tokens:
            raise BudgetExhausted("max_tokens")
        if evaluations and b.max_evaluations and u.search_evaluations + evaluations > b.max_evaluations:
            raise BudgetExhausted("max_evaluations")

    def _summarise(self, iteration: int, tried: float, propose_s: float, score_s: float) -> None:
        if any(s.iteration == iteration for s in self.state.iterations):
            return
        assert self._score is not None
        self.state.iterations.append(
            IterationSummary(
                0,
                iteration,
                self._score.accuracy,
                tried,
                self.state.usage.search_evaluations,
                propose_s,
                score_s,
                [DescriptionStrategy.DESCRIBE.value if iteration == 0 else DescriptionStrategy.REFINE.value],
            )
        )

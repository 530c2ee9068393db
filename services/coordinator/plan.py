"""What a search will spend, before it is spent (StartSearch ``validate_only``; ``--dry-run``).

A description search's calls and tokens grow with the number of classes, so its plan asks the
optimizer (PlanDescriptions: the real batching and token counts, no LLM call) for the describe
step and for one refine round, whose classes carry placeholder descriptions of typical length,
and multiplies the round by ``rounds``. A template search's LLM calls and evaluations follow from
its loop; its tokens are not estimated. Cost is priced as the LLM replies are
(:meth:`~services.coordinator.clients.GrpcProposer.cost`, the coordinator's ``--llm-price``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from promptclimb.common.vocabulary import DescriptionStrategy, Strategy
from services.coordinator.clients import DescriptionPlan
from services.coordinator.pools import initial_templates
from services.coordinator.search import (
    MAX_EMPTY_ATTEMPTS,
    NO_LLM_STRATEGIES,
    MixMode,
    ModelScorers,
    SearchConfig,
    TemplateScorer,
    split_shares,
)

# A refine round's classes are planned with k descriptions of about this length (CuPL-style
# descriptions are one short sentence; the optimizer asks for at most 12 words).
PLACEHOLDER_DESCRIPTION = "{}, which shows its usual shape, colour and parts in a photo"


@dataclass(frozen=True)
class Plan:
    """The domain twin of the proto ``SearchPlan``."""

    llm_calls: int
    max_llm_calls: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    evaluations: int
    num_classes: int
    stopped_by: tuple[str, ...]
    basis: str
    priced_as: str


class Planner(Protocol):
    """The optimizer, as the plan sees it (:class:`~services.coordinator.clients.GrpcProposer`)."""

    prices: Mapping[str, tuple[float, float]]

    async def plan_descriptions(
        self,
        strategy: DescriptionStrategy,
        *,
        class_names: Sequence[str] = (),
        scored: Mapping[str, tuple[Sequence[str], float]] | None = None,
        task_description: str = "",
        descriptions_per_class: int | None = None,
        weakest_k: int | None = None,
        max_classes_per_call: int | None = None,
    ) -> DescriptionPlan:
        """What one ProposeDescriptions request would take."""
        ...

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        """USD at the configured price of ``model``."""
        ...


def priced_as(prices: Mapping[str, tuple[float, float]], model: str) -> str:
    """Which price entry a reply from ``model`` is charged at ("" = none: cost 0)."""
    return model if model in prices else "*" if "*" in prices else ""


async def plan_search(config: SearchConfig, scorer: TemplateScorer | ModelScorers, planner: Planner) -> Plan:
    """The plan of ``config`` (raises :class:`~services.coordinator.search.SearchFailed` when the
    dataset or model is unknown, as the search itself would)."""
    if isinstance(scorer, ModelScorers):
        scorer = scorer.scorer_of(config.model)
    names = await scorer.class_names(config.dataset)
    if config.descriptions is not None:
        return await _description_plan(config, names, planner)
    return _template_plan(config, len(names))


async def _description_plan(config: SearchConfig, names: Sequence[str], planner: Planner) -> Plan:
    spec = config.descriptions
    assert spec is not None
    task = config.task_description or f"images of the dataset '{config.dataset}'"
    per_call = spec.max_classes_per_call or None
    describe = await planner.plan_descriptions(
        DescriptionStrategy.DESCRIBE,
        class_names=names,
        task_description=task,
        descriptions_per_class=spec.descriptions_per_class,
        max_classes_per_call=per_call,
    )
    steps = [describe]
    if spec.rounds:
        placeholders = (PLACEHOLDER_DESCRIPTION,) * spec.descriptions_per_class
        refine = await planner.plan_descriptions(
            DescriptionStrategy.REFINE,
            scored={c: (placeholders, 0.0) for c in names},
            task_description=task,
            descriptions_per_class=spec.descriptions_per_class,
            weakest_k=spec.weakest_k,
            max_classes_per_call=per_call,
        )
        steps += [refine] * spec.rounds
    calls = sum(s.llm_calls for s in steps)
    prompt = sum(s.prompt_tokens for s in steps)
    completion = sum(s.completion_tokens for s in steps)
    evaluations = 2 + spec.rounds  # the template alone, the first set, one set per round
    return Plan(
        llm_calls=calls,
        max_llm_calls=sum(s.max_llm_calls for s in steps),
        prompt_tokens=prompt,
        completion_tokens=completion,
        cost_usd=planner.cost(describe.model, prompt, completion),
        evaluations=evaluations,
        num_classes=len(names),
        stopped_by=_stopped_by(config, calls, prompt + completion, evaluations),
        basis=(
            f"describe: {describe.llm_calls} calls for {len(names)} classes "
            f"({', '.join(map(str, describe.classes_per_call))} per call); "
            f"{spec.rounds} refine rounds of {steps[-1].llm_calls if spec.rounds else 0} calls "
            f"({min(spec.weakest_k, len(names))} classes each, placeholder descriptions); prompt tokens "
            "as the optimizer counts them, completion tokens the reply room it reserves (an upper "
            "bound); no early stop"
        ),
        priced_as=priced_as(planner.prices, describe.model),
    )


def _template_plan(config: SearchConfig, num_classes: int) -> Plan:
    per_restart = 0
    for iteration in range(1, config.iterations + 1):
        if not config.mix:
            asked: list[Strategy] = [config.strategy]
        elif config.mix_mode is MixMode.BANDIT:  # one strategy per iteration: an LLM one, at most
            asked = [next((s for s in config.mix if s not in NO_LLM_STRATEGIES), config.mix[0])]
        else:
            turn = iteration - 1
            asked = [s for s, _ in split_shares(config.mix, config.templates_per_iteration, turn)]
        per_restart += sum(1 for s in asked if s not in NO_LLM_STRATEGIES)
    calls = per_restart * config.restarts + (1 if config.llm_starters else 0)
    pool = config.llm_starters or len(initial_templates(config))
    evaluations = pool + config.restarts * config.iterations * config.templates_per_iteration
    return Plan(
        llm_calls=calls,
        max_llm_calls=calls * MAX_EMPTY_ATTEMPTS,
        prompt_tokens=0,
        completion_tokens=0,
        cost_usd=0.0,
        evaluations=evaluations,
        num_classes=num_classes,
        stopped_by=_stopped_by(config, calls, 0, evaluations),
        basis=(
            f"{config.restarts} restarts x {config.iterations} iterations, "
            f"{config.templates_per_iteration} templates each, after a pool of {pool}; tokens and cost "
            "are not estimated for a template search (they depend on the replies)"
        ),
        priced_as="",
    )


def _stopped_by(config: SearchConfig, calls: int, tokens: int, evaluations: int) -> tuple[str, ...]:
    b = config.budget
    stops = []
    if b.max_llm_calls and calls > b.max_llm_calls:
        stops.append("max_llm_calls")
    if b.max_tokens and tokens > b.max_tokens:
        stops.append("max_tokens")
    if b.max_evaluations and evaluations > b.max_evaluations:
        stops.append("max_evaluations")
    return tuple(stops)

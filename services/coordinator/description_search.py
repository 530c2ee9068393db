"""The description search loop (issue 18, item 3 started): describe every class, then refine the weakest.

Pure domain logic over two ports, no store and no gRPC: ``describe`` writes k descriptions per
class, the set is scored on the selection split (per-class accuracy and confusions), then each
round ``refine`` rewrites the weakest classes and the rewritten set replaces the incumbent only
when it scores higher (accuracy, then the lower loss). The evaluation split is scored once, for
the pick. A class the LLM never described keeps the bare class name (``"{}"``, the plain prompt)
and is reported in ``missing``.

Not yet here (the rest of item 3): the coordinator's state machine, journal and replay, budgets,
resume and cancel; this loop is what a description search mode would checkpoint step by step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from promptclimb.common.vocabulary import DescriptionStrategy
from services.coordinator.clients import DescriptionProposal, DescriptionScore

Descriptions = dict[str, tuple[str, ...]]  # class name -> descriptions ("{}" = the class name)
BARE = ("{}",)  # what a class the LLM never described is scored with


class DescriptionScorer(Protocol):
    """Scores description sets (:class:`~services.coordinator.clients.GrpcScorer` is one)."""

    async def evaluate_descriptions(
        self,
        dataset: str,
        split: str,
        sets: Mapping[str, Mapping[str, Sequence[str]]],
        *,
        template: str = "",
        per_class: bool = False,
        top_confusions: int = 0,
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


@dataclass(frozen=True)
class DescriptionSearchConfig:
    """What one description search does."""

    dataset: str
    class_names: tuple[str, ...]
    selection_split: str = "train"
    evaluation_split: str = "test"
    template: str = ""  # e.g. a template search's best: each description goes into its slot
    task_description: str = ""
    descriptions_per_class: int = 3
    rounds: int = 3
    weakest_k: int = 3
    top_confusions: int = 50
    seed: int = 0


@dataclass(frozen=True)
class DescriptionRound:
    """One refine round: which classes were rewritten, the rewritten set's score, whether it won."""

    index: int
    rewritten: tuple[str, ...]
    accuracy: float
    loss: float
    accepted: bool


@dataclass
class DescriptionSearchResult:
    """The picked descriptions, their selection and evaluation accuracy, and how they came about."""

    descriptions: Descriptions
    selection_accuracy: float
    evaluation_accuracy: float
    per_class_accuracy: tuple[float, ...]
    missing: tuple[str, ...]
    initial_accuracy: float
    rounds: list[DescriptionRound] = field(default_factory=list)
    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


class DescriptionSearchFailed(Exception):
    """The scorer rejected a description set the search built (its message says why)."""


async def run_description_search(
    config: DescriptionSearchConfig, scorer: DescriptionScorer, proposer: DescriptionProposer
) -> DescriptionSearchResult:
    """Describe, score, refine ``config.rounds`` times keeping only improvements, evaluate the pick."""
    names = list(config.class_names)
    first = await proposer.propose_descriptions(
        DescriptionStrategy.DESCRIBE,
        class_names=names,
        task_description=config.task_description,
        descriptions_per_class=config.descriptions_per_class,
        seed=config.seed,
    )
    current: Descriptions = {c: first.descriptions.get(c) or BARE for c in names}
    result = DescriptionSearchResult(
        current, 0.0, 0.0, (), tuple(c for c in names if c not in first.descriptions), 0.0
    )
    _count(result, first)
    score = await _score(scorer, config, config.selection_split, current)
    result.initial_accuracy = score.accuracy
    for index in range(config.rounds):
        per_class = dict(zip(names, score.per_class_accuracy, strict=True))
        if all(a >= 1.0 for a in per_class.values()):
            break  # every class right: nothing to rewrite
        proposal = await proposer.propose_descriptions(
            DescriptionStrategy.REFINE,
            scored={c: (current[c], per_class[c]) for c in names},
            confusions=score.confusions,
            task_description=config.task_description,
            descriptions_per_class=config.descriptions_per_class,
            weakest_k=config.weakest_k,
            seed=config.seed + 1 + index,
        )
        _count(result, proposal)
        rewritten = tuple(c for c in names if c in proposal.descriptions)
        if not rewritten:
            result.rounds.append(DescriptionRound(index, (), score.accuracy, score.loss, False))
            continue
        candidate = {**current, **{c: proposal.descriptions[c] for c in rewritten}}
        tried = await _score(scorer, config, config.selection_split, candidate)
        better = (tried.accuracy, -tried.loss) > (score.accuracy, -score.loss)
        result.rounds.append(DescriptionRound(index, rewritten, tried.accuracy, tried.loss, better))
        if better:
            current, score = candidate, tried
            result.missing = tuple(c for c in result.missing if c not in rewritten)
    evaluation = await _score(scorer, config, config.evaluation_split, current, confusions=False)
    result.descriptions = current
    result.selection_accuracy = score.accuracy
    result.per_class_accuracy = score.per_class_accuracy
    result.evaluation_accuracy = evaluation.accuracy
    return result


async def _score(
    scorer: DescriptionScorer,
    config: DescriptionSearchConfig,
    split: str,
    descriptions: Descriptions,
    *,
    confusions: bool = True,
) -> DescriptionScore:
    (score,) = await scorer.evaluate_descriptions(
        config.dataset,
        split,
        {"descriptions": descriptions},
        template=config.template,
        per_class=True,
        top_confusions=config.top_confusions if confusions else 0,
    )
    if score.error is not None:
        raise DescriptionSearchFailed(f"the scorer rejected the description set: {score.error}")
    return score


def _count(result: DescriptionSearchResult, proposal: DescriptionProposal) -> None:
    result.llm_calls += proposal.llm_calls
    result.prompt_tokens += proposal.prompt_tokens
    result.completion_tokens += proposal.completion_tokens
    result.cost_usd += proposal.cost_usd

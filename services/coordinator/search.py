"""The paper's hill-climbing prompt search as a pure, resumable algorithm.

No gRPC and no database here: the search talks to the world through three ports —
:class:`TemplateScorer` (the CLIP scorer), :class:`TemplateProposer` (the LLM optimizer) and
:class:`Journal` (durable records). Durability works by *replay*: the algorithm is deterministic
given the recorded LLM replies and scores, so a resumed search runs from the start again, takes
every recorded proposal and score from the journal instead of calling out, and continues live
from the first step that was never recorded. No scored template is lost and no recorded LLM
reply is asked for again.

Shape of a search::

    seeding:   pool templates (named, user or LLM starters) scored on the selection split
    for restart r in 0..restarts-1:          (the LLM conversation starts afresh)
        for iteration i in 1..iterations:
            proposing: best-k / worst-k (or the whole history) -> LLM -> new templates
            scoring:   new templates scored on the selection split, added to the shared pool
    evaluating: the best template scored ONCE on the evaluation split, plus the top-k ensemble

The pool is shared across restarts (the LLM always sees everything scored so far); a restart
only resets the conversation, which is what keeps a long chat from drifting.

Several strategies can propose in one search (``mix``): SPLIT asks each for its share of every
iteration's templates; BANDIT asks one per iteration, chosen by Thompson sampling of how often its
templates made a new best -- computed from the history and the iteration summaries with a seed
fixed per (search seed, restart, iteration), so a replay makes the same choices.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from promptclimb.common.ranking import rank_key
from promptclimb.common.vocabulary import (
    DEFAULT_DESCRIPTIONS_PER_CLASS,
    DEFAULT_WEAKEST_K,
    Objective,
    Phase,
    Strategy,
)
from services.coordinator.confidence import PerImage, confidently_better, tied

__all__ = ["Objective", "Phase", "Strategy"]  # re-exported: the search's vocabulary is the shared one

# Strategies that never call the LLM: the LLM-call and token budgets do not stop them.
NO_LLM_STRATEGIES = frozenset({Strategy.EDIT})

DEFAULT_OBJECTIVE_WEIGHT = 0.05  # blended fitness: 1 nat of cross-entropy is worth 5 accuracy points


def objective_key(t: ScoredTemplate, objective: Objective, weight: float) -> tuple[float, ...]:
    """Sort key, best first, of a scored template under ``objective`` (earlier wins what ties remain).

    CONFIDENT ranks by accuracy then loss here; its best is the incumbent of
    :meth:`SearchState.confident_best`, which :meth:`SearchState.top` puts first.
    """
    if objective is Objective.ACCURACY:
        return (-t.accuracy,)
    if objective is Objective.BLENDED:
        # A score without a loss (from a scorer that sends none) competes on its accuracy alone.
        return (-(t.accuracy - weight * (t.loss or 0.0)),)
    return t.rank_key()


class Aggregate(StrEnum):
    """How a multi-model objective combines each candidate's scores on several models."""

    MEAN = "mean"  # mean accuracy and mean loss
    MIN = "min"  # the worst model's score: one prompt that holds up on every backbone


class MixMode(StrEnum):
    """How the strategies of a mix share a search's iterations."""

    SPLIT = "split"  # every iteration, each strategy proposes its share of the templates
    BANDIT = "bandit"  # every iteration, one strategy proposes them all (Thompson sampling)


class SearchFailed(Exception):
    """A step could not be completed (after retries); the search ends FAILED with ``code``.

    ``salvageable``: whether the search may still score its best template on the evaluation split
    (a partial result) before it ends; not when the store itself is gone.
    """

    salvageable = True

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code  # a grpc.StatusCode name, e.g. "UNAVAILABLE", "NOT_FOUND"
        self.message = message


@dataclass(frozen=True)
class Budget:
    """Limits on one search; 0 means unlimited."""

    max_llm_calls: int = 0
    max_tokens: int = 0
    max_evaluations: int = 0  # templates scored on the selection split during the search
    max_duration_seconds: float = 0.0


@dataclass(frozen=True)
class DescriptionSpec:
    """A description search's own knobs (``SearchConfig.descriptions``; proto ``DescriptionSearchSpec``)."""

    descriptions_per_class: int = DEFAULT_DESCRIPTIONS_PER_CLASS
    rounds: int = 3  # refine rounds after the first descriptions; 0 = describe only
    weakest_k: int = DEFAULT_WEAKEST_K
    top_confusions: int = 50  # confusions shown to the LLM per round
    max_classes_per_call: int = 0  # 0 = the optimizer's default
    template: str = ""  # the slot template every description goes into; "" = scored as they are
    from_search: str = ""  # "searches/{id}" whose best template ``template`` is (resolved at start)


@dataclass(frozen=True)
class SearchConfig:
    """A validated search specification (the domain twin of the proto ``SearchSpec``)."""

    dataset: str
    selection_split: str = "train"
    evaluation_split: str = "test"
    strategy: Strategy = Strategy.CONTRAST
    best_k: int = 3
    worst_k: int = 3
    temperature: float | None = None
    named_pool: str | None = None
    user_templates: tuple[str, ...] = ()
    llm_starters: int = 0
    restarts: int = 1
    iterations: int = 10
    templates_per_iteration: int = 1
    budget: Budget = Budget()
    seed: int = 0
    task_description: str = ""
    ensemble_k: int = 3
    display_name: str = ""
    patience: int = 0  # stop after this many iterations without a new best; 0 = never
    min_delta: float = 0.0  # a new best must beat the old one by more than this (accuracy fraction)
    objective: Objective = Objective.ACCURACY_THEN_LOSS  # how the best template is picked
    objective_weight: float = DEFAULT_OBJECTIVE_WEIGHT  # BLENDED: accuracy - weight x loss
    mix: tuple[Strategy, ...] = ()  # several proposing strategies; empty = just ``strategy``
    mix_mode: MixMode = MixMode.SPLIT
    model: str = ""  # the scorer model selected and evaluated on; "" = the coordinator's default
    transfer_models: tuple[str, ...] = ()  # the found prompts scored on these too, after selection
    objective_models: tuple[str, ...] = ()  # selection scores aggregated over ``model`` and these
    objective_aggregate: Aggregate = Aggregate.MEAN
    descriptions: DescriptionSpec | None = None  # set: a description search, not a template search

    @property
    def names_models(self) -> bool:
        """Whether the search names any scorer model (else it runs on the default, as before models)."""
        return bool(self.model or self.transfer_models or self.objective_models)

    @property
    def selection_models(self) -> tuple[str, ...]:
        """The models whose selection scores rank the candidates: ``model`` first, then the others."""
        others = tuple(m for m in dict.fromkeys(self.objective_models) if m != self.model)
        return (self.model, *others)

    @property
    def proposers(self) -> tuple[Strategy, ...]:
        """The strategies that propose in the loop: the mix, else the one strategy."""
        return self.mix or (self.strategy,)

    def origin(self, strategy: Strategy) -> str:
        """What the history records as the origin of ``strategy``'s templates.

        ``"llm"`` for a search with one LLM strategy (as it always was); the strategy's name in a
        mix and for a strategy without an LLM.
        """
        return strategy.value if self.mix or strategy in NO_LLM_STRATEGIES else "llm"

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (stored with the search)."""
        d = asdict(self)
        d["strategy"] = self.strategy.value
        d["mix"] = [s.value for s in self.mix]
        d["mix_mode"] = self.mix_mode.value
        d["objective"] = self.objective.value
        d["objective_aggregate"] = self.objective_aggregate.value
        d["user_templates"] = list(self.user_templates)
        d["transfer_models"] = list(self.transfer_models)
        d["objective_models"] = list(self.objective_models)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SearchConfig:
        """Inverse of :meth:`to_json`."""
        d = dict(d)
        d["strategy"] = Strategy(d["strategy"])
        d["objective"] = Objective(d.get("objective", Objective.ACCURACY_THEN_LOSS))
        d["mix"] = tuple(Strategy(s) for s in d.get("mix", ()))  # configs stored before mixes: none
        d["mix_mode"] = MixMode(d.get("mix_mode", MixMode.SPLIT))
        d["user_templates"] = tuple(d.get("user_templates", ()))
        d["transfer_models"] = tuple(d.get("transfer_models", ()))  # configs stored before models: none
        d["objective_models"] = tuple(d.get("objective_models", ()))
        d["objective_aggregate"] = Aggregate(d.get("objective_aggregate", Aggregate.MEAN))
        d["budget"] = Budget(**d.get("budget", {}))
        described = d.get("descriptions")  # configs stored before description searches: none
        d["descriptions"] = DescriptionSpec(**described) if described else None
        return cls(**d)


@dataclass(frozen=True)
class Score:
    """What the scorer said about one template on one split."""

    template: str
    accuracy: float = 0.0
    correct: int = 0
    total: int = 0
    error: str | None = None  # set when the scorer rejected this template
    loss: float | None = None  # mean zero-shot cross-entropy; None from a scorer without it
    # On request (OBJECTIVE_CONFIDENT): per-image bits and float32 losses as
    # promptclimb.common.per_image packs them; empty when not asked or not recorded.
    per_image_correct: bytes = b""
    per_image_loss: bytes = b""


@dataclass(frozen=True)
class ScoredTemplate:
    """A template in the pool, with where it came from."""

    template: str
    accuracy: float
    correct: int
    total: int
    restart: int
    iteration: int
    origin: str  # "pool", "user", "llm" (one LLM strategy), or the strategy's name ("edit", in a mix)
    loss: float | None = None  # breaks accuracy ties (lower wins); None when not recorded

    def rank_key(self) -> tuple[float, float]:
        """Sort key, best first: accuracy, then loss (:func:`promptclimb.common.ranking.rank_key`)."""
        return rank_key(self.accuracy, self.loss)


@dataclass(frozen=True)
class ProposalRequest:
    """What the optimizer needs for one call (it is stateless)."""

    task_description: str
    class_names: tuple[str, ...]
    history: tuple[ScoredTemplate, ...]
    strategy: Strategy
    best_k: int
    worst_k: int
    num_templates: int
    temperature: float | None
    conversation: tuple[tuple[str, str], ...]
    seed: int | None


@dataclass(frozen=True)
class Proposal:
    """One recorded optimizer reply."""

    templates: tuple[str, ...]
    llm_calls: int = 1
    prompt_tokens: int = 0
    completion_tokens: int = 0
    conversation: tuple[tuple[str, str], ...] = ()
    model: str = ""  # the model that answered, as the endpoint named it
    cost_usd: float = 0.0  # priced when it arrived (settings), so a replay costs the same

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (the journal stores it)."""
        return {
            "templates": list(self.templates),
            "llm_calls": self.llm_calls,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "conversation": [list(m) for m in self.conversation],
            "model": self.model,
            "cost_usd": self.cost_usd,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Proposal:
        """Inverse of :meth:`to_json`."""
        return cls(
            templates=tuple(d["templates"]),
            llm_calls=int(d.get("llm_calls", 1)),
            prompt_tokens=int(d.get("prompt_tokens", 0)),
            completion_tokens=int(d.get("completion_tokens", 0)),
            conversation=tuple((str(r), str(c)) for r, c in d.get("conversation", ())),
            model=str(d.get("model", "")),
            cost_usd=float(d.get("cost_usd", 0.0)),
        )


@dataclass
class IterationSummary:
    """Best and mean selection accuracy of the pool after one iteration."""

    restart: int
    iteration: int
    best_accuracy: float
    mean_accuracy: float
    num_templates: int
    propose_seconds: float = 0.0
    score_seconds: float = 0.0
    strategies: list[str] = field(default_factory=list)  # those asked for templates (none when seeding)


@dataclass
class Usage:
    """Totals spent by a search."""

    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    evaluations: int = 0  # every template scored, any split
    search_evaluations: int = 0  # selection-split scores inside the loop (what the budget bounds)
    cost_usd: float = 0.0  # LLM spend at the configured prices (0 where none is set)

    @property
    def tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class TransferScore:
    """The found prompts of a search scored once on another model's evaluation split."""

    model: str
    best_evaluation_accuracy: float
    ensemble_evaluation_accuracy: float
    plain_template: str  # the initial pool's first template (as scored)
    plain_evaluation_accuracy: float


@dataclass
class SearchResult:
    """The outcome of a finished search."""

    best: ScoredTemplate
    best_evaluation_accuracy: float
    ensemble_templates: tuple[str, ...]
    ensemble_evaluation_accuracy: float
    partial: bool = False  # the search failed after seeding; this is the best it had found
    tied_templates: tuple[str, ...] = ()  # CONFIDENT: statistically tied with ``best``
    greedy_ensemble_templates: tuple[str, ...] = ()  # forward selection on the selection split
    greedy_ensemble_evaluation_accuracy: float = 0.0
    transfer: tuple[TransferScore, ...] = ()  # SearchConfig.transfer_models, in their order
    descriptions: DescriptionResult | None = None  # a description search's picked descriptions


@dataclass(frozen=True)
class ClassDescriptions:
    """One class's picked descriptions and its selection accuracy with the picked set."""

    class_name: str
    descriptions: tuple[str, ...]
    selection_accuracy: float


@dataclass(frozen=True)
class DescriptionRound:
    """One refine round: the classes rewritten, the rewritten set's score, whether it won."""

    index: int  # 1 = the first refine round (as the search's iteration summaries count them)
    rewritten: tuple[str, ...]
    accuracy: float
    loss: float
    accepted: bool


@dataclass(frozen=True)
class DescriptionResult:
    """The outcome of a description search (``SearchResult.descriptions``)."""

    classes: tuple[ClassDescriptions, ...]
    selection_accuracy: float
    evaluation_accuracy: float
    template: str  # the slot template ("" = the descriptions as they are)
    template_selection_accuracy: float  # the template alone: the baseline to beat
    template_evaluation_accuracy: float
    initial_selection_accuracy: float  # the first described set, before any refine round
    missing: tuple[str, ...] = ()  # classes never described validly (the bare class name)
    rounds: tuple[DescriptionRound, ...] = ()
    from_search: str = ""

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DescriptionResult:
        """Inverse of :func:`dataclasses.asdict`."""
        return cls(
            classes=tuple(
                ClassDescriptions(c["class_name"], tuple(c["descriptions"]), c["selection_accuracy"])
                for c in d["classes"]
            ),
            selection_accuracy=d["selection_accuracy"],
            evaluation_accuracy=d["evaluation_accuracy"],
            template=d["template"],
            template_selection_accuracy=d["template_selection_accuracy"],
            template_evaluation_accuracy=d["template_evaluation_accuracy"],
            initial_selection_accuracy=d["initial_selection_accuracy"],
            missing=tuple(d.get("missing", ())),
            rounds=tuple(
                DescriptionRound(r["index"], tuple(r["rewritten"]), r["accuracy"], r["loss"], r["accepted"])
                for r in d.get("rounds", ())
            ),
            from_search=d.get("from_search", ""),
        )


GREEDY_CANDIDATES = 20  # the greedy ensemble chooses among this many of the best templates


@dataclass
class SearchState:
    """Everything known about a running search; rebuilt by replay on resume."""

    config: SearchConfig
    phase: Phase = Phase.SEEDING
    restart: int = 0
    iteration: int = 0
    history: list[ScoredTemplate] = field(default_factory=list)
    iterations: list[IterationSummary] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    result: SearchResult | None = None
    end_reason: str = ""
    # Selection-split per-image results by template (CONFIDENT asks for them), and the verdicts
    # of the paired comparisons made so far: (candidate, incumbent) -> candidate confidently better.
    per_image: dict[str, PerImage] = field(default_factory=dict, repr=False)
    _verdicts: dict[tuple[str, str], bool] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def best(self) -> ScoredTemplate | None:
        """Best by selection accuracy, an accuracy tie going to the lower loss, then to the earliest.

        On a 1-shot split of a 10-class set accuracy moves in steps of 10 points and ties are the
        rule; the scorer's cross-entropy on the same images tells tied templates apart (stable
        under replay: the same scores give the same order)."""
        top = self.top(1)
        return top[0] if top else None

    def top(self, k: int) -> list[ScoredTemplate]:
        """The k best templates, best first (ties: lower loss, then earliest first).

        CONFIDENT: the incumbent of :meth:`confident_best` first, then the others by accuracy and loss.
        """
        cfg = self.config
        order = sorted(
            enumerate(self.history),
            key=lambda p: (*objective_key(p[1], cfg.objective, cfg.objective_weight), p[0]),
        )
        ranked = [t for _, t in order]
        first = self.confident_best() if cfg.objective is Objective.CONFIDENT else None
        if first is not None:
            ranked = [first, *(t for t in ranked if t is not first)]
        return ranked[:k]

    def confident_best(self) -> ScoredTemplate | None:
        """The CONFIDENT incumbent: the first template of the history (the initial pool's first, in
        pool order), replaced by each later one, in history order, that is confidently better on the
        selection split's images (:func:`~services.coordinator.confidence.confidently_better`).

        A template without per-image results (a scorer that sends none, a journal written before
        them) competes by accuracy then loss instead. Deterministic: a replay gives the same pick.
        """
        incumbent: ScoredTemplate | None = None
        for t in self.history:
            if incumbent is None or self._beats(t, incumbent):
                incumbent = t
        return incumbent

    def _beats(self, candidate: ScoredTemplate, incumbent: ScoredTemplate) -> bool:
        key = (candidate.template, incumbent.template)
        verdict = self._verdicts.get(key)
        if verdict is None:
            a, b = self.per_image.get(candidate.template), self.per_image.get(incumbent.template)
            if a is None or b is None:
                verdict = candidate.rank_key() < incumbent.rank_key()
            else:
                verdict = confidently_better(a, b, self.config.seed)
            self._verdicts[key] = verdict
        return verdict

    def tied_with(self, winner: ScoredTemplate) -> list[str]:
        """Templates, in history order, whose bootstrap interval of the mean per-image correctness
        difference to ``winner`` contains 0 (those with per-image results only)."""
        ref = self.per_image.get(winner.template)
        if ref is None:
            return []
        return [
            t.template
            for t in self.history
            if t.template != winner.template
            and (p := self.per_image.get(t.template)) is not None
            and tied(p, ref, self.config.seed)
        ]

    def known(self) -> set[str]:
        """Templates already in the pool."""
        return {t.template for t in self.history}


# ---- ports -------------------------------------------------------------------------------------


class TemplateScorer(Protocol):
    """The CLIP scorer, as the search sees it."""

    async def class_names(self, dataset: str) -> list[str]:
        """Class names of a dataset; raises :class:`SearchFailed` ("NOT_FOUND") when unknown."""
        ...

    async def score(
        self,
        dataset: str,
        split: str,
        templates: Sequence[str],
        on_chunk: Callable[[list[Score]], Awaitable[None]],
        *,
        per_image: bool = False,
    ) -> list[Score]:
        """Score templates; ``on_chunk`` is awaited as each chunk's scores arrive (to checkpoint).

        ``per_image``: also each image's result (:attr:`Score.per_image_correct`, ``per_image_loss``);
        only asked for by a CONFIDENT search, so a scorer that never gets it may omit the parameter.
        """
        ...

    async def ensemble_accuracy(self, dataset: str, split: str, templates: Sequence[str]) -> float:
        """Accuracy of the ensemble of ``templates``."""
        ...


@runtime_checkable
class ModelScorers(Protocol):
    """Several scorer models behind one port (the coordinator's model registry)."""

    def scorer_of(self, model: str) -> TemplateScorer:
        """The scorer of ``model`` ("" = the default); raises :class:`SearchFailed` when unknown."""
        ...


async def _discard(_chunk: list[Score]) -> None:
    """An ``on_chunk`` for scores that are not journaled."""


def aggregate_scores(scores: Sequence[Score], how: Aggregate) -> Score:
    """One template's scores on several models as one: their mean, or the worst one (MIN).

    Any model's rejection rejects the template; a loss is kept only when every model sent one.
    """
    first = scores[0]
    errors = [s.error for s in scores if s.error is not None]
    if errors:
        return Score(first.template, error=errors[0])
    if how is Aggregate.MIN:
        worst = max(scores, key=lambda s: rank_key(s.accuracy, s.loss))
        return Score(first.template, worst.accuracy, worst.correct, worst.total, None, worst.loss)
    losses = [s.loss for s in scores if s.loss is not None]
    return Score(
        first.template,
        sum(s.accuracy for s in scores) / len(scores),
        sum(s.correct for s in scores),
        sum(s.total for s in scores),
        None,
        sum(losses) / len(losses) if len(losses) == len(scores) else None,
    )


@dataclass
class CombinedScorer:
    """A multi-model objective: selection-split scores aggregated over ``scorers``; every other
    split (the evaluation) from the first scorer alone."""

    scorers: Sequence[TemplateScorer]
    selection_split: str
    how: Aggregate = Aggregate.MEAN

    async def class_names(self, dataset: str) -> list[str]:
        """The first scorer's class names (each model must have the dataset, with the same classes)."""
        names = await asyncio.gather(*(s.class_names(dataset) for s in self.scorers))
        if any(n != names[0] for n in names[1:]):
            raise SearchFailed(
                "FAILED_PRECONDITION",
                f"dataset {dataset!r} has different class names on the objective's models",
            )
        return names[0]

    async def score(
        self,
        dataset: str,
        split: str,
        templates: Sequence[str],
        on_chunk: Callable[[list[Score]], Awaitable[None]],
        *,
        per_image: bool = False,
    ) -> list[Score]:
        """Selection split: every model's scores, aggregated, checkpointed once; else the first model's."""
        if split != self.selection_split:
            return await self.scorers[0].score(dataset, split, templates, on_chunk)
        per_model = await asyncio.gather(
            *(s.score(dataset, split, templates, _discard) for s in self.scorers)
        )
        by_template = [{s.template: s for s in scores} for scores in per_model]
        combined = [
            aggregate_scores([m[t] for m in by_template], self.how)
            for t in templates
            if all(t in m for m in by_template)
        ]
        await on_chunk(combined)
        return combined

    async def ensemble_accuracy(self, dataset: str, split: str, templates: Sequence[str]) -> float:
        """Selection split: the aggregate of the models' ensemble accuracies; else the first model's."""
        if split != self.selection_split:
            return await self.scorers[0].ensemble_accuracy(dataset, split, templates)
        accuracies = await asyncio.gather(
            *(s.ensemble_accuracy(dataset, split, templates) for s in self.scorers)
        )
        return min(accuracies) if self.how is Aggregate.MIN else sum(accuracies) / len(accuracies)


class TemplateProposer(Protocol):
    """The LLM optimizer, as the search sees it."""

    async def propose(self, request: ProposalRequest) -> Proposal:
        """Ask for new templates."""
        ...


class Journal(Protocol):
    """Durable records of a search: what was scored and what the LLM replied."""

    def recorded_score(self, split: str, template: str) -> Score | None:
        """A score recorded earlier, or None."""
        ...

    async def record_scores(
        self, split: str, scores: Sequence[Score], restart: int, iteration: int, origin: str
    ) -> None:
        """Persist scores before the search moves on."""
        ...

    def recorded_proposal(self, key: str) -> Proposal | None:
        """The LLM reply recorded under ``key``, or None."""
        ...

    async def record_proposal(self, key: str, proposal: Proposal) -> None:
        """Persist an LLM reply before it is used."""
        ...

    async def checkpoint(self, state: SearchState, event: str) -> None:
        """Persist the progress fields of ``state`` and tell watchers (``event``: what changed)."""
        ...


class StopSearch(Exception):
    """Raised inside the loop to end the search early; it SUCCEEDS with ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BudgetExhausted(StopSearch):
    """A budget is reached."""

    def __init__(self, which: str) -> None:
        super().__init__(f"budget: {which}")


class Converged(StopSearch):
    """``patience`` iterations in a row found no new best (early stopping)."""

    def __init__(self) -> None:
        super().__init__("converged")


# ---- the algorithm -----------------------------------------------------------------------------


def proposal_key(restart: int, iteration: int, attempt: int, strategy: Strategy | None = None) -> str:
    """Deterministic id of an LLM call: the same step always has the same key.

    ``strategy`` is given in a mix only, so each strategy of a step has its own record while
    unmixed searches keep the keys their journals were written with.
    """
    key = f"r{restart}/i{iteration}/a{attempt}"
    return f"{key}/{strategy.value}" if strategy is not None else key


SEED_KEY = "seed/starters"


def call_seed(search_seed: int, key: str) -> int:
    """The sampling seed of one LLM call: fixed per (search seed, call), different across calls.

    One seed for every call would make a retry after an empty proposal identical to the call
    before it — the same request gets the same reply, and the search stalls.
    """
    digest = hashlib.sha256(f"{search_seed}/{key}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


MAX_EMPTY_ATTEMPTS = 2  # ask again (a new key) when the LLM offered nothing new


def split_shares(mix: Sequence[Strategy], n: int, turn: int) -> list[tuple[Strategy, int]]:
    """Each strategy's share of ``n`` templates (SPLIT); strategies with no share are left out.

    The remainder goes to the strategies whose turn it is, rotating with ``turn`` (the iteration's
    index in the search), so with fewer templates than strategies every one still gets its turns.
    """
    base, extra = divmod(n, len(mix))
    shares = [(s, base + int((i - turn) % len(mix) < extra)) for i, s in enumerate(mix)]
    return [(s, k) for s, k in shares if k > 0]


def strategy_record(state: SearchState) -> dict[str, tuple[int, int]]:
    """Per strategy (by name): iterations it proposed in, and those where its templates made a new best.

    Read from the iteration summaries (who was asked) and the history (each template's origin and,
    in order, whether it beat every template before it under the search's objective), so it is the
    same after a replay.
    """
    cfg = state.config
    asked: dict[str, int] = {}
    for summary in state.iterations:
        for name in summary.strategies:
            asked[name] = asked.get(name, 0) + 1
    improved: set[tuple[int, int, str]] = set()
    best: tuple[float, ...] | None = None
    for t in state.history:
        key = objective_key(t, cfg.objective, cfg.objective_weight)
        if best is not None and key < best and t.iteration > 0:
            improved.add((t.restart, t.iteration, t.origin))
        best = key if best is None or key < best else best
    return {
        name: (n, min(n, sum(1 for _, _, origin in improved if origin == name))) for name, n in asked.items()
    }


def thompson_choice(mix: Sequence[Strategy], record: dict[str, tuple[int, int]], seed: int) -> Strategy:
    """The strategy with the highest draw from its Beta(1 + new bests, 1 + other iterations) posterior."""
    rng = random.Random(seed)
    draws = []
    for s in mix:
        asked, improved = record.get(s.value, (0, 0))
        draws.append(rng.betavariate(1 + improved, 1 + asked - improved))
    return mix[draws.index(max(draws))]


@dataclass
class HillClimb:
    """Runs one search to the end (or to a budget) against the ports."""

    state: SearchState
    scorer: TemplateScorer
    proposer: TemplateProposer
    journal: Journal
    initial_templates: Callable[[SearchConfig], list[str]]  # named / user pools
    started_at: float = field(default_factory=time.time)  # wall clock when the search first ran
    clock: Callable[[], float] = time.time
    # The models of the coordinator; None = the scorer's own, when it is a ModelScorers, else none.
    models: ModelScorers | None = None
    _class_names: list[str] = field(default_factory=list)
    _asked: list[str] = field(default_factory=list)  # strategies asked in the current iteration

    @property
    def config(self) -> SearchConfig:
        """The search's specification."""
        return self.state.config

    async def run(self) -> SearchState:
        """Seed, climb, evaluate; returns the final state (``result`` and ``end_reason`` set)."""
        if self.models is None and isinstance(self.scorer, ModelScorers):
            self.models = self.scorer
        cfg = self.config
        if self.models is not None:
            models = self.models
            selection = [models.scorer_of(m) for m in cfg.selection_models]
            self.scorer = (
                CombinedScorer(selection, cfg.selection_split, cfg.objective_aggregate)
                if len(selection) > 1
                else selection[0]
            )
            for m in cfg.transfer_models:  # a transfer model without the dataset fails now, not at the end
                await models.scorer_of(m).class_names(cfg.dataset)
        elif cfg.names_models:
            raise SearchFailed("FAILED_PRECONDITION", "this coordinator serves no named scorer models")
        self._class_names = await self.scorer.class_names(self.config.dataset)
        seeded = False
        try:
            await self._seed()
            seeded = True
            for restart in range(self.config.restarts):
                conversations: dict[Strategy, tuple[tuple[str, str], ...]] = {}  # a restart resets the chat
                for iteration in range(1, self.config.iterations + 1):
                    await self._iterate(restart, iteration, conversations)
                    if self.converged():
                        raise Converged()
            self.state.end_reason = "completed"
        except StopSearch as done:
            self.state.end_reason = done.reason
        except SearchFailed as failure:
            if seeded and failure.salvageable and self.state.best is not None:
                await self._salvage()
            raise
        await self._evaluate()
        return self.state

    def converged(self) -> bool:
        """True once ``patience`` iterations in a row raised the best accuracy by no more than ``min_delta``.

        Computed from the iteration summaries alone, so a resumed search stops where it would have.
        """
        if self.config.patience <= 0:
            return False
        best, since = float("-inf"), 0
        for summary in self.state.iterations:
            if summary.best_accuracy > best + self.config.min_delta:
                best, since = summary.best_accuracy, 0
            else:
                since += 1
        return since >= self.config.patience

    async def _salvage(self) -> None:
        """After a permanent failure past seeding: score the best so far once, as a partial result."""
        try:
            await self._evaluate(partial=True)
        except SearchFailed:
            self.state.result = None  # the evaluation split could not be scored either: no result

    # -- steps ----------------------------------------------------------------------------------

    async def _seed(self) -> None:
        cfg = self.config
        self.state.phase = Phase.SEEDING
        await self.journal.checkpoint(self.state, "phase")
        if cfg.llm_starters > 0:
            request = self._request(SEED_KEY, cfg.strategy, cfg.llm_starters, (), ())
            proposal = await self._propose(SEED_KEY, request, cfg.strategy)
            templates, origin = list(proposal.templates), "llm"
        else:
            templates = self.initial_templates(cfg)
            origin = "user" if cfg.user_templates else "pool"
        templates = _dedupe(templates, set())
        await self._score_into_pool(templates, 0, 0, origin)
        self._summarise(0, 0, 0.0, 0.0)
        await self.journal.checkpoint(self.state, "iteration")

    async def _iterate(
        self, restart: int, iteration: int, conversations: dict[Strategy, tuple[tuple[str, str], ...]]
    ) -> None:
        """One iteration: every strategy asked proposes (``conversations`` advance), then all is scored."""
        cfg = self.config
        self.state.restart, self.state.iteration = restart, iteration
        self.state.phase = Phase.PROPOSING
        await self.journal.checkpoint(self.state, "phase")
        t0 = self.clock()
        asked = self.asked(restart, iteration)
        known = self.state.known()
        proposed: list[tuple[Strategy, list[str]]] = []
        for strategy, share in asked:
            new = await self._proposals(restart, iteration, strategy, share, conversations, known)
            known.update(new)
            proposed.append((strategy, new))
        t1 = self.clock()
        self._asked = [s.value for s, _ in asked]
        self.state.phase = Phase.SCORING
        await self.journal.checkpoint(self.state, "phase")
        for strategy, new in proposed:
            await self._score_into_pool(new, restart, iteration, cfg.origin(strategy))
        self._summarise(restart, iteration, t1 - t0, self.clock() - t1)
        await self.journal.checkpoint(self.state, "iteration")

    def asked(self, restart: int, iteration: int) -> list[tuple[Strategy, int]]:
        """The strategies that propose in this iteration, each with how many templates it is asked for."""
        cfg = self.config
        n = cfg.templates_per_iteration
        if not cfg.mix:
            return [(cfg.strategy, n)]
        if cfg.mix_mode is MixMode.BANDIT:
            seed = call_seed(cfg.seed, f"bandit/r{restart}/i{iteration}")
            return [(thompson_choice(cfg.mix, strategy_record(self.state), seed), n)]
        return split_shares(cfg.mix, n, restart * cfg.iterations + iteration - 1)

    async def _proposals(
        self,
        restart: int,
        iteration: int,
        strategy: Strategy,
        share: int,
        conversations: dict[Strategy, tuple[tuple[str, str], ...]],
        known: set[str],
    ) -> list[str]:
        """Up to ``share`` new templates from ``strategy`` (asked again once when it offers none)."""
        new: list[str] = []
        for attempt in range(MAX_EMPTY_ATTEMPTS):
            key = proposal_key(restart, iteration, attempt, strategy if self.config.mix else None)
            history = tuple(self.state.history)
            request = self._request(key, strategy, share, history, conversations.get(strategy, ()))
            proposal = await self._propose(key, request, strategy)
            if strategy is Strategy.CONVERSATION:
                conversations[strategy] = proposal.conversation
            new = _dedupe(list(proposal.templates), known)
            if strategy is not Strategy.RELEASED:  # the released code scored every valid one of a reply
                new = new[:share]
            if new:
                break
        return new

    async def _evaluate(self, *, partial: bool = False) -> None:
        cfg = self.config
        self.state.phase = Phase.EVALUATING
        await self.journal.checkpoint(self.state, "phase")
        best = self.state.best
        if best is None:
            raise SearchFailed("FAILED_PRECONDITION", "no template of the initial pool could be scored")
        scores = await self._score(cfg.evaluation_split, [best.template], 0, 0, "evaluation")
        best_eval = scores[0].accuracy if scores else 0.0
        ensemble = tuple(t.template for t in self.state.top(max(1, cfg.ensemble_k)))
        ensemble_acc = await self.scorer.ensemble_accuracy(cfg.dataset, cfg.evaluation_split, ensemble)
        greedy = await self.greedy_ensemble()
        greedy_acc = (
            ensemble_acc
            if set(greedy) == set(ensemble)  # the same ensemble (its mean does not depend on order)
            else await self.scorer.ensemble_accuracy(cfg.dataset, cfg.evaluation_split, greedy)
        )
        tied_templates = tuple(self.state.tied_with(best)) if cfg.objective is Objective.CONFIDENT else ()
        self.state.result = SearchResult(
            best,
            best_eval,
            ensemble,
            ensemble_acc,
            partial=partial,
            tied_templates=tied_templates,
            greedy_ensemble_templates=greedy,
            greedy_ensemble_evaluation_accuracy=greedy_acc,
        )
        if cfg.transfer_models and not partial:
            # The result above is kept (the search ends FAILED with it) if a transfer model fails.
            transfer = [await self.transfer(m, best.template, ensemble) for m in cfg.transfer_models]
            self.state.result = replace(self.state.result, transfer=tuple(transfer))
        self.state.phase = Phase.DONE

    async def transfer(self, model: str, best: str, ensemble: Sequence[str]) -> TransferScore:
        """The best template, the ensemble and the plain prompt scored once on ``model``'s evaluation split.

        Deterministic scorer calls, not journaled (a resumed search asks again, as for the ensemble).
        """
        cfg = self.config
        assert self.models is not None
        scorer = self.models.scorer_of(model)
        plain = self.state.history[0].template
        wanted = list(dict.fromkeys([best, plain]))
        scored = await scorer.score(cfg.dataset, cfg.evaluation_split, wanted, _discard)
        scores = {s.template: s for s in scored}
        for t in wanted:
            if t not in scores or scores[t].error is not None:
                why = scores[t].error if t in scores else "no score"
                raise SearchFailed("INTERNAL", f"transfer to model {model!r}: {t!r} not scored: {why}")
        ensemble_acc = await scorer.ensemble_accuracy(cfg.dataset, cfg.evaluation_split, ensemble)
        return TransferScore(model, scores[best].accuracy, ensemble_acc, plain, scores[plain].accuracy)

    async def greedy_ensemble(self) -> tuple[str, ...]:
        """Forward selection of up to ``ensemble_k`` templates by ensemble accuracy on the selection split.

        Candidates: the :data:`GREEDY_CANDIDATES` best by the objective. Each step adds the candidate
        whose ensemble with those chosen scores highest (ties: the earliest in objective order); it
        stops early when no addition raises the accuracy. Deterministic scorer calls, not journaled.
        """
        cfg = self.config
        candidates = [t.template for t in self.state.top(GREEDY_CANDIDATES)]
        chosen: list[str] = []
        accuracy = float("-inf")
        while len(chosen) < max(1, cfg.ensemble_k):
            rest = [c for c in candidates if c not in chosen]
            if not rest:
                break
            accuracies = await asyncio.gather(
                *(self.scorer.ensemble_accuracy(cfg.dataset, cfg.selection_split, [*chosen, c]) for c in rest)
            )
            top = max(accuracies)
            if top <= accuracy:
                break
            chosen.append(rest[accuracies.index(top)])
            accuracy = top
        return tuple(chosen)

    # -- helpers --------------------------------------------------------------------------------

    def _request(
        self,
        key: str,
        strategy: Strategy,
        n: int,
        history: tuple[ScoredTemplate, ...],
        conversation: tuple[tuple[str, str], ...],
    ) -> ProposalRequest:
        cfg = self.config
        task = cfg.task_description or f"images of the dataset '{cfg.dataset}'"
        return ProposalRequest(
            task_description=task,
            class_names=tuple(self._class_names[:50]),
            history=history,
            strategy=strategy,
            best_k=cfg.best_k,
            worst_k=cfg.worst_k,
            num_templates=n,
            temperature=cfg.temperature,
            conversation=conversation,
            seed=call_seed(cfg.seed, key) if cfg.seed else None,
        )

    async def _propose(self, key: str, request: ProposalRequest, strategy: Strategy) -> Proposal:
        recorded = self.journal.recorded_proposal(key)
        if recorded is None:
            self._check_budget(before_proposal=True, llm=strategy not in NO_LLM_STRATEGIES)
            recorded = await self.proposer.propose(request)
            await self.journal.record_proposal(key, recorded)
        u = self.state.usage
        u.llm_calls += recorded.llm_calls
        u.prompt_tokens += recorded.prompt_tokens
        u.completion_tokens += recorded.completion_tokens
        u.cost_usd += recorded.cost_usd
        return recorded

    def _check_budget(self, *, before_proposal: bool = False, llm: bool = True, evaluations: int = 0) -> None:
        """Raise :class:`BudgetExhausted` when the next live step would exceed a budget.

        ``llm``: whether the proposal about to be asked for calls the LLM (the LLM budgets apply).
        """
        b, u = self.config.budget, self.state.usage
        if b.max_duration_seconds and self.clock() - self.started_at >= b.max_duration_seconds:
            raise BudgetExhausted("max_duration")
        if before_proposal and llm and b.max_llm_calls and u.llm_calls >= b.max_llm_calls:
            raise BudgetExhausted("max_llm_calls")
        if before_proposal and llm and b.max_tokens and u.tokens >= b.max_tokens:
            raise BudgetExhausted("max_tokens")
        if (
            b.max_evaluations
            and u.search_evaluations + max(evaluations, int(before_proposal)) > b.max_evaluations
        ):
            raise BudgetExhausted("max_evaluations")  # no room left for what the LLM would propose

    async def _score_into_pool(self, templates: list[str], restart: int, iteration: int, origin: str) -> None:
        b = self.config.budget
        over = False
        if b.max_evaluations:
            room = max(0, b.max_evaluations - self.state.usage.search_evaluations)
            over = len(templates) > room or room == 0
            templates = templates[:room]
        scores = await self._score(self.config.selection_split, templates, restart, iteration, origin)
        self.state.usage.search_evaluations += len(scores)
        for s in scores:
            if s.error is None:
                per_image = PerImage.decode(s.per_image_correct, s.per_image_loss, s.total)
                if per_image is not None:
                    self.state.per_image[s.template] = per_image
                self.state.history.append(
                    ScoredTemplate(
                        s.template, s.accuracy, s.correct, s.total, restart, iteration, origin, s.loss
                    )
                )
        if over:
            self._summarise(restart, iteration, 0.0, 0.0)
            raise BudgetExhausted("max_evaluations")

    async def _score(
        self, split: str, templates: list[str], restart: int, iteration: int, origin: str
    ) -> list[Score]:
        """Scores in the order given: recorded ones from the journal, the rest from the scorer."""
        recorded = {t: self.journal.recorded_score(split, t) for t in templates}
        missing = [t for t, s in recorded.items() if s is None]
        if missing:
            if split == self.config.selection_split and iteration > 0:
                self._check_budget()  # a deadline also stops scoring that has not begun

            async def checkpoint(chunk: list[Score]) -> None:
                await self.journal.record_scores(split, chunk, restart, iteration, origin)

            if split == self.config.selection_split and self.config.objective is Objective.CONFIDENT:
                scored = await self.scorer.score(
                    self.config.dataset, split, missing, checkpoint, per_image=True
                )
            else:
                scored = await self.scorer.score(self.config.dataset, split, missing, checkpoint)
            for s in scored:
                recorded[s.template] = s
        self.state.usage.evaluations += len(templates)
        return [found for t in templates if (found := recorded.get(t)) is not None]

    def _summarise(self, restart: int, iteration: int, propose_s: float, score_s: float) -> None:
        pool = self.state.history
        if any(s.restart == restart and s.iteration == iteration for s in self.state.iterations):
            return  # already summarised (a budget stop right after the iteration's scores)
        best = max((t.accuracy for t in pool), default=0.0)
        mean = sum(t.accuracy for t in pool) / len(pool) if pool else 0.0
        asked = list(self._asked) if iteration > 0 else []
        self.state.iterations.append(
            IterationSummary(restart, iteration, best, mean, len(pool), propose_s, score_s, asked)
        )


def _dedupe(templates: list[str], known: set[str]) -> list[str]:
    """Drop blanks and repeats, keep order."""
    out: list[str] = []
    seen = set(known)
    for t in templates:
        if t.strip() and t not in seen:
            seen.add(t)
            out.append(t)
    return out

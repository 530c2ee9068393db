"""Conversions between the coordinator's protos and its domain types, with spec validation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import grpc
from google.protobuf import timestamp_pb2

from promptclimb.api.v1 import common_pb2, coordinator_pb2
from promptclimb.common.errors import ServiceError
from promptclimb.common.vocabulary import (
    DEFAULT_BEST_K,
    DEFAULT_OBJECTIVE,
    DEFAULT_STRATEGY,
    DEFAULT_WORST_K,
    EVENT_TO_PROTO,
    MAX_DESCRIPTION_CLASSES,
    MAX_DESCRIPTIONS_PER_CLASS,
    OBJECTIVE_FROM_PROTO,
    OBJECTIVE_TO_PROTO,
    PHASE_TO_PROTO,
    STATE_FROM_PROTO,
    STATE_TO_PROTO,
    STRATEGY_FROM_PROTO,
    STRATEGY_TO_PROTO,
    LifecycleState,
    Phase,
    SearchEvent,
)
from services.coordinator.pools import NAMED_POOLS
from services.coordinator.search import (
    DEFAULT_OBJECTIVE_WEIGHT,
    NO_LLM_STRATEGIES,
    Aggregate,
    Budget,
    DescriptionResult,
    DescriptionSpec,
    MixMode,
    ScoredTemplate,
    SearchConfig,
)
from services.coordinator.settings import MODEL_ID
from services.coordinator.store import SearchRecord

if TYPE_CHECKING:  # the plan imports the clients, which import this module
    from services.coordinator.plan import Plan

__all__ = ["EVENT_TO_PROTO", "STATE_FROM_PROTO", "STRATEGY_TO_PROTO", "SearchEvent"]
MAX_TEMPLATE_CHARS = 1000
NAME_PREFIX = "searches/"
MIX_MODE_TO_PROTO: dict[MixMode, coordinator_pb2.MixMode] = {
    m: cast(coordinator_pb2.MixMode, coordinator_pb2.MixMode.Value(f"MIX_MODE_{m.name}")) for m in MixMode
}
MIX_MODE_FROM_PROTO: dict[int, MixMode] = {v: k for k, v in MIX_MODE_TO_PROTO.items()}
AGGREGATE_TO_PROTO: dict[Aggregate, coordinator_pb2.ObjectiveAggregate] = {
    a: cast(
        coordinator_pb2.ObjectiveAggregate,
        coordinator_pb2.ObjectiveAggregate.Value(f"OBJECTIVE_AGGREGATE_{a.name}"),
    )
    for a in Aggregate
}
AGGREGATE_FROM_PROTO: dict[int, Aggregate] = {v: k for k, v in AGGREGATE_TO_PROTO.items()}
MAX_MODELS = 16  # models one search may name (transfer or objective)
MAX_DESCRIPTION_ROUNDS = 100


def _rule_violations(spec: coordinator_pb2.SearchSpec, names: set[str]) -> list[tuple[str, str]]:
    """Range problems of the stopping and picking rules in ``names``: one check for a search and a replay."""
    bad: list[tuple[str, str]] = []
    if "objective" in names and spec.objective != coordinator_pb2.OBJECTIVE_UNSPECIFIED:
        if spec.objective not in OBJECTIVE_FROM_PROTO:
            bad.append(("spec.objective", "unknown objective"))
    if "objective_weight" in names and not 0.0 <= spec.objective_weight <= 100.0:
        bad.append(("spec.objective_weight", "must be in [0, 100]"))
    if "patience" in names and spec.patience < 0:
        bad.append(("spec.patience", "must not be negative"))
    if "min_delta" in names and not 0.0 <= spec.min_delta < 1.0:
        bad.append(("spec.min_delta", "must be in [0, 1)"))
    return bad


def config_from_spec(spec: coordinator_pb2.SearchSpec) -> SearchConfig:
    """Validate a spec and fill defaults; every problem is one BadRequest field violation."""
    bad: list[tuple[str, str]] = []
    if not spec.dataset:
        bad.append(("spec.dataset", "required"))
    # NUL cannot be stored in PostgreSQL text (SQLite would take it): refuse it up front, everywhere.
    texts = {
        "spec.dataset": spec.dataset,
        "spec.selection_split": spec.selection_split,
        "spec.evaluation_split": spec.evaluation_split,
        "spec.task_description": spec.task_description,
        "spec.display_name": spec.display_name,
    }
    texts.update(
        {f"spec.initial_pool.templates[{i}]": t for i, t in enumerate(spec.initial_pool.templates.templates)}
    )
    bad.extend((f, "must not contain NUL characters") for f, t in texts.items() if "\x00" in t)
    for name in ("restarts", "iterations", "templates_per_iteration", "best_k", "worst_k", "ensemble_k"):
        if getattr(spec, name) < 0:
            bad.append((f"spec.{name}", "must not be negative"))
    if spec.restarts > 100:
        bad.append(("spec.restarts", "at most 100"))
    if spec.iterations > 1000:
        bad.append(("spec.iterations", "at most 1000"))
    if spec.templates_per_iteration > 100:
        bad.append(("spec.templates_per_iteration", "at most 100"))
    if spec.HasField("temperature") and not 0.0 <= spec.temperature <= 2.0:
        bad.append(("spec.temperature", "must be in [0, 2]"))
    rules = {"objective", "patience", "min_delta"} | (
        {"objective_weight"} if spec.HasField("objective_weight") else set()
    )
    bad.extend(_rule_violations(spec, rules))
    if spec.HasField("best_k") and spec.best_k == 0:
        bad.append(("spec.best_k", "must be at least 1 (leave unset for the default)"))
    selection, evaluation = spec.selection_split or "train", spec.evaluation_split or "test"
    if selection == evaluation:
        bad.append(
            (
                "spec.evaluation_split",
                f"must differ from the selection split ({selection!r}): a template "
                "selected on the images it is evaluated on has no honest evaluation accuracy",
            )
        )
    if spec.strategy != common_pb2.STRATEGY_UNSPECIFIED and spec.strategy not in STRATEGY_FROM_PROTO:
        bad.append(("spec.strategy", "unknown strategy"))
    bad.extend(
        (f"spec.mix[{i}]", "unknown strategy") for i, s in enumerate(spec.mix) if s not in STRATEGY_FROM_PROTO
    )
    if len(set(spec.mix)) != len(spec.mix):
        bad.append(("spec.mix", "names a strategy more than once"))
    if spec.mix_mode != coordinator_pb2.MIX_MODE_UNSPECIFIED and spec.mix_mode not in MIX_MODE_FROM_PROTO:
        bad.append(("spec.mix_mode", "unknown mix mode"))
    bad.extend(_model_violations(spec))
    if spec.mix_mode == coordinator_pb2.MIX_MODE_BANDIT and len(spec.mix) < 2:
        bad.append(("spec.mix", "the bandit chooses among the strategies of the mix: give at least two"))
    b = spec.budget
    for name in ("max_llm_calls", "max_tokens", "max_evaluations"):
        if getattr(b, name) < 0:
            bad.append((f"spec.budget.{name}", "must not be negative"))
    if b.max_duration.seconds < 0 or b.max_duration.nanos < 0:
        bad.append(("spec.budget.max_duration", "must not be negative"))
    pool = spec.initial_pool
    source = pool.WhichOneof("source")
    named: str | None = None
    user: tuple[str, ...] = ()
    starters = 0
    if source == "named_pool":
        if pool.named_pool not in NAMED_POOLS:
            bad.append(
                ("spec.initial_pool.named_pool", f"unknown pool; known: {', '.join(sorted(NAMED_POOLS))}")
            )
        named = pool.named_pool
    elif source == "templates":
        user = tuple(pool.templates.templates)
        if not user:
            bad.append(("spec.initial_pool.templates", "give at least one template"))
        for i, t in enumerate(user):
            if t.count("{}") != 1:
                bad.append((f"spec.initial_pool.templates[{i}]", "needs exactly one '{}' class-name slot"))
            elif len(t) > MAX_TEMPLATE_CHARS:
                bad.append(
                    (f"spec.initial_pool.templates[{i}]", f"longer than {MAX_TEMPLATE_CHARS} characters")
                )
    elif source == "llm_starters":
        starters = pool.llm_starters
        if not 1 <= starters <= 100:
            bad.append(("spec.initial_pool.llm_starters", "must be in [1, 100]"))
        if STRATEGY_FROM_PROTO.get(spec.strategy, DEFAULT_STRATEGY) in NO_LLM_STRATEGIES:
            bad.append(
                ("spec.initial_pool.llm_starters", "the strategy has no LLM to ask for starters: give a pool")
            )
    descriptions: DescriptionSpec | None = None
    if spec.HasField("descriptions"):
        descriptions, problems = _description_spec(spec)
        bad.extend(problems)
    if bad:
        raise ServiceError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "invalid search spec: " + "; ".join(f"{f}: {d}" for f, d in bad),
            field_violations=bad,
        )
    return SearchConfig(
        dataset=spec.dataset,
        selection_split=spec.selection_split or "train",
        evaluation_split=spec.evaluation_split or "test",
        strategy=STRATEGY_FROM_PROTO.get(spec.strategy, DEFAULT_STRATEGY),
        best_k=spec.best_k if spec.HasField("best_k") else DEFAULT_BEST_K,
        worst_k=spec.worst_k if spec.HasField("worst_k") else DEFAULT_WORST_K,
        temperature=spec.temperature if spec.HasField("temperature") else None,
        named_pool=named,
        user_templates=user,
        llm_starters=starters,
        restarts=spec.restarts or 1,
        iterations=spec.iterations or 10,
        templates_per_iteration=spec.templates_per_iteration or 1,
        budget=Budget(
            max_llm_calls=b.max_llm_calls,
            max_tokens=b.max_tokens,
            max_evaluations=b.max_evaluations,
            max_duration_seconds=b.max_duration.ToNanoseconds() / 1e9,
        ),
        seed=spec.seed,
        task_description=spec.task_description,
        ensemble_k=spec.ensemble_k or 3,
        display_name=spec.display_name,
        patience=spec.patience,
        min_delta=spec.min_delta,
        objective=OBJECTIVE_FROM_PROTO.get(spec.objective, DEFAULT_OBJECTIVE),
        objective_weight=spec.objective_weight
        if spec.HasField("objective_weight")
        else DEFAULT_OBJECTIVE_WEIGHT,
        mix=tuple(STRATEGY_FROM_PROTO[s] for s in spec.mix),
        mix_mode=MIX_MODE_FROM_PROTO.get(spec.mix_mode, MixMode.SPLIT),
        model=spec.model,
        transfer_models=tuple(spec.transfer_models),
        objective_models=tuple(spec.objective_models),
        objective_aggregate=AGGREGATE_FROM_PROTO.get(spec.objective_aggregate, Aggregate.MEAN),
        descriptions=descriptions,
    )


def _description_spec(spec: coordinator_pb2.SearchSpec) -> tuple[DescriptionSpec, list[tuple[str, str]]]:
    """The description knobs with defaults, and their range problems."""
    d = spec.descriptions
    bad: list[tuple[str, str]] = []
    knobs = {
        "descriptions_per_class": (1, MAX_DESCRIPTIONS_PER_CLASS),
        "rounds": (0, MAX_DESCRIPTION_ROUNDS),
        "weakest_k": (1, MAX_DESCRIPTION_CLASSES),
        "top_confusions": (0, 1000),
        "max_classes_per_call": (1, MAX_DESCRIPTION_CLASSES),
    }
    for name, (low, high) in knobs.items():
        if d.HasField(name) and not low <= getattr(d, name) <= high:
            bad.append((f"spec.descriptions.{name}", f"must be in [{low}, {high}]"))
    if d.template and d.from_search:
        bad.append(("spec.descriptions.template", "give a template or from_search, not both"))
    if d.template:
        if d.template.count("{}") != 1:
            bad.append(("spec.descriptions.template", "needs exactly one '{}' slot"))
        elif len(d.template) > MAX_TEMPLATE_CHARS:
            bad.append(("spec.descriptions.template", f"longer than {MAX_TEMPLATE_CHARS} characters"))
        if "\x00" in d.template:
            bad.append(("spec.descriptions.template", "must not contain NUL characters"))
    if d.from_search and not search_id_of(d.from_search).replace("-", "").isalnum():
        bad.append(("spec.descriptions.from_search", "a search name: searches/{id}"))
    # What a description search does not use is refused, not silently ignored.
    unused = ("transfer_models", "objective_models", "mix")
    bad.extend((f"spec.{n}", "not used by a description search") for n in unused if getattr(spec, n))
    if spec.initial_pool.WhichOneof("source"):
        bad.append(("spec.initial_pool", "not used by a description search (see descriptions.template)"))
    if 0 < spec.budget.max_evaluations < 2:
        bad.append(
            (
                "spec.budget.max_evaluations",
                "a description search scores the template alone and the first set: at least 2",
            )
        )
    # Unset knobs take DescriptionSpec's defaults (written once, there).
    described = DescriptionSpec(
        **{name: getattr(d, name) for name in knobs if d.HasField(name)},
        template=d.template,
        from_search=NAME_PREFIX + search_id_of(d.from_search) if d.from_search else "",
    )
    return described, bad


def _model_violations(spec: coordinator_pb2.SearchSpec) -> list[tuple[str, str]]:
    """Model ids well formed, listed once, few enough (whether they are served: the servicer)."""
    bad: list[tuple[str, str]] = []
    if spec.model and not MODEL_ID.fullmatch(spec.model):
        bad.append(("spec.model", f"a model id matches {MODEL_ID.pattern}"))
    for name in ("transfer_models", "objective_models"):
        ids = list(getattr(spec, name))
        bad.extend(
            (f"spec.{name}[{i}]", f"a model id matches {MODEL_ID.pattern}")
            for i, m in enumerate(ids)
            if not MODEL_ID.fullmatch(m)
        )
        if len(set(ids)) != len(ids):
            bad.append((f"spec.{name}", "names a model more than once"))
        if len(ids) > MAX_MODELS:
            bad.append((f"spec.{name}", f"at most {MAX_MODELS} models"))
    if (
        spec.objective_aggregate != coordinator_pb2.OBJECTIVE_AGGREGATE_UNSPECIFIED
        and spec.objective_aggregate not in AGGREGATE_FROM_PROTO
    ):
        bad.append(("spec.objective_aggregate", "unknown aggregate"))
    return bad


def spec_from_config(c: SearchConfig) -> coordinator_pb2.SearchSpec:
    """The effective spec (defaults filled in)."""
    spec = coordinator_pb2.SearchSpec(
        dataset=c.dataset,
        selection_split=c.selection_split,
        evaluation_split=c.evaluation_split,
        strategy=STRATEGY_TO_PROTO[c.strategy],
        best_k=c.best_k,
        worst_k=c.worst_k,
        restarts=c.restarts,
        iterations=c.iterations,
        templates_per_iteration=c.templates_per_iteration,
        seed=c.seed,
        task_description=c.task_description,
        ensemble_k=c.ensemble_k,
        display_name=c.display_name,
        patience=c.patience,
        min_delta=c.min_delta,
        objective=OBJECTIVE_TO_PROTO[c.objective],
        objective_weight=c.objective_weight,
        mix=[STRATEGY_TO_PROTO[s] for s in c.mix],
        mix_mode=MIX_MODE_TO_PROTO[c.mix_mode],
        model=c.model,
        transfer_models=list(c.transfer_models),
        objective_models=list(c.objective_models),
        objective_aggregate=AGGREGATE_TO_PROTO[c.objective_aggregate],
        budget=coordinator_pb2.Budget(
            max_llm_calls=c.budget.max_llm_calls,
            max_tokens=c.budget.max_tokens,
            max_evaluations=c.budget.max_evaluations,
        ),
    )
    spec.budget.max_duration.FromNanoseconds(int(c.budget.max_duration_seconds * 1e9))
    if c.temperature is not None:
        spec.temperature = c.temperature
    if c.user_templates:
        spec.initial_pool.templates.templates.extend(c.user_templates)
    elif c.llm_starters:
        spec.initial_pool.llm_starters = c.llm_starters
    elif c.descriptions is None:
        spec.initial_pool.named_pool = c.named_pool or "basic"
    if c.descriptions is not None:
        d = c.descriptions
        spec.descriptions.CopyFrom(
            coordinator_pb2.DescriptionSearchSpec(
                descriptions_per_class=d.descriptions_per_class,
                rounds=d.rounds,
                weakest_k=d.weakest_k,
                top_confusions=d.top_confusions,
                template=d.template,
                from_search=d.from_search,
            )
        )
        if d.max_classes_per_call:
            spec.descriptions.max_classes_per_call = d.max_classes_per_call
    return spec


def plan_to_proto(p: Plan) -> coordinator_pb2.SearchPlan:
    """Domain -> proto."""
    return coordinator_pb2.SearchPlan(
        llm_calls=p.llm_calls,
        max_llm_calls=p.max_llm_calls,
        prompt_tokens=p.prompt_tokens,
        completion_tokens=p.completion_tokens,
        cost_usd=p.cost_usd,
        evaluations=p.evaluations,
        num_classes=p.num_classes,
        stopped_by=list(p.stopped_by),
        basis=p.basis,
        priced_as=p.priced_as,
    )


def description_result_to_proto(d: DescriptionResult) -> coordinator_pb2.DescriptionSearchResult:
    """Domain -> proto."""
    return coordinator_pb2.DescriptionSearchResult(
        classes=[
            coordinator_pb2.ClassDescriptionResult(
                class_name=c.class_name,
                descriptions=list(c.descriptions),
                selection_accuracy=c.selection_accuracy,
            )
            for c in d.classes
        ],
        selection_accuracy=d.selection_accuracy,
        evaluation_accuracy=d.evaluation_accuracy,
        template=d.template,
        template_selection_accuracy=d.template_selection_accuracy,
        template_evaluation_accuracy=d.template_evaluation_accuracy,
        initial_selection_accuracy=d.initial_selection_accuracy,
        missing=list(d.missing),
        rounds=[
            coordinator_pb2.DescriptionRound(
                round=r.index,
                rewritten=list(r.rewritten),
                selection_accuracy=r.accuracy,
                selection_loss=r.loss,
                accepted=r.accepted,
            )
            for r in d.rounds
        ],
        from_search=d.from_search,
    )


def scored_to_proto(t: ScoredTemplate) -> common_pb2.ScoredTemplate:
    """Domain -> proto."""
    return common_pb2.ScoredTemplate(
        template=t.template,
        accuracy=t.accuracy,
        correct=t.correct,
        total=t.total,
        restart=t.restart,
        iteration=t.iteration,
        origin=t.origin,
        loss=t.loss,
    )


def _ts(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    if seconds is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def _phase(value: str) -> coordinator_pb2.SearchPhase:
    # A phase written by a newer version reads as unspecified rather than failing the whole read.
    return PHASE_TO_PROTO[Phase(value)] if value in set(Phase) else coordinator_pb2.SEARCH_PHASE_UNSPECIFIED


def search_to_proto(r: SearchRecord, *, full: bool) -> coordinator_pb2.Search:
    """A stored search as the API message (history only in the FULL view)."""
    p = r.progress
    s = coordinator_pb2.Search(
        name=NAME_PREFIX + r.id,
        id=r.id,
        spec=spec_from_config(r.config),
        state=STATE_TO_PROTO[LifecycleState(r.state)],
        phase=PHASE_TO_PROTO[Phase(r.phase)]
        if r.phase in set(Phase)
        else coordinator_pb2.SEARCH_PHASE_UNSPECIFIED,
        restart=r.restart,
        iteration=r.iteration,
        end_reason=p.end_reason,
        request_id=r.request_id or "",
        usage=common_pb2.Usage(
            llm_calls=p.usage.llm_calls,
            prompt_tokens=p.usage.prompt_tokens,
            completion_tokens=p.usage.completion_tokens,
            evaluations=p.usage.evaluations,
            cost_usd=p.usage.cost_usd,
        ),
    )
    for field, value in (
        ("create_time", r.create_time),
        ("update_time", r.update_time),
        ("end_time", r.end_time),
    ):
        ts = _ts(value)
        if ts is not None:
            getattr(s, field).CopyFrom(ts)
    if r.state == LifecycleState.RUNNING and r.start_time is not None:
        s.wall_seconds = r.update_time - r.start_time
    else:
        s.wall_seconds = p.wall_seconds
    if p.error_code:
        code = getattr(grpc.StatusCode, p.error_code, grpc.StatusCode.UNKNOWN)
        s.error_code = code.value[0]  # the google.rpc.Code number
    if p.best is not None:
        s.best.CopyFrom(scored_to_proto(p.best))
    if p.result is not None:
        s.result.best.CopyFrom(scored_to_proto(p.result.best))
        s.result.best_evaluation_accuracy = p.result.best_evaluation_accuracy
        s.result.ensemble_templates.extend(p.result.ensemble_templates)
        s.result.ensemble_evaluation_accuracy = p.result.ensemble_evaluation_accuracy
        s.result.partial = p.result.partial
        s.result.tied_templates.extend(p.result.tied_templates)
        s.result.greedy_ensemble_templates.extend(p.result.greedy_ensemble_templates)
        s.result.greedy_ensemble_evaluation_accuracy = p.result.greedy_ensemble_evaluation_accuracy
        for t in p.result.transfer:
            s.result.transfer.add(
                model=t.model,
                best_evaluation_accuracy=t.best_evaluation_accuracy,
                ensemble_evaluation_accuracy=t.ensemble_evaluation_accuracy,
                plain_template=t.plain_template,
                plain_evaluation_accuracy=t.plain_evaluation_accuracy,
            )
        if p.result.descriptions is not None:
            s.result.descriptions.CopyFrom(description_result_to_proto(p.result.descriptions))
    for i in p.iterations:
        s.iterations.add(
            restart=i.restart,
            iteration=i.iteration,
            best_accuracy=i.best_accuracy,
            mean_accuracy=i.mean_accuracy,
            num_templates=i.num_templates,
            propose_seconds=i.propose_seconds,
            score_seconds=i.score_seconds,
        )
    if full:
        s.history.extend(scored_to_proto(t) for t in r.history)
    return s


def search_id_of(name: str) -> str:
    """The id in ``searches/{id}`` (a bare id is accepted too)."""
    return name[len(NAME_PREFIX) :] if name.startswith(NAME_PREFIX) else name


def replay_overrides(spec: coordinator_pb2.SearchSpec, paths: list[str]) -> dict[str, Any]:
    """The domain values of the spec fields named in a replay's update mask.

    Raises :class:`~services.coordinator.replay.ReplayRefused` for a field a replay may not change
    and :class:`ServiceError` (INVALID_ARGUMENT) for a value out of range.
    """
    from services.coordinator.replay import refuse_unless_replayable

    overrides: dict[str, Any] = {}
    for path in paths:
        refuse_unless_replayable(path)
        if path == "objective":
            overrides[path] = OBJECTIVE_FROM_PROTO.get(spec.objective, DEFAULT_OBJECTIVE)
        elif path == "ensemble_k":
            overrides[path] = spec.ensemble_k or 3
        else:
            overrides[path] = getattr(spec, path)
    bad = _rule_violations(spec, set(paths))
    if not 1 <= overrides.get("ensemble_k", 1) <= 100:
        bad.append(("spec.ensemble_k", "must be in [1, 100]"))
    if bad:
        raise ServiceError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "invalid replay: " + "; ".join(f"{f}: {d}" for f, d in bad),
            field_violations=bad,
        )
    return overrides

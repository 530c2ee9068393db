import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from promptclimb.api.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ObjectiveAggregate(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OBJECTIVE_AGGREGATE_UNSPECIFIED: _ClassVar[ObjectiveAggregate]
    OBJECTIVE_AGGREGATE_MEAN: _ClassVar[ObjectiveAggregate]
    OBJECTIVE_AGGREGATE_MIN: _ClassVar[ObjectiveAggregate]

class Objective(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OBJECTIVE_UNSPECIFIED: _ClassVar[Objective]
    OBJECTIVE_ACCURACY: _ClassVar[Objective]
    OBJECTIVE_ACCURACY_THEN_LOSS: _ClassVar[Objective]
    OBJECTIVE_BLENDED: _ClassVar[Objective]
    OBJECTIVE_CONFIDENT: _ClassVar[Objective]

class MixMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MIX_MODE_UNSPECIFIED: _ClassVar[MixMode]
    MIX_MODE_SPLIT: _ClassVar[MixMode]
    MIX_MODE_BANDIT: _ClassVar[MixMode]

class SearchState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEARCH_STATE_UNSPECIFIED: _ClassVar[SearchState]
    SEARCH_STATE_PENDING: _ClassVar[SearchState]
    SEARCH_STATE_RUNNING: _ClassVar[SearchState]
    SEARCH_STATE_SUCCEEDED: _ClassVar[SearchState]
    SEARCH_STATE_FAILED: _ClassVar[SearchState]
    SEARCH_STATE_CANCELLED: _ClassVar[SearchState]

class SearchPhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEARCH_PHASE_UNSPECIFIED: _ClassVar[SearchPhase]
    SEARCH_PHASE_SEEDING: _ClassVar[SearchPhase]
    SEARCH_PHASE_PROPOSING: _ClassVar[SearchPhase]
    SEARCH_PHASE_SCORING: _ClassVar[SearchPhase]
    SEARCH_PHASE_EVALUATING: _ClassVar[SearchPhase]
    SEARCH_PHASE_DONE: _ClassVar[SearchPhase]

class SearchView(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEARCH_VIEW_UNSPECIFIED: _ClassVar[SearchView]
    SEARCH_VIEW_BASIC: _ClassVar[SearchView]
    SEARCH_VIEW_FULL: _ClassVar[SearchView]

class SearchEventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEARCH_EVENT_TYPE_UNSPECIFIED: _ClassVar[SearchEventType]
    SEARCH_EVENT_TYPE_SNAPSHOT: _ClassVar[SearchEventType]
    SEARCH_EVENT_TYPE_STATE_CHANGED: _ClassVar[SearchEventType]
    SEARCH_EVENT_TYPE_PHASE_CHANGED: _ClassVar[SearchEventType]
    SEARCH_EVENT_TYPE_ITERATION_DONE: _ClassVar[SearchEventType]
    SEARCH_EVENT_TYPE_NEW_BEST: _ClassVar[SearchEventType]
OBJECTIVE_AGGREGATE_UNSPECIFIED: ObjectiveAggregate
OBJECTIVE_AGGREGATE_MEAN: ObjectiveAggregate
OBJECTIVE_AGGREGATE_MIN: ObjectiveAggregate
OBJECTIVE_UNSPECIFIED: Objective
OBJECTIVE_ACCURACY: Objective
OBJECTIVE_ACCURACY_THEN_LOSS: Objective
OBJECTIVE_BLENDED: Objective
OBJECTIVE_CONFIDENT: Objective
MIX_MODE_UNSPECIFIED: MixMode
MIX_MODE_SPLIT: MixMode
MIX_MODE_BANDIT: MixMode
SEARCH_STATE_UNSPECIFIED: SearchState
SEARCH_STATE_PENDING: SearchState
SEARCH_STATE_RUNNING: SearchState
SEARCH_STATE_SUCCEEDED: SearchState
SEARCH_STATE_FAILED: SearchState
SEARCH_STATE_CANCELLED: SearchState
SEARCH_PHASE_UNSPECIFIED: SearchPhase
SEARCH_PHASE_SEEDING: SearchPhase
SEARCH_PHASE_PROPOSING: SearchPhase
SEARCH_PHASE_SCORING: SearchPhase
SEARCH_PHASE_EVALUATING: SearchPhase
SEARCH_PHASE_DONE: SearchPhase
SEARCH_VIEW_UNSPECIFIED: SearchView
SEARCH_VIEW_BASIC: SearchView
SEARCH_VIEW_FULL: SearchView
SEARCH_EVENT_TYPE_UNSPECIFIED: SearchEventType
SEARCH_EVENT_TYPE_SNAPSHOT: SearchEventType
SEARCH_EVENT_TYPE_STATE_CHANGED: SearchEventType
SEARCH_EVENT_TYPE_PHASE_CHANGED: SearchEventType
SEARCH_EVENT_TYPE_ITERATION_DONE: SearchEventType
SEARCH_EVENT_TYPE_NEW_BEST: SearchEventType

class Budget(_message.Message):
    __slots__ = ("max_llm_calls", "max_tokens", "max_evaluations", "max_duration")
    MAX_LLM_CALLS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_DURATION_FIELD_NUMBER: _ClassVar[int]
    max_llm_calls: int
    max_tokens: int
    max_evaluations: int
    max_duration: _duration_pb2.Duration
    def __init__(self, max_llm_calls: _Optional[int] = ..., max_tokens: _Optional[int] = ..., max_evaluations: _Optional[int] = ..., max_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class TemplateList(_message.Message):
    __slots__ = ("templates",)
    TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    templates: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, templates: _Optional[_Iterable[str]] = ...) -> None: ...

class InitialPool(_message.Message):
    __slots__ = ("named_pool", "templates", "llm_starters")
    NAMED_POOL_FIELD_NUMBER: _ClassVar[int]
    TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    LLM_STARTERS_FIELD_NUMBER: _ClassVar[int]
    named_pool: str
    templates: TemplateList
    llm_starters: int
    def __init__(self, named_pool: _Optional[str] = ..., templates: _Optional[_Union[TemplateList, _Mapping]] = ..., llm_starters: _Optional[int] = ...) -> None: ...

class SearchSpec(_message.Message):
    __slots__ = ("dataset", "selection_split", "evaluation_split", "strategy", "best_k", "worst_k", "temperature", "initial_pool", "restarts", "iterations", "templates_per_iteration", "budget", "seed", "task_description", "ensemble_k", "display_name", "patience", "min_delta", "mix", "mix_mode", "objective", "objective_weight", "model", "transfer_models", "objective_models", "objective_aggregate", "descriptions")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SELECTION_SPLIT_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_SPLIT_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    BEST_K_FIELD_NUMBER: _ClassVar[int]
    WORST_K_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    INITIAL_POOL_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    TEMPLATES_PER_ITERATION_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    TASK_DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ENSEMBLE_K_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    PATIENCE_FIELD_NUMBER: _ClassVar[int]
    MIN_DELTA_FIELD_NUMBER: _ClassVar[int]
    MIX_FIELD_NUMBER: _ClassVar[int]
    MIX_MODE_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_MODELS_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_MODELS_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_AGGREGATE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTIONS_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    selection_split: str
    evaluation_split: str
    strategy: _common_pb2.Strategy
    best_k: int
    worst_k: int
    temperature: float
    initial_pool: InitialPool
    restarts: int
    iterations: int
    templates_per_iteration: int
    budget: Budget
    seed: int
    task_description: str
    ensemble_k: int
    display_name: str
    patience: int
    min_delta: float
    mix: _containers.RepeatedScalarFieldContainer[_common_pb2.Strategy]
    mix_mode: MixMode
    objective: Objective
    objective_weight: float
    model: str
    transfer_models: _containers.RepeatedScalarFieldContainer[str]
    objective_models: _containers.RepeatedScalarFieldContainer[str]
    objective_aggregate: ObjectiveAggregate
    descriptions: DescriptionSearchSpec
    def __init__(self, dataset: _Optional[str] = ..., selection_split: _Optional[str] = ..., evaluation_split: _Optional[str] = ..., strategy: _Optional[_Union[_common_pb2.Strategy, str]] = ..., best_k: _Optional[int] = ..., worst_k: _Optional[int] = ..., temperature: _Optional[float] = ..., initial_pool: _Optional[_Union[InitialPool, _Mapping]] = ..., restarts: _Optional[int] = ..., iterations: _Optional[int] = ..., templates_per_iteration: _Optional[int] = ..., budget: _Optional[_Union[Budget, _Mapping]] = ..., seed: _Optional[int] = ..., task_description: _Optional[str] = ..., ensemble_k: _Optional[int] = ..., display_name: _Optional[str] = ..., patience: _Optional[int] = ..., min_delta: _Optional[float] = ..., mix: _Optional[_Iterable[_Union[_common_pb2.Strategy, str]]] = ..., mix_mode: _Optional[_Union[MixMode, str]] = ..., objective: _Optional[_Union[Objective, str]] = ..., objective_weight: _Optional[float] = ..., model: _Optional[str] = ..., transfer_models: _Optional[_Iterable[str]] = ..., objective_models: _Optional[_Iterable[str]] = ..., objective_aggregate: _Optional[_Union[ObjectiveAggregate, str]] = ..., descriptions: _Optional[_Union[DescriptionSearchSpec, _Mapping]] = ...) -> None: ...

class DescriptionSearchSpec(_message.Message):
    __slots__ = ("descriptions_per_class", "rounds", "weakest_k", "top_confusions", "max_classes_per_call", "template", "from_search")
    DESCRIPTIONS_PER_CLASS_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    WEAKEST_K_FIELD_NUMBER: _ClassVar[int]
    TOP_CONFUSIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_CLASSES_PER_CALL_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    FROM_SEARCH_FIELD_NUMBER: _ClassVar[int]
    descriptions_per_class: int
    rounds: int
    weakest_k: int
    top_confusions: int
    max_classes_per_call: int
    template: str
    from_search: str
    def __init__(self, descriptions_per_class: _Optional[int] = ..., rounds: _Optional[int] = ..., weakest_k: _Optional[int] = ..., top_confusions: _Optional[int] = ..., max_classes_per_call: _Optional[int] = ..., template: _Optional[str] = ..., from_search: _Optional[str] = ...) -> None: ...

class IterationSummary(_message.Message):
    __slots__ = ("restart", "iteration", "best_accuracy", "mean_accuracy", "num_templates", "propose_seconds", "score_seconds")
    RESTART_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    BEST_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    MEAN_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    NUM_TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    PROPOSE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SCORE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    restart: int
    iteration: int
    best_accuracy: float
    mean_accuracy: float
    num_templates: int
    propose_seconds: float
    score_seconds: float
    def __init__(self, restart: _Optional[int] = ..., iteration: _Optional[int] = ..., best_accuracy: _Optional[float] = ..., mean_accuracy: _Optional[float] = ..., num_templates: _Optional[int] = ..., propose_seconds: _Optional[float] = ..., score_seconds: _Optional[float] = ...) -> None: ...

class SearchResult(_message.Message):
    __slots__ = ("best", "best_evaluation_accuracy", "ensemble_templates", "ensemble_evaluation_accuracy", "partial", "tied_templates", "greedy_ensemble_templates", "greedy_ensemble_evaluation_accuracy", "transfer", "descriptions")
    BEST_FIELD_NUMBER: _ClassVar[int]
    BEST_EVALUATION_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    ENSEMBLE_TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    ENSEMBLE_EVALUATION_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    TIED_TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    GREEDY_ENSEMBLE_TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    GREEDY_ENSEMBLE_EVALUATION_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTIONS_FIELD_NUMBER: _ClassVar[int]
    best: _common_pb2.ScoredTemplate
    best_evaluation_accuracy: float
    ensemble_templates: _containers.RepeatedScalarFieldContainer[str]
    ensemble_evaluation_accuracy: float
    partial: bool
    tied_templates: _containers.RepeatedScalarFieldContainer[str]
    greedy_ensemble_templates: _containers.RepeatedScalarFieldContainer[str]
    greedy_ensemble_evaluation_accuracy: float
    transfer: _containers.RepeatedCompositeFieldContainer[TransferScore]
    descriptions: DescriptionSearchResult
    def __init__(self, best: _Optional[_Union[_common_pb2.ScoredTemplate, _Mapping]] = ..., best_evaluation_accuracy: _Optional[float] = ..., ensemble_templates: _Optional[_Iterable[str]] = ..., ensemble_evaluation_accuracy: _Optional[float] = ..., partial: _Optional[bool] = ..., tied_templates: _Optional[_Iterable[str]] = ..., greedy_ensemble_templates: _Optional[_Iterable[str]] = ..., greedy_ensemble_evaluation_accuracy: _Optional[float] = ..., transfer: _Optional[_Iterable[_Union[TransferScore, _Mapping]]] = ..., descriptions: _Optional[_Union[DescriptionSearchResult, _Mapping]] = ...) -> None: ...

class ClassDescriptionResult(_message.Message):
    __slots__ = ("class_name", "descriptions", "selection_accuracy")
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTIONS_FIELD_NUMBER: _ClassVar[int]
    SELECTION_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    class_name: str
    descriptions: _containers.RepeatedScalarFieldContainer[str]
    selection_accuracy: float
    def __init__(self, class_name: _Optional[str] = ..., descriptions: _Optional[_Iterable[str]] = ..., selection_accuracy: _Optional[float] = ...) -> None: ...

class DescriptionRound(_message.Message):
    __slots__ = ("round", "rewritten", "selection_accuracy", "selection_loss", "accepted")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    REWRITTEN_FIELD_NUMBER: _ClassVar[int]
    SELECTION_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    SELECTION_LOSS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    round: int
    rewritten: _containers.RepeatedScalarFieldContainer[str]
    selection_accuracy: float
    selection_loss: float
    accepted: bool
    def __init__(self, round: _Optional[int] = ..., rewritten: _Optional[_Iterable[str]] = ..., selection_accuracy: _Optional[float] = ..., selection_loss: _Optional[float] = ..., accepted: _Optional[bool] = ...) -> None: ...

class DescriptionSearchResult(_message.Message):
    __slots__ = ("classes", "selection_accuracy", "evaluation_accuracy", "template", "template_selection_accuracy", "template_evaluation_accuracy", "initial_selection_accuracy", "missing", "rounds", "from_search")
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    SELECTION_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_SELECTION_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_EVALUATION_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    INITIAL_SELECTION_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    FROM_SEARCH_FIELD_NUMBER: _ClassVar[int]
    classes: _containers.RepeatedCompositeFieldContainer[ClassDescriptionResult]
    selection_accuracy: float
    evaluation_accuracy: float
    template: str
    template_selection_accuracy: float
    template_evaluation_accuracy: float
    initial_selection_accuracy: float
    missing: _containers.RepeatedScalarFieldContainer[str]
    rounds: _containers.RepeatedCompositeFieldContainer[DescriptionRound]
    from_search: str
    def __init__(self, classes: _Optional[_Iterable[_Union[ClassDescriptionResult, _Mapping]]] = ..., selection_accuracy: _Optional[float] = ..., evaluation_accuracy: _Optional[float] = ..., template: _Optional[str] = ..., template_selection_accuracy: _Optional[float] = ..., template_evaluation_accuracy: _Optional[float] = ..., initial_selection_accuracy: _Optional[float] = ..., missing: _Optional[_Iterable[str]] = ..., rounds: _Optional[_Iterable[_Union[DescriptionRound, _Mapping]]] = ..., from_search: _Optional[str] = ...) -> None: ...

class TransferScore(_message.Message):
    __slots__ = ("model", "best_evaluation_accuracy", "ensemble_evaluation_accuracy", "plain_template", "plain_evaluation_accuracy")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BEST_EVALUATION_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    ENSEMBLE_EVALUATION_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    PLAIN_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    PLAIN_EVALUATION_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    model: str
    best_evaluation_accuracy: float
    ensemble_evaluation_accuracy: float
    plain_template: str
    plain_evaluation_accuracy: float
    def __init__(self, model: _Optional[str] = ..., best_evaluation_accuracy: _Optional[float] = ..., ensemble_evaluation_accuracy: _Optional[float] = ..., plain_template: _Optional[str] = ..., plain_evaluation_accuracy: _Optional[float] = ...) -> None: ...

class Search(_message.Message):
    __slots__ = ("name", "id", "spec", "state", "phase", "restart", "iteration", "create_time", "update_time", "end_time", "best", "result", "history", "iterations", "usage", "wall_seconds", "end_reason", "error_code", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    RESTART_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    BEST_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    WALL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    END_REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    id: str
    spec: SearchSpec
    state: SearchState
    phase: SearchPhase
    restart: int
    iteration: int
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    best: _common_pb2.ScoredTemplate
    result: SearchResult
    history: _containers.RepeatedCompositeFieldContainer[_common_pb2.ScoredTemplate]
    iterations: _containers.RepeatedCompositeFieldContainer[IterationSummary]
    usage: _common_pb2.Usage
    wall_seconds: float
    end_reason: str
    error_code: int
    request_id: str
    def __init__(self, name: _Optional[str] = ..., id: _Optional[str] = ..., spec: _Optional[_Union[SearchSpec, _Mapping]] = ..., state: _Optional[_Union[SearchState, str]] = ..., phase: _Optional[_Union[SearchPhase, str]] = ..., restart: _Optional[int] = ..., iteration: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., best: _Optional[_Union[_common_pb2.ScoredTemplate, _Mapping]] = ..., result: _Optional[_Union[SearchResult, _Mapping]] = ..., history: _Optional[_Iterable[_Union[_common_pb2.ScoredTemplate, _Mapping]]] = ..., iterations: _Optional[_Iterable[_Union[IterationSummary, _Mapping]]] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., wall_seconds: _Optional[float] = ..., end_reason: _Optional[str] = ..., error_code: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class StartSearchRequest(_message.Message):
    __slots__ = ("spec", "request_id", "validate_only")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    spec: SearchSpec
    request_id: str
    validate_only: bool
    def __init__(self, spec: _Optional[_Union[SearchSpec, _Mapping]] = ..., request_id: _Optional[str] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class StartSearchResponse(_message.Message):
    __slots__ = ("search", "plan")
    SEARCH_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    search: Search
    plan: SearchPlan
    def __init__(self, search: _Optional[_Union[Search, _Mapping]] = ..., plan: _Optional[_Union[SearchPlan, _Mapping]] = ...) -> None: ...

class SearchPlan(_message.Message):
    __slots__ = ("llm_calls", "prompt_tokens", "completion_tokens", "cost_usd", "evaluations", "num_classes", "stopped_by", "basis", "priced_as", "max_llm_calls")
    LLM_CALLS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    STOPPED_BY_FIELD_NUMBER: _ClassVar[int]
    BASIS_FIELD_NUMBER: _ClassVar[int]
    PRICED_AS_FIELD_NUMBER: _ClassVar[int]
    MAX_LLM_CALLS_FIELD_NUMBER: _ClassVar[int]
    llm_calls: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    evaluations: int
    num_classes: int
    stopped_by: _containers.RepeatedScalarFieldContainer[str]
    basis: str
    priced_as: str
    max_llm_calls: int
    def __init__(self, llm_calls: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., cost_usd: _Optional[float] = ..., evaluations: _Optional[int] = ..., num_classes: _Optional[int] = ..., stopped_by: _Optional[_Iterable[str]] = ..., basis: _Optional[str] = ..., priced_as: _Optional[str] = ..., max_llm_calls: _Optional[int] = ...) -> None: ...

class GetSearchRequest(_message.Message):
    __slots__ = ("name", "view")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    name: str
    view: SearchView
    def __init__(self, name: _Optional[str] = ..., view: _Optional[_Union[SearchView, str]] = ...) -> None: ...

class GetSearchResponse(_message.Message):
    __slots__ = ("search",)
    SEARCH_FIELD_NUMBER: _ClassVar[int]
    search: Search
    def __init__(self, search: _Optional[_Union[Search, _Mapping]] = ...) -> None: ...

class WatchSearchRequest(_message.Message):
    __slots__ = ("name", "view")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    name: str
    view: SearchView
    def __init__(self, name: _Optional[str] = ..., view: _Optional[_Union[SearchView, str]] = ...) -> None: ...

class WatchSearchResponse(_message.Message):
    __slots__ = ("event", "search")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    SEARCH_FIELD_NUMBER: _ClassVar[int]
    event: SearchEventType
    search: Search
    def __init__(self, event: _Optional[_Union[SearchEventType, str]] = ..., search: _Optional[_Union[Search, _Mapping]] = ...) -> None: ...

class CancelSearchRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class CancelSearchResponse(_message.Message):
    __slots__ = ("search",)
    SEARCH_FIELD_NUMBER: _ClassVar[int]
    search: Search
    def __init__(self, search: _Optional[_Union[Search, _Mapping]] = ...) -> None: ...

class ListSearchesRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "state")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    state: SearchState
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., state: _Optional[_Union[SearchState, str]] = ...) -> None: ...

class ListSearchesResponse(_message.Message):
    __slots__ = ("searches", "next_page_token")
    SEARCHES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    searches: _containers.RepeatedCompositeFieldContainer[Search]
    next_page_token: str
    def __init__(self, searches: _Optional[_Iterable[_Union[Search, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ReplaySearchRequest(_message.Message):
    __slots__ = ("name", "spec", "update_mask")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    name: str
    spec: SearchSpec
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, name: _Optional[str] = ..., spec: _Optional[_Union[SearchSpec, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class ReplaySearchResponse(_message.Message):
    __slots__ = ("original", "replayed", "scored")
    ORIGINAL_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    SCORED_FIELD_NUMBER: _ClassVar[int]
    original: Search
    replayed: Search
    scored: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, original: _Optional[_Union[Search, _Mapping]] = ..., replayed: _Optional[_Union[Search, _Mapping]] = ..., scored: _Optional[_Iterable[str]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServedModel(_message.Message):
    __slots__ = ("id", "target", "ready", "datasets", "default", "reason", "model_name", "pretrained")
    ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    PRETRAINED_FIELD_NUMBER: _ClassVar[int]
    id: str
    target: str
    ready: bool
    datasets: _containers.RepeatedScalarFieldContainer[str]
    default: bool
    reason: str
    model_name: str
    pretrained: str
    def __init__(self, id: _Optional[str] = ..., target: _Optional[str] = ..., ready: _Optional[bool] = ..., datasets: _Optional[_Iterable[str]] = ..., default: _Optional[bool] = ..., reason: _Optional[str] = ..., model_name: _Optional[str] = ..., pretrained: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ServedModel]
    def __init__(self, models: _Optional[_Iterable[_Union[ServedModel, _Mapping]]] = ...) -> None: ...

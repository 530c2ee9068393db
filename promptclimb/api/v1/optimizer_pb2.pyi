from promptclimb.api.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProposePromptsRequest(_message.Message):
    __slots__ = ("task_description", "class_names", "history", "strategy", "best_k", "worst_k", "num_templates", "temperature", "conversation", "seed")
    TASK_DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    BEST_K_FIELD_NUMBER: _ClassVar[int]
    WORST_K_FIELD_NUMBER: _ClassVar[int]
    NUM_TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    task_description: str
    class_names: _containers.RepeatedScalarFieldContainer[str]
    history: _containers.RepeatedCompositeFieldContainer[_common_pb2.ScoredTemplate]
    strategy: _common_pb2.Strategy
    best_k: int
    worst_k: int
    num_templates: int
    temperature: float
    conversation: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChatMessage]
    seed: int
    def __init__(self, task_description: _Optional[str] = ..., class_names: _Optional[_Iterable[str]] = ..., history: _Optional[_Iterable[_Union[_common_pb2.ScoredTemplate, _Mapping]]] = ..., strategy: _Optional[_Union[_common_pb2.Strategy, str]] = ..., best_k: _Optional[int] = ..., worst_k: _Optional[int] = ..., num_templates: _Optional[int] = ..., temperature: _Optional[float] = ..., conversation: _Optional[_Iterable[_Union[_common_pb2.ChatMessage, _Mapping]]] = ..., seed: _Optional[int] = ...) -> None: ...

class RejectedCandidate(_message.Message):
    __slots__ = ("text", "reason")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    text: str
    reason: str
    def __init__(self, text: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ProposePromptsResponse(_message.Message):
    __slots__ = ("templates", "rejected", "usage", "conversation", "model", "latency_seconds", "structured")
    TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LATENCY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STRUCTURED_FIELD_NUMBER: _ClassVar[int]
    templates: _containers.RepeatedScalarFieldContainer[str]
    rejected: _containers.RepeatedCompositeFieldContainer[RejectedCandidate]
    usage: _common_pb2.Usage
    conversation: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChatMessage]
    model: str
    latency_seconds: float
    structured: bool
    def __init__(self, templates: _Optional[_Iterable[str]] = ..., rejected: _Optional[_Iterable[_Union[RejectedCandidate, _Mapping]]] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., conversation: _Optional[_Iterable[_Union[_common_pb2.ChatMessage, _Mapping]]] = ..., model: _Optional[str] = ..., latency_seconds: _Optional[float] = ..., structured: _Optional[bool] = ...) -> None: ...

class ScoredClass(_message.Message):
    __slots__ = ("class_name", "descriptions", "accuracy")
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTIONS_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    class_name: str
    descriptions: _containers.RepeatedScalarFieldContainer[str]
    accuracy: float
    def __init__(self, class_name: _Optional[str] = ..., descriptions: _Optional[_Iterable[str]] = ..., accuracy: _Optional[float] = ...) -> None: ...

class ProposeDescriptionsRequest(_message.Message):
    __slots__ = ("task_description", "strategy", "class_names", "descriptions_per_class", "scored", "confusions", "weakest_k", "max_classes_per_call", "max_llm_calls", "temperature", "seed")
    TASK_DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTIONS_PER_CLASS_FIELD_NUMBER: _ClassVar[int]
    SCORED_FIELD_NUMBER: _ClassVar[int]
    CONFUSIONS_FIELD_NUMBER: _ClassVar[int]
    WEAKEST_K_FIELD_NUMBER: _ClassVar[int]
    MAX_CLASSES_PER_CALL_FIELD_NUMBER: _ClassVar[int]
    MAX_LLM_CALLS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    task_description: str
    strategy: _common_pb2.DescriptionStrategy
    class_names: _containers.RepeatedScalarFieldContainer[str]
    descriptions_per_class: int
    scored: _containers.RepeatedCompositeFieldContainer[ScoredClass]
    confusions: _containers.RepeatedCompositeFieldContainer[_common_pb2.Confusion]
    weakest_k: int
    max_classes_per_call: int
    max_llm_calls: int
    temperature: float
    seed: int
    def __init__(self, task_description: _Optional[str] = ..., strategy: _Optional[_Union[_common_pb2.DescriptionStrategy, str]] = ..., class_names: _Optional[_Iterable[str]] = ..., descriptions_per_class: _Optional[int] = ..., scored: _Optional[_Iterable[_Union[ScoredClass, _Mapping]]] = ..., confusions: _Optional[_Iterable[_Union[_common_pb2.Confusion, _Mapping]]] = ..., weakest_k: _Optional[int] = ..., max_classes_per_call: _Optional[int] = ..., max_llm_calls: _Optional[int] = ..., temperature: _Optional[float] = ..., seed: _Optional[int] = ...) -> None: ...

class ProposeDescriptionsResponse(_message.Message):
    __slots__ = ("descriptions", "missing", "rejected", "usage", "model", "latency_seconds", "structured")
    DESCRIPTIONS_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LATENCY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STRUCTURED_FIELD_NUMBER: _ClassVar[int]
    descriptions: _containers.RepeatedCompositeFieldContainer[_common_pb2.ClassDescriptions]
    missing: _containers.RepeatedScalarFieldContainer[str]
    rejected: _containers.RepeatedCompositeFieldContainer[RejectedCandidate]
    usage: _common_pb2.Usage
    model: str
    latency_seconds: float
    structured: bool
    def __init__(self, descriptions: _Optional[_Iterable[_Union[_common_pb2.ClassDescriptions, _Mapping]]] = ..., missing: _Optional[_Iterable[str]] = ..., rejected: _Optional[_Iterable[_Union[RejectedCandidate, _Mapping]]] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., model: _Optional[str] = ..., latency_seconds: _Optional[float] = ..., structured: _Optional[bool] = ...) -> None: ...

class PlanDescriptionsRequest(_message.Message):
    __slots__ = ("request",)
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    request: ProposeDescriptionsRequest
    def __init__(self, request: _Optional[_Union[ProposeDescriptionsRequest, _Mapping]] = ...) -> None: ...

class PlanDescriptionsResponse(_message.Message):
    __slots__ = ("llm_calls", "max_llm_calls", "prompt_tokens", "completion_tokens", "model", "classes_per_call")
    LLM_CALLS_FIELD_NUMBER: _ClassVar[int]
    MAX_LLM_CALLS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CLASSES_PER_CALL_FIELD_NUMBER: _ClassVar[int]
    llm_calls: int
    max_llm_calls: int
    prompt_tokens: int
    completion_tokens: int
    model: str
    classes_per_call: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, llm_calls: _Optional[int] = ..., max_llm_calls: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., model: _Optional[str] = ..., classes_per_call: _Optional[_Iterable[int]] = ...) -> None: ...

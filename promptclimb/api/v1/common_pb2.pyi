from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Strategy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STRATEGY_UNSPECIFIED: _ClassVar[Strategy]
    STRATEGY_CONVERSATION: _ClassVar[Strategy]
    STRATEGY_CONTRAST: _ClassVar[Strategy]
    STRATEGY_TRAJECTORY: _ClassVar[Strategy]
    STRATEGY_EDIT: _ClassVar[Strategy]
    STRATEGY_EVOLVE: _ClassVar[Strategy]
    STRATEGY_RELEASED: _ClassVar[Strategy]

class DescriptionStrategy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DESCRIPTION_STRATEGY_UNSPECIFIED: _ClassVar[DescriptionStrategy]
    DESCRIPTION_STRATEGY_DESCRIBE: _ClassVar[DescriptionStrategy]
    DESCRIPTION_STRATEGY_REFINE: _ClassVar[DescriptionStrategy]
STRATEGY_UNSPECIFIED: Strategy
STRATEGY_CONVERSATION: Strategy
STRATEGY_CONTRAST: Strategy
STRATEGY_TRAJECTORY: Strategy
STRATEGY_EDIT: Strategy
STRATEGY_EVOLVE: Strategy
STRATEGY_RELEASED: Strategy
DESCRIPTION_STRATEGY_UNSPECIFIED: DescriptionStrategy
DESCRIPTION_STRATEGY_DESCRIBE: DescriptionStrategy
DESCRIPTION_STRATEGY_REFINE: DescriptionStrategy

class ScoredTemplate(_message.Message):
    __slots__ = ("template", "accuracy", "correct", "total", "restart", "iteration", "origin", "loss")
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    RESTART_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    template: str
    accuracy: float
    correct: int
    total: int
    restart: int
    iteration: int
    origin: str
    loss: float
    def __init__(self, template: _Optional[str] = ..., accuracy: _Optional[float] = ..., correct: _Optional[int] = ..., total: _Optional[int] = ..., restart: _Optional[int] = ..., iteration: _Optional[int] = ..., origin: _Optional[str] = ..., loss: _Optional[float] = ...) -> None: ...

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("llm_calls", "prompt_tokens", "completion_tokens", "evaluations", "cost_usd")
    LLM_CALLS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    llm_calls: int
    prompt_tokens: int
    completion_tokens: int
    evaluations: int
    cost_usd: float
    def __init__(self, llm_calls: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., evaluations: _Optional[int] = ..., cost_usd: _Optional[float] = ...) -> None: ...

class ClassDescriptions(_message.Message):
    __slots__ = ("class_name", "texts")
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    class_name: str
    texts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, class_name: _Optional[str] = ..., texts: _Optional[_Iterable[str]] = ...) -> None: ...

class Confusion(_message.Message):
    __slots__ = ("true_class", "predicted_class", "count")
    TRUE_CLASS_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_CLASS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    true_class: str
    predicted_class: str
    count: int
    def __init__(self, true_class: _Optional[str] = ..., predicted_class: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

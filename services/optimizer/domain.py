"""The optimizer's vocabulary, free of gRPC: scored templates, chat messages, a proposal request."""

from __future__ import annotations

from dataclasses import dataclass, field

from promptclimb.common.vocabulary import Strategy
from services.optimizer.parsing import RejectedCandidate

# Bounds a request must respect; documented in docs and checked by :func:`validate`.
MAX_NUM_TEMPLATES = 20
MAX_K = 50
MAX_HISTORY = 10_000
MAX_CONVERSATION_MESSAGES = 200
ROLES = ("system", "user", "assistant")


__all__ = ["Strategy"]  # re-exported: the optimizer speaks the shared vocabulary


@dataclass(frozen=True)
class ScoredTemplate:
    """A template with its accuracy (fraction in [0, 1]) on the selection split."""

    template: str
    accuracy: float
    loss: float | None = None  # the scorer's cross-entropy: breaks accuracy ties (lower is better)


@dataclass(frozen=True)
class ChatMessage:
    """One message of a chat with the LLM."""

    role: str
    content: str


@dataclass
class ProposalRequest:
    """Everything one proposal needs; the optimizer keeps no state between requests."""

    strategy: Strategy
    history: list[ScoredTemplate]
    num_templates: int
    best_k: int
    worst_k: int = 0
    task_description: str = ""
    class_names: list[str] = field(default_factory=list)
    conversation: list[ChatMessage] = field(default_factory=list)
    temperature: float | None = None
    seed: int | None = None


@dataclass
class Usage:
    """What a proposal cost."""

    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Proposal:
    """New templates from one call, what was rejected, and what it cost."""

    templates: list[str]
    rejected: list[RejectedCandidate]
    conversation: list[ChatMessage]
    usage: Usage
    model: str
    latency_seconds: float
    structured: bool


class OptimizerError(Exception):
    """Base of the errors a proposal can end with; the servicer maps each to a status code."""


class InvalidRequest(OptimizerError):
    """The request itself is wrong (INVALID_ARGUMENT); ``field`` names the offending field."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name
        self.message = message


class LLMUnavailable(OptimizerError):
    """The LLM endpoint could not be reached or kept failing after all retries (UNAVAILABLE)."""

    def __init__(self, message: str, retry_after_seconds: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class LLMAuthFailed(OptimizerError):
    """The LLM endpoint refused our credentials (UNAUTHENTICATED). Never carries the key."""


class LLMRejected(OptimizerError):
    """The LLM endpoint refused the request for a reason retrying cannot fix (FAILED_PRECONDITION),
    e.g. an unknown model name or a context-length overflow."""


class ContextTooLong(LLMRejected):
    """The endpoint refused the request's length; the optimizer shrinks it and asks again.

    ``limit`` (the endpoint's context), ``requested`` (tokens it counted, completion included) and
    ``prompt`` (its count of the messages alone) are what its message said, where it said them.
    """

    def __init__(
        self,
        message: str,
        *,
        limit: int | None = None,
        requested: int | None = None,
        prompt: int | None = None,
    ) -> None:
        super().__init__(message)
        self.limit, self.requested, self.prompt = limit, requested, prompt


def validate(request: ProposalRequest) -> None:
    """Raise :class:`InvalidRequest` for a request no strategy can answer."""
    if not 1 <= request.num_templates <= MAX_NUM_TEMPLATES:
        raise InvalidRequest(
            "num_templates",
            f"num_templates must be between 1 and {MAX_NUM_TEMPLATES}, got {request.num_templates}",
        )
    if not 1 <= request.best_k <= MAX_K:
        raise InvalidRequest("best_k", f"best_k must be between 1 and {MAX_K}, got {request.best_k}")
    if not 0 <= request.worst_k <= MAX_K:
        raise InvalidRequest("worst_k", f"worst_k must be between 0 and {MAX_K}, got {request.worst_k}")
    if not request.history and request.conversation:
        # Feedback turns report accuracies from the history; an empty history means nothing to report.
        raise InvalidRequest("history", "history is empty but the conversation is not: nothing to report")
    if len(request.history) > MAX_HISTORY:
        raise InvalidRequest(
            "history", f"history holds {len(request.history)} templates, at most {MAX_HISTORY}"
        )
    for i, scored in enumerate(request.history):
        if not scored.template.strip():
            raise InvalidRequest(f"history[{i}].template", "template is empty")
        # `not <=` also catches NaN.
        if not 0.0 <= scored.accuracy <= 1.0:
            raise InvalidRequest(
                f"history[{i}].accuracy", f"accuracy must be in [0, 1], got {scored.accuracy}"
            )
    if request.temperature is not None and not 0.0 <= request.temperature <= 2.0:
        raise InvalidRequest("temperature", f"temperature must be in [0, 2], got {request.temperature}")
    if len(request.conversation) > MAX_CONVERSATION_MESSAGES:
        raise InvalidRequest(
            "conversation",
            f"conversation holds {len(request.conversation)} messages, at most {MAX_CONVERSATION_MESSAGES}; "
            "start a new one",
        )
    for i, message in enumerate(request.conversation):
        if message.role not in ROLES:
            raise InvalidRequest(f"conversation[{i}].role", f"role must be one of {', '.join(ROLES)}")
    if request.conversation and request.strategy is Strategy.CONVERSATION:
        if request.conversation[-1].role != "assistant":
            raise InvalidRequest(
                "conversation",
                "conversation must end with the assistant's reply, as the previous call returned it",
            )

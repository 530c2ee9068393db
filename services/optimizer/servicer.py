"""The gRPC adapter: converts the optimizer's messages to the domain and errors to status codes."""

from __future__ import annotations

import json

import grpc

from promptclimb.api.v1 import common_pb2, optimizer_pb2, optimizer_pb2_grpc
from promptclimb.common.errors import ServiceError, abort, invalid_argument
from promptclimb.common.vocabulary import (
    DEFAULT_BEST_K,
    DEFAULT_DESCRIPTIONS_PER_CLASS,
    DEFAULT_NUM_TEMPLATES,
    DEFAULT_WEAKEST_K,
    DEFAULT_WORST_K,
    DESCRIPTION_STRATEGY_FROM_PROTO,
    DESCRIPTION_STRATEGY_TO_PROTO,
    STRATEGY_FROM_PROTO,
    STRATEGY_TO_PROTO,
)
from services.optimizer.backend import ChatBackend
from services.optimizer.core import Optimizer
from services.optimizer.descriptions import (
    DEFAULT_MAX_CLASSES_PER_CALL,
    DescriptionPlan,
    DescriptionProposal,
    DescriptionRequest,
    DescriptionWriter,
    ScoredClass,
)
from services.optimizer.domain import (
    ChatMessage,
    InvalidRequest,
    LLMAuthFailed,
    LLMRejected,
    LLMUnavailable,
    OptimizerError,
    Proposal,
    ProposalRequest,
    ScoredTemplate,
)


def to_domain(request: optimizer_pb2.ProposePromptsRequest) -> ProposalRequest:
    """The domain request; raises :class:`InvalidRequest` for an unknown strategy."""
    strategy = STRATEGY_FROM_PROTO.get(request.strategy)
    if strategy is None:
        known = ", ".join(common_pb2.Strategy.Name(v) for v in STRATEGY_TO_PROTO.values())
        raise InvalidRequest("strategy", f"strategy must be one of {known}, got {request.strategy}")
    return ProposalRequest(
        strategy=strategy,
        history=[
            ScoredTemplate(h.template, h.accuracy, h.loss if h.HasField("loss") else None)
            for h in request.history
        ],
        num_templates=request.num_templates if request.HasField("num_templates") else DEFAULT_NUM_TEMPLATES,
        best_k=request.best_k if request.HasField("best_k") else DEFAULT_BEST_K,
        worst_k=request.worst_k if request.HasField("worst_k") else DEFAULT_WORST_K,
        task_description=request.task_description,
        class_names=list(request.class_names),
        conversation=[ChatMessage(m.role, m.content) for m in request.conversation],
        temperature=request.temperature if request.HasField("temperature") else None,
        seed=request.seed if request.HasField("seed") else None,
    )


def to_proto(proposal: Proposal) -> optimizer_pb2.ProposePromptsResponse:
    """The response message of a proposal."""
    return optimizer_pb2.ProposePromptsResponse(
        templates=proposal.templates,
        rejected=[optimizer_pb2.RejectedCandidate(text=r.text, reason=r.reason) for r in proposal.rejected],
        usage=common_pb2.Usage(
            llm_calls=proposal.usage.llm_calls,
            prompt_tokens=proposal.usage.prompt_tokens,
            completion_tokens=proposal.usage.completion_tokens,
        ),
        conversation=[common_pb2.ChatMessage(role=m.role, content=m.content) for m in proposal.conversation],
        model=proposal.model,
        latency_seconds=proposal.latency_seconds,
        structured=proposal.structured,
    )


def descriptions_to_domain(request: optimizer_pb2.ProposeDescriptionsRequest) -> DescriptionRequest:
    """The domain request; raises :class:`InvalidRequest` for an unknown strategy."""
    strategy = DESCRIPTION_STRATEGY_FROM_PROTO.get(request.strategy)
    if strategy is None:
        known = ", ".join(
            common_pb2.DescriptionStrategy.Name(v) for v in DESCRIPTION_STRATEGY_TO_PROTO.values()
        )
        raise InvalidRequest("strategy", f"strategy must be one of {known}, got {request.strategy}")

    def given(name: str, default: int) -> int:
        return int(getattr(request, name)) if request.HasField(name) else default

    return DescriptionRequest(
        strategy=strategy,
        class_names=list(request.class_names),
        descriptions_per_class=given("descriptions_per_class", DEFAULT_DESCRIPTIONS_PER_CLASS),
        task_description=request.task_description,
        scored=[ScoredClass(c.class_name, tuple(c.descriptions), c.accuracy) for c in request.scored],
        confusions=[(c.true_class, c.predicted_class, c.count) for c in request.confusions],
        weakest_k=given("weakest_k", DEFAULT_WEAKEST_K),
        max_classes_per_call=given("max_classes_per_call", DEFAULT_MAX_CLASSES_PER_CALL),
        max_llm_calls=request.max_llm_calls if request.HasField("max_llm_calls") else None,
        temperature=request.temperature if request.HasField("temperature") else None,
        seed=request.seed if request.HasField("seed") else None,
    )


def descriptions_to_proto(proposal: DescriptionProposal) -> optimizer_pb2.ProposeDescriptionsResponse:
    """The response message of a description proposal."""
    return optimizer_pb2.ProposeDescriptionsResponse(
        descriptions=[
            common_pb2.ClassDescriptions(class_name=c, texts=texts)
            for c, texts in proposal.descriptions.items()
        ],
        missing=proposal.missing,
        rejected=[optimizer_pb2.RejectedCandidate(text=r.text, reason=r.reason) for r in proposal.rejected],
        usage=common_pb2.Usage(
            llm_calls=proposal.usage.llm_calls,
            prompt_tokens=proposal.usage.prompt_tokens,
            completion_tokens=proposal.usage.completion_tokens,
        ),
        model=proposal.model,
        latency_seconds=proposal.latency_seconds,
        structured=proposal.structured,
    )


def plan_to_proto(plan: DescriptionPlan) -> optimizer_pb2.PlanDescriptionsResponse:
    """The response message of a description plan."""
    return optimizer_pb2.PlanDescriptionsResponse(
        llm_calls=plan.llm_calls,
        max_llm_calls=plan.max_llm_calls,
        prompt_tokens=plan.prompt_tokens,
        completion_tokens=plan.completion_tokens,
        model=plan.model,
        classes_per_call=plan.classes_per_call,
    )


def to_service_error(error: OptimizerError) -> ServiceError:
    """The status an optimizer error is reported with."""
    if isinstance(error, InvalidRequest):
        return invalid_argument(error.message, error.field)
    if isinstance(error, LLMUnavailable):
        return ServiceError(
            grpc.StatusCode.UNAVAILABLE, str(error), retry_after_seconds=error.retry_after_seconds
        )
    if isinstance(error, LLMAuthFailed):
        return ServiceError(grpc.StatusCode.UNAUTHENTICATED, str(error))
    if isinstance(error, LLMRejected):
        return ServiceError(grpc.StatusCode.FAILED_PRECONDITION, str(error))
    return ServiceError(grpc.StatusCode.INTERNAL, str(error))


class OptimizerServicer(optimizer_pb2_grpc.OptimizerServiceServicer):
    """OptimizerService over an :class:`Optimizer`."""

    def __init__(self, optimizer: Optimizer) -> None:
        self.optimizer = optimizer
        self.writer = DescriptionWriter(
            optimizer.backend,
            default_temperature=optimizer.default_temperature,
            window=optimizer.window,
            counter=optimizer.counter,
            # What a plan names as the model; a reply names the one that answered.
            model=optimizer.backend.config.model if isinstance(optimizer.backend, ChatBackend) else "",
        )

    async def ProposePrompts(
        self, request: optimizer_pb2.ProposePromptsRequest, context: grpc.aio.ServicerContext
    ) -> optimizer_pb2.ProposePromptsResponse:
        """Propose new templates for the request's scored history."""
        try:
            proposal = await self.optimizer.propose(to_domain(request))
        except OptimizerError as error:
            await abort(context, to_service_error(error))
            raise  # abort raises; this line only satisfies type checkers
        except json.JSONDecodeError as error:
            # The openai client raises this for a 200 whose body is not JSON: a broken or
            # half-written reply from the endpoint, worth another try like a 5xx.
            unavailable = LLMUnavailable(f"the LLM endpoint sent a malformed reply: {error.msg}", 1.0)
            await abort(context, to_service_error(unavailable))
            raise
        return to_proto(proposal)

    async def ProposeDescriptions(
        self, request: optimizer_pb2.ProposeDescriptionsRequest, context: grpc.aio.ServicerContext
    ) -> optimizer_pb2.ProposeDescriptionsResponse:
        """Write descriptions per class (describe) or rewrite the weakest classes' (refine)."""
        try:
            proposal = await self.writer.propose(descriptions_to_domain(request))
        except OptimizerError as error:
            await abort(context, to_service_error(error))
            raise
        except json.JSONDecodeError as error:
            unavailable = LLMUnavailable(f"the LLM endpoint sent a malformed reply: {error.msg}", 1.0)
            await abort(context, to_service_error(unavailable))
            raise
        return descriptions_to_proto(proposal)

    async def PlanDescriptions(
        self, request: optimizer_pb2.PlanDescriptionsRequest, context: grpc.aio.ServicerContext
    ) -> optimizer_pb2.PlanDescriptionsResponse:
        """The calls and tokens a ProposeDescriptions request would take, without asking the LLM."""
        try:
            plan = await self.writer.plan(descriptions_to_domain(request.request))
        except OptimizerError as error:
            await abort(context, to_service_error(error))
            raise
        return plan_to_proto(plan)

"""The optimizer: request -> meta-prompt messages -> LLM -> parsed templates. No gRPC here."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, Protocol

from services.optimizer import metrics
from services.optimizer.backend import Completion
from services.optimizer.context import ContextWindow, TokenCounter, fit_messages
from services.optimizer.domain import (
    ChatMessage,
    ContextTooLong,
    Proposal,
    ProposalRequest,
    Strategy,
    Usage,
    validate,
)
from services.optimizer.parsing import DEFAULT_MAX_CHARS, parse_reply
from services.optimizer.strategies import STRATEGIES, LocalStrategy, ProposalStrategy

log = logging.getLogger(__name__)

# Tries after a context-length rejection, each with a request shrunk to what the endpoint said.
MAX_CONTEXT_RETRIES = 3


class CompletionBackend(Protocol):
    """What the optimizer needs from an LLM backend (:class:`~.backend.ChatBackend` is one)."""

    async def complete(
        self,
        messages: list[ChatMessage],
        *,
        temperature: float,
        n_templates: int,
        seed: int | None,
        formats: Mapping[str, dict[str, Any]] | None = None,
    ) -> Completion:
        """The model's reply to ``messages`` (``formats``: a response_format per dialect other than
        the templates' one, :mod:`services.optimizer.descriptions`)."""
        ...


class Optimizer:
    """Proposes new templates from a scored history; stateless between calls."""

    def __init__(
        self,
        backend: CompletionBackend,
        *,
        default_temperature: float = 1.0,
        max_template_chars: int = DEFAULT_MAX_CHARS,
        strategies: dict[Strategy, ProposalStrategy | LocalStrategy] | None = None,
        window: ContextWindow | None = None,
        counter: TokenCounter | None = None,
    ) -> None:
        self.backend = backend
        self.default_temperature = default_temperature
        self.max_template_chars = max_template_chars
        self.strategies = strategies or STRATEGIES
        # Without a window every request is sent as built (tests of wording, endpoints that say nothing).
        self.window = window
        self.counter = counter

    async def propose(self, request: ProposalRequest) -> Proposal:
        """Ask the LLM (or a strategy without one) for ``request.num_templates`` new templates.

        Raises :class:`~.domain.InvalidRequest` for a bad request and the backend's
        :class:`~.domain.OptimizerError` subclasses when the LLM cannot answer.
        """
        validate(request)
        strategy = self.strategies[request.strategy]
        if isinstance(strategy, LocalStrategy):
            return self._propose_locally(strategy, request)
        temperature = self.default_temperature if request.temperature is None else request.temperature
        scale = 1.0  # the endpoint's tokens per counted token, once a rejection told us
        wasted = Usage()  # replies cut by a full window: asked again, but spent all the same
        for attempt in range(MAX_CONTEXT_RETRIES + 1):
            messages, counted = await self._fitted(strategy, request, scale)
            try:
                completion = await self.backend.complete(
                    messages, temperature=temperature, n_templates=request.num_templates, seed=request.seed
                )
                if self._cut_by_a_full_window(completion) and attempt < MAX_CONTEXT_RETRIES:
                    # llama-cpp-python does not refuse a prompt that leaves too little room: it cuts
                    # the reply where the window ends. That names the window: prompt + reply.
                    assert self.window is not None
                    self.window.learn(
                        completion.prompt_tokens + completion.completion_tokens, None, sent=counted
                    )
                    if counted:
                        scale = max(scale, completion.prompt_tokens / counted)
                    metrics.CONTEXT_RETRIES.inc()
                    wasted.llm_calls += completion.llm_calls
                    wasted.prompt_tokens += completion.prompt_tokens
                    wasted.completion_tokens += completion.completion_tokens
                    continue
                break
            except ContextTooLong as refused:
                if self.window is None or attempt == MAX_CONTEXT_RETRIES:
                    raise
                self.window.learn(refused.limit, refused.requested, sent=counted)
                if refused.prompt and counted:
                    scale = max(scale, refused.prompt / counted)
                metrics.CONTEXT_RETRIES.inc()
        parsed = parse_reply(
            completion.text, (s.template for s in request.history), max_chars=self.max_template_chars
        )
        metrics.record_proposals(len(parsed.templates), [r.reason for r in parsed.rejected])
        log.info(
            "proposed",
            extra={
                "strategy": request.strategy.value,
                "accepted": len(parsed.templates),
                "rejected": len(parsed.rejected),
                "structured": completion.structured,
                "cached": completion.cached,
                "prompt_tokens": completion.prompt_tokens,
                "completion_tokens": completion.completion_tokens,
            },
        )
        return Proposal(
            templates=parsed.templates,
            rejected=parsed.rejected,
            conversation=[*messages, ChatMessage("assistant", completion.text)],
            usage=Usage(
                llm_calls=completion.llm_calls + wasted.llm_calls,
                prompt_tokens=completion.prompt_tokens + wasted.prompt_tokens,
                completion_tokens=completion.completion_tokens + wasted.completion_tokens,
            ),
            model=completion.model,
            latency_seconds=completion.latency_seconds,
            structured=completion.structured,
        )

    def _propose_locally(self, strategy: LocalStrategy, request: ProposalRequest) -> Proposal:
        """A strategy with no LLM: its templates, no conversation, zero usage."""
        started = time.perf_counter()
        templates = strategy.templates(request, max_chars=self.max_template_chars)
        metrics.record_proposals(len(templates), [])
        log.info(
            "proposed", extra={"strategy": request.strategy.value, "accepted": len(templates), "rejected": 0}
        )
        return Proposal(
            templates=templates,
            rejected=[],
            conversation=[],
            usage=Usage(),
            model="",
            latency_seconds=time.perf_counter() - started,
            structured=False,
        )

    def _cut_by_a_full_window(self, completion: Completion) -> bool:
        """A reply cut short of the completion cap: the context window, not max_tokens, ended it."""
        window = self.window
        return (
            window is not None
            and completion.finish_reason == "length"
            and 0 < completion.completion_tokens < window.completion_tokens
            and completion.prompt_tokens + completion.completion_tokens < window.tokens
        )

    async def _fitted(
        self, strategy: ProposalStrategy, request: ProposalRequest, scale: float
    ) -> tuple[list[ChatMessage], int]:
        """The strategy's messages fitted to the context window (as built when there is none)."""
        if self.window is None or self.counter is None:
            return strategy.messages(request), 0
        await self.window.ensure_known()
        budget = int(self.window.prompt_budget / scale)
        fold = getattr(strategy, "fold", None)
        messages, counted = await fit_messages(request, strategy.messages, fold, budget, self.counter.count)
        if len(messages) < len(request.conversation) + 1 or counted > budget:
            log.info(
                "request fitted to the context window",
                extra={"strategy": request.strategy.value, "tokens": counted, "budget": budget},
            )
        return messages, counted

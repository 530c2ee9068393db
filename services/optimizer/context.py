"""The LLM endpoint's context window: how long it is, how many tokens a chat takes, and how to fit one.

Every strategy's messages must fit ``context - completion cap - margin`` tokens, or the endpoint
refuses the request (llama.cpp's server at its usual 2,048 tokens refuses the paper's 15 best /
15 worst conversation within a few turns). The length comes from a setting, else from the server
where it reports one (llama.cpp's ``/props``, vLLM's ``/v1/models``), else
:data:`DEFAULT_CONTEXT_TOKENS`; a context-length rejection teaches the real one. Tokens are
counted by the endpoint's tokenizer where it offers one (llama-cpp-python's
``/extras/tokenize/count``, llama.cpp's ``/tokenize``), else estimated conservatively
(:func:`estimate_tokens`). Nothing is downloaded.

:func:`fit_messages` shrinks what a request shows until it fits, in this order: a conversation's
oldest feedback turns are folded into a summary inside the opening turn (system message, opening
and the newest turns kept), then fewer best/worst examples are shown (a conversation then
re-opens from the scored history, which is the summary of everything tried).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from services.optimizer.domain import ChatMessage, ProposalRequest, Strategy

log = logging.getLogger(__name__)

# When neither a setting nor the server says: a common size for local servers (llama.cpp's default
# is smaller, and its rejection then teaches the real one before any search is lost).
DEFAULT_CONTEXT_TOKENS = 8192
# Conservative estimate: English prompt text runs 3.5-4.5 characters per token in the tokenizers
# we know (2.7 for SmolLM2 on short templates full of punctuation); 2.5 over-counts all of them.
CHARS_PER_TOKEN = 2.5
# A chat template's wrapping of one message (role tags and separators: 5-6 tokens for ChatML).
TOKENS_PER_MESSAGE = 8
# The completion room reserved when requests carry no max_tokens cap.
DEFAULT_COMPLETION_RESERVE = 512
# Tokens kept free beyond the completion cap, for what a tokenizer count cannot see.
MARGIN_TOKENS = 48
# The smallest prompt we try to fit; below it the request is sent and the endpoint decides.
MIN_PROMPT_TOKENS = 256

_LIMIT = re.compile(r"maximum context length is (\d+)")
_REQUESTED = re.compile(r"you requested (\d+) tokens")
_PROMPT = re.compile(r"(\d+) in the messages")


def estimate_tokens(messages: Sequence[ChatMessage]) -> int:
    """A count that is at least the real one for the tokenizers we know (see :data:`CHARS_PER_TOKEN`)."""
    chars = sum(len(m.content) for m in messages)
    return math.ceil(chars / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * len(messages)


def parse_context_rejection(message: str) -> tuple[int | None, int | None, int | None]:
    """``(limit, requested, prompt)`` from an endpoint's context-length error text (each may be None).

    OpenAI's wording, which llama-cpp-python and vLLM copy: "This model's maximum context length
    is 2048 tokens. However, you requested 4831 tokens (4815 in the messages, 16 in the completion)."
    """
    found = [pattern.search(message) for pattern in (_LIMIT, _REQUESTED, _PROMPT)]
    limit, requested, prompt = (int(m.group(1)) if m else None for m in found)
    return limit, requested, prompt


def is_context_rejection(code: str | None, message: str) -> bool:
    """Whether a 400 answers the request's length (OpenAI's code, or the wording servers use)."""
    text = message.lower()
    return code == "context_length_exceeded" or "maximum context length" in text or "context window" in text


class TokenCounter(Protocol):
    """Counts the tokens of a chat as the endpoint will."""

    async def count(self, messages: Sequence[ChatMessage]) -> int:
        """Tokens of ``messages`` including the chat template's wrapping."""
        ...


@dataclass
class ContextWindow:
    """What the optimizer knows of one endpoint's window; ``tokens`` may be learned later."""

    tokens: int
    completion_tokens: int  # the completion cap sent with every request
    source: str = "default"  # "setting", "server", "default" or "rejection"
    # Asks the server for its context length (None: it does not say); called once, on first use.
    discover: Callable[[], Awaitable[int | None]] | None = None

    async def ensure_known(self) -> None:
        """Ask the server once for its context length when no setting gave one."""
        if self.discover is None:
            return
        discover, self.discover = self.discover, None
        if self.source == "default" and (reported := await discover()):
            self.tokens, self.source = reported, "server"
        log.info("LLM context window", extra={"context_tokens": self.tokens, "source": self.source})

    @property
    def prompt_budget(self) -> int:
        """Tokens the messages may take."""
        return max(MIN_PROMPT_TOKENS, self.tokens - self.completion_tokens - MARGIN_TOKENS)

    def learn(self, limit: int | None, requested: int | None, sent: int) -> None:
        """Shrink after a rejection: to the limit it names, else by a quarter of what was sent."""
        if limit is not None:
            self.tokens = min(self.tokens, limit)
        else:
            self.tokens = min(self.tokens, self.completion_tokens + MARGIN_TOKENS + int(0.75 * sent))
        self.source = "rejection"
        log.warning(
            "LLM endpoint refused the context length; fitting requests to it",
            extra={"context_tokens": self.tokens, "requested": requested},
        )


Build = Callable[[ProposalRequest], list[ChatMessage]]
Fold = Callable[[ProposalRequest, list[ChatMessage], int], list[ChatMessage]]


async def fit_messages(
    request: ProposalRequest,
    build: Build,
    fold: Fold | None,
    budget: int,
    count: Callable[[Sequence[ChatMessage]], Awaitable[int]],
) -> tuple[list[ChatMessage], int]:
    """The messages for ``request`` trimmed to ``budget`` tokens, and their count.

    ``build`` makes a strategy's messages; ``fold(request, messages, keep)`` folds all but the
    newest ``keep`` feedback turns of a conversation into its opening. Each step shows less: first
    fewer old turns, then fewer best/worst examples (a conversation's opening is then rebuilt from
    the scored history with fewer examples, its newest turns kept where they fit). When nothing
    fits, the smallest version is returned (the endpoint may take it; if not, its rejection
    shrinks the window).
    """
    messages = build(request)
    tokens = await count(messages)
    if tokens <= budget:
        return messages, tokens
    chat = fold is not None and request.strategy is Strategy.CONVERSATION and bool(request.conversation)
    best_k, worst_k = request.best_k, request.worst_k
    while True:
        if chat and fold is not None:
            for keep in range(_feedback_turns(messages), -1, -1):
                folded = fold(request, messages, keep)
                tokens = await count(folded)
                if tokens <= budget:
                    return folded, tokens
        if best_k <= 1 and worst_k <= 0:
            return (folded if chat else messages), tokens
        best_k, worst_k = max(1, best_k // 2), worst_k // 2
        fewer = replace(request, best_k=best_k, worst_k=worst_k)
        fresh = build(replace(fewer, conversation=[]))
        if chat:  # the same chat after a shorter opening
            messages = [*fresh[:2], *messages[2:]]
        else:
            messages = fresh
            tokens = await count(messages)
            if tokens <= budget:
                return messages, tokens


def _feedback_turns(messages: Sequence[ChatMessage]) -> int:
    """Completed (assistant reply, user feedback) pairs after the opening, the newest excluded."""
    return max(0, (len(messages) - 4) // 2)  # [system, opening, a1, f1, ..., a_n, f_new]


class EstimatingCounter:
    """:func:`estimate_tokens` as a :class:`TokenCounter`."""

    async def count(self, messages: Sequence[ChatMessage]) -> int:
        """The conservative estimate."""
        return estimate_tokens(messages)


class Tokenizer(Protocol):
    """An endpoint that may count tokens itself (:class:`~.backend.ChatBackend` is one)."""

    async def tokenize_count(self, text: str) -> int | None:
        """Tokens of ``text`` by the endpoint's tokenizer, or None where it offers none."""
        ...


class EndpointCounter:
    """Counts with the endpoint's tokenizer where it has one, else estimates."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer

    async def count(self, messages: Sequence[ChatMessage]) -> int:
        """Text tokens by the endpoint plus the chat template's wrapping per message."""
        counted = await self.tokenizer.tokenize_count("\n".join(m.content for m in messages))
        if counted is None:
            return estimate_tokens(messages)
        return counted + TOKENS_PER_MESSAGE * len(messages)


def context_from_server(props: Any, models: Any) -> int | None:
    """The context length a server reports: llama.cpp's ``/props`` or vLLM's ``/v1/models``."""
    if isinstance(props, dict):
        settings = props.get("default_generation_settings")
        for source in (props, settings if isinstance(settings, dict) else {}):
            n_ctx = source.get("n_ctx")
            if isinstance(n_ctx, int) and n_ctx > 0:
                return n_ctx
    if isinstance(models, dict):
        for model in models.get("data") or []:
            length = model.get("max_model_len") if isinstance(model, dict) else None
            if isinstance(length, int) and length > 0:
                return length
    return None

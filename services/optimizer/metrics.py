"""The optimizer's Prometheus metrics (names and labels as in docs/METRICS.md).

Labels are bounded: ``model`` is the one configured model name, outcomes and reasons are fixed
sets. No template text and never the API key.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

LLM_REQUESTS = Counter(
    "promptclimb_optimizer_llm_requests",
    "HTTP requests to the chat LLM, retries included, by outcome "
    "(ok, error, rate_limited, timeout, auth, cached).",
    ["model", "outcome"],
)
LLM_REQUEST_DURATION = Histogram(
    "promptclimb_optimizer_llm_request_duration_seconds",
    "Duration of one HTTP request to the chat LLM.",
    ["model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300),
)
LLM_TOKENS = Counter(
    "promptclimb_optimizer_llm_tokens",
    "Tokens the chat LLM reported, by kind (prompt, completion).",
    ["model", "kind"],
)
CONTEXT_RETRIES = Counter(
    "promptclimb_optimizer_context_retries",
    "Requests the LLM endpoint refused for their length and the optimizer shrank and sent again.",
)
PROPOSALS = Counter(
    "promptclimb_optimizer_proposals",
    "Candidate templates parsed from LLM replies, by outcome (accepted, rejected) and rejection reason "
    "(none for accepted).",
    ["outcome", "reason"],
)


def record_attempt(model: str, outcome: str, seconds: float | None) -> None:
    """Count one request to the LLM (``seconds`` is None for a cache hit)."""
    LLM_REQUESTS.labels(model, outcome).inc()
    if seconds is not None:
        LLM_REQUEST_DURATION.labels(model).observe(seconds)


def record_tokens(model: str, prompt_tokens: int, completion_tokens: int) -> None:
    """Count the tokens one completion used."""
    LLM_TOKENS.labels(model, "prompt").inc(prompt_tokens)
    LLM_TOKENS.labels(model, "completion").inc(completion_tokens)


def record_proposals(accepted: int, rejected_reasons: list[str]) -> None:
    """Count the accepted templates and each rejection by reason."""
    if accepted:
        PROPOSALS.labels("accepted", "none").inc(accepted)
    for reason in rejected_reasons:
        PROPOSALS.labels("rejected", reason).inc()

"""Coordinator metrics (names in docs/METRICS.md); bounded labels only, never a search id."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

SEARCHES = Counter("promptclimb_coordinator_searches", "Searches that ended, by outcome.", ["outcome"])
RUNNING = Gauge("promptclimb_coordinator_searches_running", "Searches running on this replica.")
ITERATION_SECONDS = Histogram(
    "promptclimb_coordinator_iteration_duration_seconds",
    "Time of one iteration phase.",
    ["phase"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
SEARCH_SECONDS = Histogram(
    "promptclimb_coordinator_search_duration_seconds",
    "Wall time of finished searches.",
    buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600),
)
EVALUATIONS = Counter("promptclimb_coordinator_evaluations", "Templates scored through the scorer.")
LLM_TOKENS = Counter("promptclimb_coordinator_llm_tokens", "LLM tokens spent by searches.", ["kind"])
LLM_COST = Counter(
    "promptclimb_coordinator_llm_cost_usd", "LLM spend of searches in US dollars, at the configured prices."
)
SCORER_RETRIES = Counter("promptclimb_coordinator_scorer_retries", "Scorer calls retried, by code.", ["code"])
SCORER_MODEL_READY = Gauge(
    "promptclimb_coordinator_scorer_model_ready",
    "1 when the scorer target of a model answered with that model at the last check, else 0.",
    ["model"],
)

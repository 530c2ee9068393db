"""The scorer's Prometheus metrics (names and labels as in docs/METRICS.md), base units."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)

QUEUE_DEPTH = Gauge("promptclimb_scorer_queue_depth", "Templates waiting for the text tower.")
BATCH_SIZE = Histogram("promptclimb_scorer_batch_size", "Templates per text-tower batch.", buckets=_SIZES)
QUEUE_WAIT = Histogram(
    "promptclimb_scorer_queue_wait_seconds", "Time a request waited before compute.", buckets=_SECONDS
)
COMPUTE = Histogram(
    "promptclimb_scorer_compute_seconds", "Text-tower and scoring time per batch.", buckets=_SECONDS
)
TEMPLATES = Counter("promptclimb_scorer_templates_evaluated", "Templates scored.")
CACHE_HITS = Counter("promptclimb_scorer_text_cache_hits", "Text-embedding cache hits.")
CACHE_MISSES = Counter("promptclimb_scorer_text_cache_misses", "Text-embedding cache misses.")
REJECTED = Counter("promptclimb_scorer_requests_rejected", "Requests refused before compute.", ["reason"])
MODEL_READY = Gauge("promptclimb_scorer_model_ready", "1 once the model and dataset features are loaded.")
MODEL_INFO = Gauge(
    "promptclimb_scorer_model_info",
    "The loaded model (value is always 1).",
    ["model", "pretrained", "device", "precision"],
)

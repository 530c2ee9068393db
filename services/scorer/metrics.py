"""The scorer's Prometheus metrics (names and labels as in docs/METRICS.md), base units.

Every metric carries a ``model`` label: the served model's id (one value per process, so the
label stays bounded), which is how a dashboard or alert tells the scorers of several backbones
apart. :func:`bind_model` sets it; the module attributes are the children bound to that id, so
callers keep writing ``metrics.QUEUE_DEPTH.set(n)``.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)

_QUEUE_DEPTH = Gauge("promptclimb_scorer_queue_depth", "Templates waiting for the text tower.", ["model"])
_BATCH_SIZE = Histogram(
    "promptclimb_scorer_batch_size", "Templates per text-tower batch.", ["model"], buckets=_SIZES
)
_QUEUE_WAIT = Histogram(
    "promptclimb_scorer_queue_wait_seconds",
    "Time a request waited before compute.",
    ["model"],
    buckets=_SECONDS,
)
_COMPUTE = Histogram(
    "promptclimb_scorer_compute_seconds",
    "Text-tower and scoring time per batch.",
    ["model"],
    buckets=_SECONDS,
)
_TEMPLATES = Counter("promptclimb_scorer_templates_evaluated", "Templates scored.", ["model"])
_CACHE_HITS = Counter("promptclimb_scorer_text_cache_hits", "Text-embedding cache hits.", ["model"])
_CACHE_MISSES = Counter("promptclimb_scorer_text_cache_misses", "Text-embedding cache misses.", ["model"])
_REJECTED = Counter(
    "promptclimb_scorer_requests_rejected", "Requests refused before compute.", ["model", "reason"]
)
_IMAGES_ENCODED = Counter(
    "promptclimb_scorer_images_encoded",
    "Images encoded by the image tower (not read from the cache).",
    ["model"],
)
_IMAGES_PENDING = Gauge(
    "promptclimb_scorer_images_pending",
    "Images of registered datasets whose features are not computed yet.",
    ["model"],
)
_FEATURE_CACHE_REJECTED = Counter(
    "promptclimb_scorer_feature_cache_rejected",
    "Feature-cache files that failed verification and were recomputed.",
    ["model", "reason"],
)
_FEATURE_CACHE_WRITE_ERRORS = Counter(
    "promptclimb_scorer_feature_cache_write_errors",
    "Feature-cache writes that failed (the features are used from memory).",
    ["model", "reason"],
)
_MODEL_READY = Gauge(
    "promptclimb_scorer_model_ready", "1 once the model and dataset features are loaded.", ["model"]
)
_MODEL_INFO = Gauge(
    "promptclimb_scorer_model_info",
    "The loaded model (value is always 1); `model` is its id, `model_name` the open_clip name.",
    ["model", "model_name", "pretrained", "device", "precision"],
)


class _Bound:
    """A labelled metric with the ``model`` label filled in: ``labels(*rest)`` adds the others."""

    def __init__(self, metric: Any, model: str) -> None:
        self._metric, self._model = metric, model

    def labels(self, *rest: str) -> Any:
        """The child for this model and the other label values."""
        return self._metric.labels(self._model, *rest)


MODEL_ID = ""
QUEUE_DEPTH: Gauge
BATCH_SIZE: Histogram
QUEUE_WAIT: Histogram
COMPUTE: Histogram
TEMPLATES: Counter
CACHE_HITS: Counter
CACHE_MISSES: Counter
MODEL_READY: Gauge
IMAGES_ENCODED: Counter
IMAGES_PENDING: Gauge
REJECTED: _Bound
MODEL_INFO: _Bound
FEATURE_CACHE_REJECTED: _Bound
FEATURE_CACHE_WRITE_ERRORS: _Bound


def bind_model(model_id: str) -> None:
    """Make every metric of this module carry ``model=model_id`` (called once the id is known)."""
    global MODEL_ID, QUEUE_DEPTH, BATCH_SIZE, QUEUE_WAIT, COMPUTE, TEMPLATES, CACHE_HITS, CACHE_MISSES
    global MODEL_READY, REJECTED, MODEL_INFO, IMAGES_ENCODED, IMAGES_PENDING
    global FEATURE_CACHE_REJECTED, FEATURE_CACHE_WRITE_ERRORS
    if MODEL_ID and MODEL_ID != model_id:  # drop the old id's series: one series per served id
        single = (
            _QUEUE_DEPTH,
            _BATCH_SIZE,
            _QUEUE_WAIT,
            _COMPUTE,
            _TEMPLATES,
            _CACHE_HITS,
            _CACHE_MISSES,
            _IMAGES_ENCODED,
            _IMAGES_PENDING,
        )
        for metric in single:
            try:
                metric.remove(MODEL_ID)
            except KeyError:
                pass
        try:
            _MODEL_READY.remove(MODEL_ID)
        except KeyError:
            pass
    MODEL_ID = model_id
    QUEUE_DEPTH = _QUEUE_DEPTH.labels(model_id)
    BATCH_SIZE = _BATCH_SIZE.labels(model_id)
    QUEUE_WAIT = _QUEUE_WAIT.labels(model_id)
    COMPUTE = _COMPUTE.labels(model_id)
    TEMPLATES = _TEMPLATES.labels(model_id)
    CACHE_HITS = _CACHE_HITS.labels(model_id)
    CACHE_MISSES = _CACHE_MISSES.labels(model_id)
    MODEL_READY = _MODEL_READY.labels(model_id)
    IMAGES_ENCODED = _IMAGES_ENCODED.labels(model_id)
    IMAGES_PENDING = _IMAGES_PENDING.labels(model_id)
    REJECTED = _Bound(_REJECTED, model_id)
    FEATURE_CACHE_REJECTED = _Bound(_FEATURE_CACHE_REJECTED, model_id)
    FEATURE_CACHE_WRITE_ERRORS = _Bound(_FEATURE_CACHE_WRITE_ERRORS, model_id)
    MODEL_INFO = _Bound(_MODEL_INFO, model_id)


bind_model("unset")  # until a scorer names its model (an engine built in a test, say)

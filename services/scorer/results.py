"""What the scoring engine answers: per-template scores, a request's evaluation, the model."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TemplateResult:
    """One template's score on a split, or why it was rejected."""

    template: str
    correct: int = 0
    total: int = 0
    per_class_accuracy: list[float] = field(default_factory=list)
    error: str | None = None
    # Mean cross-entropy of the true class under softmax(logit_scale * cosine), CLIP's own
    # zero-shot probabilities: a finer signal than the count for telling tied templates apart.
    loss: float = 0.0
    # On request: each image's correctness and loss in the split's image order, packed as
    # promptclimb.common.per_image describes (empty when not asked).
    per_image_correct: bytes = b""
    per_image_loss: bytes = b""
    # On request: the most frequent (true class, predicted class, count) among wrong predictions,
    # class indices in the dataset's order (services.scorer.heads.confusions).
    confusions: list[tuple[int, int, int]] = field(default_factory=list)
    # Distinct texts the head was built from (description sets; 0 for a template).
    num_texts: int = 0
    # drop_overlong: (class index, texts as sent) left out of a description set for being over-long.
    dropped: list[tuple[int, list[str]]] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        """Fraction correct (0 for a rejected template)."""
        return self.correct / self.total if self.total else 0.0


@dataclass
class Evaluation:
    """The answer to one request."""

    scores: list[TemplateResult]
    class_names: list[str]
    compute_seconds: float


@dataclass
class ModelInfo:
    """What is loaded."""

    model_name: str
    pretrained: str
    device: str
    precision: str
    context_length: int
    embed_dim: int
    text_truncation_exact: bool

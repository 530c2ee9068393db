"""Search profiles: the settings of one protocol (the paper's, the released code's)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Profile:
    """Search settings of one protocol (fields as in ``promptclimb.client.make_spec``)."""

    name: str
    description: str
    strategy: str
    best_k: int
    worst_k: int
    templates_per_iteration: int
    iterations: int
    restarts: int
    temperature: float
    pool: str
    ensemble_k: int = 3

    def spec_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``make_spec`` for this profile."""
        return {
            "strategy": self.strategy,
            "best_k": self.best_k,
            "worst_k": self.worst_k,
            "templates_per_iteration": self.templates_per_iteration,
            "iterations": self.iterations,
            "restarts": self.restarts,
            "temperature": self.temperature,
            "pool": self.pool,
            "ensemble_k": self.ensemble_k,
        }


PROFILES: dict[str, Profile] = {
    # Best guess at the paper's protocol: the paper describes a conversation with numeric
    # feedback and positive + negative examples; reviewers report 15 best / 15 worst. The number
    # of restarts, iterations and prompts per call are not all public: these are our choice.
    "paper": Profile(
        "paper",
        "conversation with numeric feedback, 15 best / 15 worst, 5 per call, 5 restarts x 10 iterations",
        strategy="conversation",
        best_k=15,
        worst_k=15,
        templates_per_iteration=5,
        iterations=10,
        restarts=5,
        temperature=1.0,
        pool="clip80",
    ),
    # The released code: single turn, top-3 / bottom-3 as two bare lists (no accuracies, class
    # names or system message), one template asked per call (every valid one of a reply scored),
    # 10 iterations, temperature 1, starting from 80 templates.
    "released": Profile(
        "released",
        "the released code's single turn: 3 best / 3 worst as bare lists, 1 per call, 10 iterations, "
        "temperature 1",
        strategy="released",
        best_k=3,
        worst_k=3,
        templates_per_iteration=1,
        iterations=10,
        restarts=1,
        temperature=1.0,
        pool="clip80",
    ),
}

"""How scored templates rank, the same in the coordinator's search and the optimizer's prompts."""

from __future__ import annotations

import math


def rank_key(accuracy: float, loss: float | None) -> tuple[float, float]:
    """Sort key, best first: higher accuracy, then lower loss; an unknown loss ranks last.

    The loss (the scorer's zero-shot cross-entropy on the same images) only breaks accuracy ties,
    which on a 1-shot split of a 10-class set, where accuracy moves in 10-point steps, are the rule.
    """
    return (-accuracy, math.inf if loss is None else loss)

"""The words every layer shares — strategies, search states, phases, watch events — and their
protobuf enum values, defined once for the client, the coordinator and the optimizer.

Each enum's string value is what the store persists and what the CLI accepts (lower-cased), so
renaming a member is a schema change; the proto maps are derived from the members' names.
"""

from __future__ import annotations

from enum import StrEnum
from typing import cast

from promptclimb.api.v1 import common_pb2, coordinator_pb2


class Strategy(StrEnum):
    """How the optimizer proposes templates: a way of asking the LLM, or a baseline without one."""

    CONVERSATION = "conversation"  # the paper's multi-turn chat with numeric feedback
    CONTRAST = "contrast"  # single turn, best-k and worst-k (the released code)
    TRAJECTORY = "trajectory"  # OPRO-style: the scored history in ascending order
    EDIT = "edit"  # no LLM: random word edits of the best templates (the baseline)
    EVOLVE = "evolve"  # EvoPrompt-style: tournament-selected parents, the LLM crosses and mutates
    RELEASED = "released"  # what the paper's released code showed: two bare lists, nothing else


class DescriptionStrategy(StrEnum):
    """How the optimizer writes class-specific descriptions (CuPL / ProAPO style)."""

    DESCRIBE = "describe"  # k short visual descriptions per class, several classes per call
    REFINE = "refine"  # the weakest classes and their confusions shown; only those rewritten


class LifecycleState(StrEnum):
    """Where a search is in its life (google.longrunning style)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        """True once the search can no longer change."""
        return self in (LifecycleState.SUCCEEDED, LifecycleState.FAILED, LifecycleState.CANCELLED)


class Phase(StrEnum):
    """Where a running search is within its loop."""

    SEEDING = "seeding"
    PROPOSING = "proposing"
    SCORING = "scoring"
    EVALUATING = "evaluating"
    DONE = "done"


class SearchEvent(StrEnum):
    """What a WatchSearch message reports."""

    SNAPSHOT = "snapshot"
    STATE_CHANGED = "state_changed"
    PHASE_CHANGED = "phase_changed"
    ITERATION_DONE = "iteration_done"
    NEW_BEST = "new_best"


class Objective(StrEnum):
    """How the search picks its best template from the selection-split scores."""

    ACCURACY = "accuracy"  # the paper: highest accuracy, ties to the earliest
    ACCURACY_THEN_LOSS = "accuracy_then_loss"  # ties to the lower zero-shot cross-entropy
    BLENDED = "blended"  # accuracy - weight x cross-entropy, one fitness (as ProAPO blends them)
    CONFIDENT = "confident"  # replace the incumbent only on a paired-bootstrap win over the images


DEFAULT_OBJECTIVE = Objective.ACCURACY_THEN_LOSS
DEFAULT_STRATEGY = Strategy.CONTRAST
# Defaults of the proposal knobs when a request leaves them unset (the coordinator and the
# optimizer apply the same ones; explicit 0 for worst_k means "no bad examples").
DEFAULT_BEST_K = 3
DEFAULT_WORST_K = 3
DEFAULT_NUM_TEMPLATES = 1
# Description searches: the same defaults and limits in the coordinator (SearchSpec.descriptions)
# and the optimizer (ProposeDescriptions), so a knob left unset means one thing in both.
DEFAULT_DESCRIPTIONS_PER_CLASS = 3
MAX_DESCRIPTIONS_PER_CLASS = 10
DEFAULT_WEAKEST_K = 3  # classes rewritten per refine round
MAX_DESCRIPTION_CLASSES = 1000  # classes one description request may name

STRATEGY_TO_PROTO: dict[Strategy, common_pb2.Strategy] = {
    s: cast(common_pb2.Strategy, common_pb2.Strategy.Value(f"STRATEGY_{s.name}")) for s in Strategy
}
STRATEGY_FROM_PROTO: dict[int, Strategy] = {v: k for k, v in STRATEGY_TO_PROTO.items()}
DESCRIPTION_STRATEGY_TO_PROTO: dict[DescriptionStrategy, common_pb2.DescriptionStrategy] = {
    s: cast(
        common_pb2.DescriptionStrategy, common_pb2.DescriptionStrategy.Value(f"DESCRIPTION_STRATEGY_{s.name}")
    )
    for s in DescriptionStrategy
}
DESCRIPTION_STRATEGY_FROM_PROTO: dict[int, DescriptionStrategy] = {
    v: k for k, v in DESCRIPTION_STRATEGY_TO_PROTO.items()
}
STATE_TO_PROTO: dict[LifecycleState, coordinator_pb2.SearchState] = {
    s: cast(coordinator_pb2.SearchState, coordinator_pb2.SearchState.Value(f"SEARCH_STATE_{s.name}"))
    for s in LifecycleState
}
STATE_FROM_PROTO: dict[int, LifecycleState] = {v: k for k, v in STATE_TO_PROTO.items()}
PHASE_TO_PROTO: dict[Phase, coordinator_pb2.SearchPhase] = {
    p: cast(coordinator_pb2.SearchPhase, coordinator_pb2.SearchPhase.Value(f"SEARCH_PHASE_{p.name}"))
    for p in Phase
}
EVENT_TO_PROTO: dict[SearchEvent, coordinator_pb2.SearchEventType] = {
    e: cast(
        coordinator_pb2.SearchEventType, coordinator_pb2.SearchEventType.Value(f"SEARCH_EVENT_TYPE_{e.name}")
    )
    for e in SearchEvent
}
OBJECTIVE_TO_PROTO: dict[Objective, coordinator_pb2.Objective] = {
    o: cast(coordinator_pb2.Objective, coordinator_pb2.Objective.Value(f"OBJECTIVE_{o.name}"))
    for o in Objective
}
OBJECTIVE_FROM_PROTO: dict[int, Objective] = {v: k for k, v in OBJECTIVE_TO_PROTO.items()}
TERMINAL_PROTO_STATES = frozenset(STATE_TO_PROTO[s] for s in LifecycleState if s.terminal)


def state_name(proto_state: int) -> str:
    """A proto LifecycleState as the CLI prints it (``SUCCEEDED``); unknown values print as numbers."""
    state = STATE_FROM_PROTO.get(proto_state)
    return state.value if state else str(proto_state)

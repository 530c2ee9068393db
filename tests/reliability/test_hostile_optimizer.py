"""Hostile ProposePrompts requests against a real in-process optimizer whose LLM answers garbage.

The fake LLM's replies are adversarial too (format-string payloads, NULs, broken JSON, huge
text), so both what the client sends and what the model says are hostile at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from promptclimb.api.v1 import common_pb2, optimizer_pb2, optimizer_pb2_grpc
from services.optimizer.main import SERVICE_NAME
from tests.reliability.conftest import ErrorLog
from tests.reliability.hostile import (
    DOUBLE,
    ENUM,
    HOSTILE,
    INT32,
    INT64,
    check_code,
    hostile_list,
    hostile_text,
)
from tests.reliability.inproc import (
    SERVING,
    call,
    chosen_by_request,
    health_status,
    optimizer_on_fake_llm,
    raw_call,
)

C = grpc.StatusCode
# Not UNAVAILABLE: the fake LLM always answers (garbage) and the tests start once the optimizer is
# SERVING, so UNAVAILABLE would be the optimizer failing, not a documented answer to a request.
PROPOSE = {C.OK, C.INVALID_ARGUMENT, C.FAILED_PRECONDITION, C.RESOURCE_EXHAUSTED}

GARBAGE_REPLIES = [
    "",
    "{}",
    "{0.__class__.__mro__[1].__subclasses__()}",
    "1. a photo of a {0}.\n2. {}{}\n3. }}{{\n4. a {} photo\x00 of",
    '{"templates": [1, null, {"a": "{}"}, "a {} ok"]}',
    '{"templates": "a {}"',
    '```json\n{"templates": ["a {}"]}\n```',
    "\x1b[31m a [CLASS] in red \x1b[0m\n<class> of <class>",
    "a {} " * 5000,
    "\u202e{} fo otohp a\ufeff",
    "[" * 2000,
]


garbage = chosen_by_request(GARBAGE_REPLIES)  # stable for a given request


@dataclass
class Optimizer:
    channel: grpc.Channel
    stub: optimizer_pb2_grpc.OptimizerServiceStub
    errors: ErrorLog

    def assert_healthy(self) -> None:
        assert self.errors.take() == []
        assert health_status(self.channel) == SERVING
        assert health_status(self.channel, SERVICE_NAME) == SERVING


@pytest.fixture(scope="module")
def optimizer(error_log: ErrorLog) -> Iterator[Optimizer]:
    with optimizer_on_fake_llm(garbage) as channel:
        yield Optimizer(channel, optimizer_pb2_grpc.OptimizerServiceStub(channel), error_log)


def scored(accuracy: st.SearchStrategy[float]) -> st.SearchStrategy[common_pb2.ScoredTemplate]:
    """A history entry with hostile text (never blank, which is rejected up front)."""
    return st.builds(
        common_pb2.ScoredTemplate,
        template=hostile_text(huge=3_000).map(lambda t: t if t.strip() else t + "a {}"),
        accuracy=accuracy,
        correct=INT64,
        total=INT64,
        restart=INT32,
        iteration=INT32,
        origin=hostile_text(huge=200),
    )


def message(role: st.SearchStrategy[str]) -> st.SearchStrategy[common_pb2.ChatMessage]:
    """A chat message with hostile content."""
    return st.builds(common_pb2.ChatMessage, role=role, content=hostile_text(huge=3_000))


# Free text is always hostile; of the numbers, enums and roles at most one field is out of range,
# so most requests pass validation and hostile text reaches the strategies and the LLM parser.
OUT_OF_RANGE = [
    None,
    None,
    None,
    None,
    "strategy",
    "best_k",
    "worst_k",
    "num_templates",
    "temperature",
    "accuracy",
    "role",
    "history_size",
]


@HOSTILE
@given(
    task=hostile_text(huge=5_000),
    class_names=hostile_list(hostile_text(huge=500), huge=2_000),
    history=st.lists(scored(st.floats(0, 1)), min_size=1, max_size=8),
    conversation=st.one_of(st.just([]), st.lists(message(st.just("user")), max_size=3)),
    strategy=st.sampled_from([1, 2, 3]),
    small=st.integers(1, 5),
    temperature=st.one_of(st.none(), st.floats(0, 2)),
    seed=st.one_of(st.none(), INT64),
    bad=st.sampled_from(OUT_OF_RANGE),
    bad_int=INT32,
    bad_enum=ENUM,
    bad_double=DOUBLE,
    bad_role=hostile_text(huge=100),
)
def test_propose_prompts(
    optimizer: Optimizer,
    task: str,
    class_names: list[str],
    history: list[common_pb2.ScoredTemplate],
    conversation: list[common_pb2.ChatMessage],
    strategy: int,
    small: int,
    temperature: float | None,
    seed: int | None,
    bad: str | None,
    bad_int: int,
    bad_enum: int,
    bad_double: float,
    bad_role: str,
) -> None:
    if conversation:
        conversation.append(common_pb2.ChatMessage(role="assistant", content=conversation[-1].content))
    request = optimizer_pb2.ProposePromptsRequest(
        task_description=task,
        class_names=class_names,
        history=history,
        strategy=bad_enum if bad == "strategy" else strategy,
        best_k=bad_int if bad == "best_k" else small,
        worst_k=bad_int if bad == "worst_k" else small - 1,
        num_templates=bad_int if bad == "num_templates" else small,
        conversation=conversation,
    )
    if bad == "temperature":
        request.temperature = bad_double
    elif temperature is not None:
        request.temperature = temperature
    if bad == "accuracy":
        request.history[0].accuracy = bad_double
    if bad == "role":
        request.conversation.add(role=bad_role, content="hi")
    if bad == "history_size":
        request.history.extend([request.history[0]] * 3_000)
    if seed is not None:
        request.seed = seed
    check_code(call(optimizer.stub.ProposePrompts, request), PROPOSE, "ProposePrompts")
    optimizer.assert_healthy()


@HOSTILE
@given(payload=st.binary(max_size=300))
def test_raw_bytes(optimizer: Optimizer, payload: bytes) -> None:
    code = raw_call(optimizer.channel, "/promptclimb.api.v1.OptimizerService/ProposePrompts", payload)
    check_code(code, PROPOSE, "ProposePrompts (raw bytes)")
    optimizer.assert_healthy()

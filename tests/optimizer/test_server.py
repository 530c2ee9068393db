"""The optimizer over gRPC, in process: all strategies, errors, health, metrics, the API key."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from prometheus_client import REGISTRY

from promptclimb.api.v1 import common_pb2, optimizer_pb2
from promptclimb.common.errors import retry_delay_of
from promptclimb.testing.fake_openai import FakeOpenAI, Reply
from services.optimizer.main import SERVICE_NAME
from tests.optimizer.conftest import proto_request

Start = Callable[..., Any]
SECRET = "sk-live-DO-NOT-LEAK-0123456789abcdef"


def reply_for(body: dict[str, Any]) -> str:
    """A deterministic model: two new templates, one duplicate of the history, one with no slot."""
    n = len(body["messages"])
    return json.dumps(
        {
            "templates": [
                f"a photo of a {{class}}, turn {n}.",
                f"[CLASS] seen in turn {n}",
                "a photo of a {}.",
                "no slot here",
            ]
        }
    )


@pytest.mark.parametrize(
    "strategy",
    [common_pb2.STRATEGY_CONVERSATION, common_pb2.STRATEGY_CONTRAST, common_pb2.STRATEGY_TRAJECTORY],
)
async def test_each_strategy_answers_end_to_end(fake: FakeOpenAI, start_server: Start, strategy: int) -> None:
    fake.default = reply_for
    stub, _channel, _server = await start_server(llm_base_url=fake.base_url, llm_model="fake-model")
    before = (
        REGISTRY.get_sample_value(
            "promptclimb_optimizer_proposals_total", {"outcome": "rejected", "reason": "duplicate"}
        )
        or 0.0
    )
    response = await stub.ProposePrompts(proto_request(strategy, temperature=0.3, seed=5))
    assert list(response.templates) == ["a photo of a {}, turn 2.", "{} seen in turn 2"]
    assert [(r.text, r.reason) for r in response.rejected] == [
        ("a photo of a {}.", "duplicate"),
        ("no slot here", "no_slot"),
    ]
    assert (response.usage.llm_calls, response.usage.prompt_tokens, response.usage.completion_tokens) == (
        1,
        11,
        7,
    )
    assert response.model == "fake-model" and response.structured and response.latency_seconds > 0
    assert [m.role for m in response.conversation] == ["system", "user", "assistant"]
    assert fake.requests[0]["temperature"] == 0.3 and fake.requests[0]["seed"] == 5
    after = REGISTRY.get_sample_value(
        "promptclimb_optimizer_proposals_total", {"outcome": "rejected", "reason": "duplicate"}
    )
    assert after - before == 1


async def test_conversation_continues_from_the_returned_conversation(
    fake: FakeOpenAI, start_server: Start
) -> None:
    fake.default = reply_for
    stub, _channel, _server = await start_server(llm_base_url=fake.base_url)
    first = await stub.ProposePrompts(proto_request(common_pb2.STRATEGY_CONVERSATION))
    # The coordinator scores the proposals and sends them back with the conversation.
    scored = [
        common_pb2.ScoredTemplate(template=t, accuracy=0.9 - 0.5 * i) for i, t in enumerate(first.templates)
    ]
    request = proto_request(common_pb2.STRATEGY_CONVERSATION, conversation=first.conversation)
    request.history.extend(scored)
    second = await stub.ProposePrompts(request)
    sent = fake.requests[1]["messages"]
    assert len(sent) == 4 and sent[3]["role"] == "user"
    assert sent[3]["content"].startswith(
        "Accuracy of your last templates:\n"
        '- "a photo of a {}, turn 2." scored 90.0%, better than all before.\n'
        '- "{} seen in turn 2" scored 40.0%, worse than the best so far (70.0%).\n'
    )
    assert list(second.templates) == ["a photo of a {}, turn 4.", "{} seen in turn 4"]
    assert len(second.conversation) == 5


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"strategy": common_pb2.STRATEGY_UNSPECIFIED}, "strategy"),
        ({"strategy": 42}, "strategy"),
        ({"best_k": 0}, "best_k"),
        ({"best_k": 51}, "best_k"),
        ({"worst_k": -1}, "worst_k"),
        ({"num_templates": 0}, "num_templates"),
        ({"num_templates": 21}, "num_templates"),
        (
            {
                "history": [],
                "strategy": common_pb2.STRATEGY_CONVERSATION,
                "conversation": [
                    common_pb2.ChatMessage(role="user", content="write templates"),
                    common_pb2.ChatMessage(role="assistant", content='{"templates": ["a {}"]}'),
                ],
            },
            "history",
        ),
        ({"history": [common_pb2.ScoredTemplate(template="a {}", accuracy=1.5)]}, "history[0].accuracy"),
        ({"temperature": 3.0}, "temperature"),
        (
            {
                "strategy": common_pb2.STRATEGY_CONVERSATION,
                "conversation": [common_pb2.ChatMessage(role="user", content="hi")],
            },
            "conversation",
        ),
        (
            {
                "strategy": common_pb2.STRATEGY_CONVERSATION,
                "conversation": [common_pb2.ChatMessage(role="robot", content="hi")],
            },
            "conversation[0].role",
        ),
    ],
)
async def test_bad_requests_are_invalid_argument_and_server_keeps_serving(
    fake: FakeOpenAI, start_server: Start, overrides: dict[str, Any], field: str
) -> None:
    fake.default = reply_for
    stub, _channel, _server = await start_server(llm_base_url=fake.base_url)
    request = proto_request(**overrides)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ProposePrompts(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(caught.value)
    assert status is not None and field in str(status.details[0].value)
    assert fake.requests == []  # never reached the LLM
    ok = await stub.ProposePrompts(proto_request())
    assert len(ok.templates) == 2


async def test_llm_down_is_unavailable_with_retry_info(fake: FakeOpenAI, start_server: Start) -> None:
    fake.replies = [Reply(status=429, retry_after=0.01)] * 3
    stub, _channel, _server = await start_server(llm_base_url=fake.base_url, max_retries=2)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ProposePrompts(proto_request())
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "failed 3 times, last: HTTP 429" in (caught.value.details() or "")
    assert retry_delay_of(caught.value) == pytest.approx(0.01)


async def test_wrong_api_key_is_unauthenticated_and_never_leaks(
    fake: FakeOpenAI, start_server: Start, caplog: pytest.LogCaptureFixture
) -> None:
    fake.api_key = "sk-the-right-one"
    caplog.set_level(logging.DEBUG)  # everything, the openai and httpx loggers included
    stub, _channel, _server = await start_server(
        llm_base_url=fake.base_url, llm_api_key=SECRET, max_retries=2
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ProposePrompts(proto_request())
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "refused the credentials (HTTP 401)" in (caught.value.details() or "")
    # Also fail in other ways, so every error path has written its logs.
    fake.api_key = None
    fake.replies = [Reply(status=404), Reply(status=500), Reply(status=500), Reply(status=500)]
    texts = []
    for code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAVAILABLE):
        with pytest.raises(grpc.aio.AioRpcError) as other:
            await stub.ProposePrompts(proto_request())
        assert other.value.code() == code
        texts += [other.value.details() or "", str(other.value.debug_error_string())]
    texts += [caught.value.details() or "", str(caught.value.debug_error_string()), caplog.text]
    texts += [repr(r.__dict__) for r in caplog.records]
    for text in texts:
        assert SECRET not in text
        assert SECRET[-8:] not in text
    metrics_text = "\n".join(str(m) for m in REGISTRY.collect())
    assert SECRET not in metrics_text


async def test_health_is_serving_and_reflection_lists_the_service(
    fake: FakeOpenAI, start_server: Start
) -> None:
    _stub, channel, server = await start_server(llm_base_url=fake.base_url)
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", SERVICE_NAME):
        answer = await health.Check(health_pb2.HealthCheckRequest(service=name))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    assert SERVICE_NAME in server.service_names


@pytest.mark.parametrize(
    "strategy",
    [common_pb2.STRATEGY_CONVERSATION, common_pb2.STRATEGY_CONTRAST, common_pb2.STRATEGY_TRAJECTORY],
)
async def test_empty_history_asks_for_diverse_starters(
    fake: FakeOpenAI, start_server: Start, strategy: int
) -> None:
    """A search seeded by the LLM (`llm_starters`) sends no history: every strategy asks for starters."""
    fake.default = reply_for
    stub, _channel, _server = await start_server(llm_base_url=fake.base_url)
    response = await stub.ProposePrompts(proto_request(strategy, history=[], num_templates=3))
    assert len(response.templates) == 3  # nothing to dedupe against, so "a photo of a {}." stays
    user_turn = fake.requests[-1]["messages"][-1]["content"]
    assert user_turn.startswith("Task: classify photos of clothing items (Fashion-MNIST).")
    assert "Write 3 diverse templates for this task" in user_turn
    assert "Good templates" not in user_turn and "scored well" not in user_turn


def test_unset_knobs_get_the_documented_defaults_and_zero_worst_k_stays_zero() -> None:
    from promptclimb.common.vocabulary import DEFAULT_BEST_K, DEFAULT_NUM_TEMPLATES, DEFAULT_WORST_K
    from services.optimizer.servicer import to_domain

    unset = to_domain(optimizer_pb2.ProposePromptsRequest(strategy=common_pb2.STRATEGY_CONTRAST))
    assert (unset.best_k, unset.worst_k, unset.num_templates) == (3, 3, 1)
    assert (DEFAULT_BEST_K, DEFAULT_WORST_K, DEFAULT_NUM_TEMPLATES) == (3, 3, 1)  # as docs say
    zero = to_domain(optimizer_pb2.ProposePromptsRequest(strategy=common_pb2.STRATEGY_CONTRAST, worst_k=0))
    assert zero.worst_k == 0

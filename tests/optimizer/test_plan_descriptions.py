"""PlanDescriptions: the calls and tokens a ProposeDescriptions request takes, told without the LLM.

Each plan is checked against the real call it plans, made afterwards on the same in-process
optimizer over the scripted OpenAI-compatible server: the same classes per call, the same prompt
token counts, and no chat completion asked while planning.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import pytest

from promptclimb.api.v1 import common_pb2, optimizer_pb2
from promptclimb.common.vocabulary import DescriptionStrategy
from promptclimb.testing.fake_openai import FakeOpenAI
from services.coordinator.clients import DescriptionPlan, GrpcProposer
from services.coordinator.search import SearchFailed
from services.optimizer.backend import ChatBackend
from services.optimizer.context import ContextWindow, EstimatingCounter, estimate_tokens
from services.optimizer.descriptions import (
    DescriptionRequest,
    DescriptionWriter,
    ScoredClass,
    reply_room,
    weakest,
)
from services.optimizer.domain import ChatMessage, InvalidRequest

# Names of different lengths: the reply room per class depends on it.
CLASSES = [
    "marigold",
    "rose",
    "sun_flower",
    "Daisy",
    "water lily",
    "tulip",
    "bird of paradise",
    "globe thistle",
    "snapdragon",
    "colt's foot",
    "king protea",
    "spear thistle",
    "yellow iris",
    "globe-flower",
    "purple coneflower",
    "peruvian lily",
    "balloon flower",
    "giant white arum lily",
    "fire lily",
    "pincushion flower",
]
# Settings of the optimizer: its default window and completion cap (5 classes' replies fit), a
# small cap (2 fit), a larger cap (6 fit), and that cap in a window whose prompt budget
# (936 - 600 - 48 = 288 tokens) holds the opening and only 2 to 3 of the classes.
DEFAULT: dict[str, int] = {}
SMALL_CAP = {"max_tokens": 300}
LARGE_CAP = {"max_tokens": 600}
SMALL_WINDOW = {"llm_context_tokens": 936, "max_tokens": 600}
# A budget of 280 tokens: most calls hold one class, more calls than twice the calls the
# completion cap needs; the default max_llm_calls grows with each such split, so complete replies
# still describe every class.
TIGHT_WINDOW = {"llm_context_tokens": 928, "max_tokens": 600}


def reply(entries: dict[str, list[str]]) -> str:
    return json.dumps({"classes": [{"class": c, "descriptions": d} for c, d in entries.items()]})


def asked(body: dict[str, Any]) -> list[str]:
    """The classes one request to the LLM asks (its reply grammar names them)."""
    entry = body["response_format"]["json_schema"]["schema"]["properties"]["classes"]["items"]
    return list(entry["properties"]["class"]["enum"])


def sent(body: dict[str, Any]) -> list[ChatMessage]:
    return [ChatMessage(m["role"], m["content"]) for m in body["messages"]]


def answer_every_class(body: dict[str, Any]) -> str:
    return reply({c: [f"a {c} in bloom", f"the {c} petals up close", "green leaves"] for c in asked(body)})


def describe(classes: Sequence[str] = CLASSES, **fields: Any) -> optimizer_pb2.ProposeDescriptionsRequest:
    return optimizer_pb2.ProposeDescriptionsRequest(
        strategy=common_pb2.DESCRIPTION_STRATEGY_DESCRIBE,
        class_names=list(classes),
        task_description="photos of flowers",
        **fields,
    )


SCORED = [
    optimizer_pb2.ScoredClass(class_name=name, descriptions=[f"a {{}} with petals, number {i}"], accuracy=acc)
    for i, (name, acc) in enumerate(
        [
            ("marigold", 0.5),
            ("rose", 0.25),
            ("tulip", 0.25),
            ("Daisy", 1.0),
            ("water lily", 0.75),
            ("iris", 0.1),
        ]
    )
]
CONFUSIONS = [
    common_pb2.Confusion(true_class="rose", predicted_class="tulip", count=3),
    common_pb2.Confusion(true_class="tulip", predicted_class="rose", count=1),
]


async def plan_of(stub: Any, request: optimizer_pb2.ProposeDescriptionsRequest) -> Any:
    return await stub.PlanDescriptions(optimizer_pb2.PlanDescriptionsRequest(request=request))


def assert_plan_is_the_call(plan: Any, response: Any, requests: list[dict[str, Any]], k: int) -> None:
    """``plan`` foretold the call that answered ``response`` after sending ``requests``."""
    # Every reply was complete, the case the plan counts: the classes planned were described.
    assert len(response.descriptions) == sum(plan.classes_per_call)
    assert list(plan.classes_per_call) == [len(asked(b)) for b in requests]
    assert plan.llm_calls == response.usage.llm_calls == len(requests)
    # The optimizer's counter over the scripted server (no tokenizer endpoint) is the estimate
    # the context budget uses: the plan's count is what the real call's prompts were counted at.
    assert plan.prompt_tokens == sum(estimate_tokens(sent(b)) for b in requests)
    assert plan.completion_tokens == sum(reply_room(asked(b), k) for b in requests)
    assert plan.model == response.model == "fake-model"


@pytest.mark.parametrize(
    "settings", [DEFAULT, SMALL_CAP, SMALL_WINDOW, TIGHT_WINDOW], ids=["default", "cap", "window", "tight"]
)
async def test_the_plan_is_the_call_it_plans(
    fake: FakeOpenAI, start_server: Callable[..., Any], settings: dict[str, int]
) -> None:
    fake.default = answer_every_class
    stub, _channel, _server = await start_server(
        llm_base_url=fake.base_url, llm_model="fake-model", **settings
    )
    request = describe(descriptions_per_class=3, max_classes_per_call=8, seed=5)
    plan = await plan_of(stub, request)
    assert fake.requests == []  # planned without a chat completion
    assert plan.llm_calls > 1
    response = await stub.ProposeDescriptions(request)
    assert_plan_is_the_call(plan, response, fake.requests, 3)
    assert sum(plan.classes_per_call) == len(CLASSES) and not response.missing
    assert plan.max_llm_calls >= 2 * plan.llm_calls - 1
    # Every call's reserved reply room fits the completion cap the requests carry.
    cap = fake.requests[0]["max_tokens"]
    assert all(reply_room(asked(b), 3) <= cap for b in fake.requests)


async def test_a_smaller_cap_or_window_plans_more_calls_of_fewer_classes(
    fake: FakeOpenAI, start_server: Callable[..., Any]
) -> None:
    plans = {}
    for name, settings in [
        ("default", DEFAULT),
        ("cap", SMALL_CAP),
        ("large cap", LARGE_CAP),
        ("window", SMALL_WINDOW),
    ]:
        stub, _channel, _server = await start_server(
            llm_base_url=fake.base_url, llm_model="fake-model", **settings
        )
        plans[name] = await plan_of(stub, describe(descriptions_per_class=3, max_classes_per_call=8))
    default = plans["default"]

    def mean(plan: Any) -> float:
        return sum(plan.classes_per_call) / plan.llm_calls

    for name in ("cap", "window"):
        assert plans[name].llm_calls > default.llm_calls, name
        assert mean(plans[name]) < mean(default), name
        assert sum(plans[name].classes_per_call) == sum(default.classes_per_call) == len(CLASSES)
    assert max(plans["cap"].classes_per_call) < max(default.classes_per_call)
    # The small window's prompt budget, not its completion cap, splits its calls further.
    assert plans["window"].llm_calls > plans["large cap"].llm_calls
    assert mean(plans["window"]) < mean(plans["large cap"])
    assert fake.requests == []


async def test_refine_plans_only_the_weakest_classes(
    fake: FakeOpenAI, start_server: Callable[..., Any]
) -> None:
    fake.default = answer_every_class
    stub, _channel, _server = await start_server(llm_base_url=fake.base_url, llm_model="fake-model")
    request = optimizer_pb2.ProposeDescriptionsRequest(
        strategy=common_pb2.DESCRIPTION_STRATEGY_REFINE,
        scored=SCORED,
        confusions=CONFUSIONS,
        weakest_k=3,
        descriptions_per_class=2,
        max_classes_per_call=2,
    )
    plan = await plan_of(stub, request)
    assert fake.requests == []
    assert list(plan.classes_per_call) == [2, 1]  # weakest_k of the six, two per call
    response = await stub.ProposeDescriptions(request)
    assert_plan_is_the_call(plan, response, fake.requests, 2)
    chosen = weakest(
        DescriptionRequest(
            DescriptionStrategy.REFINE,
            scored=[ScoredClass(s.class_name, tuple(s.descriptions), s.accuracy) for s in SCORED],
            confusions=[(c.true_class, c.predicted_class, c.count) for c in CONFUSIONS],
            weakest_k=3,
        )
    )
    assert [c for b in fake.requests for c in asked(b)] == [s.name for s in chosen]
    # Every class right: nothing to rewrite, nothing planned.
    perfect = [optimizer_pb2.ScoredClass(class_name=s.class_name, accuracy=1.0) for s in SCORED]
    nothing = await plan_of(
        stub,
        optimizer_pb2.ProposeDescriptionsRequest(
            strategy=common_pb2.DESCRIPTION_STRATEGY_REFINE, scored=perfect
        ),
    )
    assert (nothing.llm_calls, nothing.prompt_tokens, list(nothing.classes_per_call)) == (0, 0, [])


async def test_max_llm_calls_is_what_the_call_spends_on_a_class_never_described(
    fake: FakeOpenAI, start_server: Callable[..., Any]
) -> None:
    # Every reply leaves the tulip out, so the real call asks again until its calls run out.
    fake.default = lambda body: reply({c: [f"a {c} in bloom"] for c in asked(body) if c != "tulip"})
    stub, _channel, _server = await start_server(llm_base_url=fake.base_url, llm_model="fake-model")
    classes = ["rose", "tulip", "marigold", "Daisy", "iris"]
    for fields in [{"max_classes_per_call": 2}, {"max_classes_per_call": 2, "max_llm_calls": 7}]:
        fake.requests.clear()
        request = describe(classes, descriptions_per_class=1, **fields)
        plan = await plan_of(stub, request)
        assert fake.requests == []
        assert plan.llm_calls == 3 and list(plan.classes_per_call) == [2, 2, 1]
        response = await stub.ProposeDescriptions(request)
        assert list(response.missing) == ["tulip"]
        assert len(fake.requests) == response.usage.llm_calls == plan.max_llm_calls
        assert plan.max_llm_calls == fields.get("max_llm_calls", plan.max_llm_calls)
    assert plan.max_llm_calls == 7


async def test_replies_that_describe_nothing_in_a_tight_window_end_within_a_bound(
    fake: FakeOpenAI, start_server: Callable[..., Any]
) -> None:
    # The prompt budget splits nearly every call, and no reply describes anything: each class
    # extends the default bound once (before: every split extended it again, so the calls never
    # ended — hundreds to a hostile refine request, past its deadline).
    fake.default = lambda body: "I cannot describe flowers."
    stub, _channel, _server = await start_server(
        llm_base_url=fake.base_url, llm_model="fake-model", **TIGHT_WINDOW
    )
    request = describe(descriptions_per_class=3, max_classes_per_call=8)
    plan = await plan_of(stub, request)
    response = await stub.ProposeDescriptions(request)
    assert sorted(response.missing) == sorted(CLASSES)
    assert len(fake.requests) == response.usage.llm_calls
    # At most twice the calls of the cap, and twice one call per class split off.
    assert response.usage.llm_calls <= 2 * -(-len(CLASSES) // 8) + 2 * len(CLASSES)
    assert response.usage.llm_calls >= plan.llm_calls


@pytest.mark.parametrize(
    "request_",
    [
        optimizer_pb2.ProposeDescriptionsRequest(class_names=["rose"]),  # no strategy
        describe(["rose"], descriptions_per_class=0),
        describe([]),
        describe(["rose", "Rose"]),
        describe(["rose"], max_llm_calls=0),
        optimizer_pb2.ProposeDescriptionsRequest(strategy=common_pb2.DESCRIPTION_STRATEGY_REFINE),
        optimizer_pb2.ProposeDescriptionsRequest(
            strategy=common_pb2.DESCRIPTION_STRATEGY_REFINE,
            scored=SCORED,
            confusions=[common_pb2.Confusion(true_class="rose", predicted_class="orchid", count=1)],
        ),
    ],
)
async def test_a_bad_request_is_invalid_argument_as_for_propose(
    fake: FakeOpenAI, start_server: Callable[..., Any], request_: optimizer_pb2.ProposeDescriptionsRequest
) -> None:
    stub, _channel, _server = await start_server(llm_base_url=fake.base_url, llm_model="fake-model")
    with pytest.raises(grpc.aio.AioRpcError) as planned:
        await plan_of(stub, request_)
    with pytest.raises(grpc.aio.AioRpcError) as proposed:
        await stub.ProposeDescriptions(request_)
    assert planned.value.code() == proposed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert planned.value.details() == proposed.value.details()
    assert fake.requests == []


async def test_an_empty_plan_request_is_invalid_argument(
    fake: FakeOpenAI, start_server: Callable[..., Any]
) -> None:
    stub, _channel, _server = await start_server(llm_base_url=fake.base_url, llm_model="fake-model")
    with pytest.raises(grpc.aio.AioRpcError) as call:
        await stub.PlanDescriptions(optimizer_pb2.PlanDescriptionsRequest())
    assert call.value.code() == grpc.StatusCode.INVALID_ARGUMENT


class HalfCharacterCounter:
    """A tokenizer counting more than the estimate: a token per two characters, two per message."""

    async def count(self, messages: Sequence[ChatMessage]) -> int:
        return sum(len(m.content) // 2 + 2 for m in messages)


async def test_prompts_are_counted_by_the_writers_counter(
    fake: FakeOpenAI, make_backend: Callable[..., ChatBackend]
) -> None:
    fake.default = answer_every_class
    counter = HalfCharacterCounter()
    # A prompt budget of 980 - 600 - 48 = 332 tokens: by this counter most calls hold 3 classes
    # (by the estimate, all 6 whose replies fit the completion cap would).
    window = ContextWindow(tokens=980, completion_tokens=600, source="setting")
    writer = DescriptionWriter(make_backend(max_retries=0), window=window, counter=counter, model="m")
    request = DescriptionRequest(DescriptionStrategy.DESCRIBE, class_names=CLASSES, max_classes_per_call=8)
    plan = await writer.plan(request)
    estimated = await DescriptionWriter(
        make_backend(), window=ContextWindow(tokens=980, completion_tokens=600), counter=EstimatingCounter()
    ).plan(request)
    assert plan.llm_calls > estimated.llm_calls
    assert fake.requests == []
    proposal = await writer.propose(request)
    assert proposal.missing == [] and plan.model == "m"
    assert plan.classes_per_call == tuple(len(asked(b)) for b in fake.requests)
    counted = [await counter.count(sent(b)) for b in fake.requests]
    assert plan.prompt_tokens == sum(counted) != sum(estimate_tokens(sent(b)) for b in fake.requests)
    assert all(c <= window.prompt_budget for c in counted)

    # No window and no counter: every call holds max_classes_per_call classes, estimated.
    fake.requests.clear()
    bare = DescriptionWriter(make_backend(max_retries=0))
    plan = await bare.plan(request)
    await bare.propose(request)
    assert plan.classes_per_call == (8, 8, 4) == tuple(len(asked(b)) for b in fake.requests)
    assert plan.prompt_tokens == sum(estimate_tokens(sent(b)) for b in fake.requests)
    with pytest.raises(InvalidRequest):
        await bare.plan(DescriptionRequest(DescriptionStrategy.DESCRIBE, class_names=[]))


async def test_the_coordinators_client(fake: FakeOpenAI, start_server: Callable[..., Any]) -> None:
    stub, _channel, server = await start_server(llm_base_url=fake.base_url, llm_model="fake-model")
    proposer = GrpcProposer(f"127.0.0.1:{server.port}")
    try:
        plan = await proposer.plan_descriptions(
            DescriptionStrategy.REFINE,
            scored={s.class_name: (tuple(s.descriptions), s.accuracy) for s in SCORED},
            confusions=[("rose", "tulip", 3)],
            weakest_k=2,
            descriptions_per_class=2,
        )
        with pytest.raises(SearchFailed) as failed:
            await proposer.plan_descriptions(DescriptionStrategy.DESCRIBE, class_names=[])
    finally:
        await proposer.close()
    direct = await plan_of(
        stub,
        optimizer_pb2.ProposeDescriptionsRequest(
            strategy=common_pb2.DESCRIPTION_STRATEGY_REFINE,
            scored=SCORED,
            confusions=[common_pb2.Confusion(true_class="rose", predicted_class="tulip", count=3)],
            weakest_k=2,
            descriptions_per_class=2,
        ),
    )
    assert plan == DescriptionPlan(
        direct.llm_calls,
        direct.max_llm_calls,
        direct.prompt_tokens,
        direct.completion_tokens,
        direct.model,
        tuple(direct.classes_per_call),
    )
    assert sum(plan.classes_per_call) == 2 and plan.model == "fake-model"
    assert failed.value.code == "INVALID_ARGUMENT"
    assert fake.requests == []

"""The describe and refine strategies: adversarial reply parsing, classes asked again, the context
budget, and the RPC, against the scripted OpenAI-compatible server (and the real LLM, when there)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from promptclimb.api.v1 import common_pb2, optimizer_pb2
from promptclimb.common.vocabulary import DescriptionStrategy
from promptclimb.local_llm import LlamaServer
from promptclimb.testing.fake_openai import FakeOpenAI, Reply
from services.coordinator.clients import GrpcProposer
from services.optimizer.backend import ChatBackend
from services.optimizer.context import ContextWindow, EstimatingCounter, estimate_tokens
from services.optimizer.descriptions import (
    DescriptionRequest,
    DescriptionWriter,
    ScoredClass,
    parse_descriptions,
    weakest,
)
from services.optimizer.domain import ChatMessage, InvalidRequest
from tests.optimizer.test_real_llm import LLM_SETTINGS, llama  # noqa: F401 (the module's fixture)

FLOWERS = ["marigold", "rose", "sun_flower", "Daisy", "water lily", "tulip"]


def reply(entries: dict[str, list[str]]) -> str:
    return json.dumps({"classes": [{"class": c, "descriptions": d} for c, d in entries.items()]})


def user_turn(body: dict[str, Any]) -> str:
    return str(body["messages"][-1]["content"])


def listed(body: dict[str, Any]) -> list[str]:
    """The classes a describe request lists (its "- name" lines)."""
    return [line[2:] for line in user_turn(body).splitlines() if line.startswith("- ")]


def asked(body: dict[str, Any]) -> list[str]:
    """The classes a request's reply grammar allows (every call names its classes there)."""
    entry = body["response_format"]["json_schema"]["schema"]["properties"]["classes"]["items"]
    return list(entry["properties"]["class"]["enum"])


# --- parsing -----------------------------------------------------------------------------------


def test_json_reply_names_matched_and_the_class_name_becomes_the_slot() -> None:
    parsed = parse_descriptions(
        reply(
            {
                "MARIGOLD": ["A marigold has ruffled orange petals.", "bright orange flower head"],
                "Sun Flower": ["a tall sun flower with a brown centre"],
                "orchid": ["a purple orchid"],  # not asked for
            }
        ),
        ["marigold", "sun_flower", "rose"],
        3,
    )
    assert parsed.descriptions == {
        "marigold": ["A {} has ruffled orange petals.", "{}, bright orange flower head"],
        "sun_flower": ["a tall {} with a brown centre"],
    }
    assert [(r.text, r.reason) for r in parsed.rejected] == [("orchid", "unknown_class")]


def test_garbage_markup_duplicates_and_surplus_are_rejected_with_reasons() -> None:
    text = reply(
        {
            "rose": [
                "red petals in a spiral",
                "Red  petals in a spiral",  # the same to CLIP's tokenizer
                "{}",  # nothing but the name
                '{"descriptions": [',
                "a " + "very " * 40 + "long description",
                "a thorny stem",
                "a rose bud",
                "one too many",
            ]
        }
    )
    parsed = parse_descriptions(text, ["rose"], 3)
    assert parsed.descriptions == {"rose": ["{}, red petals in a spiral", "{}, a thorny stem", "a {} bud"]}
    assert [r.reason for r in parsed.rejected] == ["duplicate", "empty", "markup", "too_long", "surplus"]


@pytest.mark.parametrize(
    "text",
    [
        # A fence after chatter, a bare mapping instead of the asked-for shape.
        'Sure! Here you go:\n```json\n{"Rose": ["red spiral petals"], "tulip": ["a cup-shaped bloom"]}\n```',
        # Lines "name: d1; d2".
        "rose: red spiral petals\nTulip: a cup-shaped bloom; a straight green stem",
        # A heading per class with a list under it.
        "## Rose\n- red spiral petals\n\n**tulip:**\n1. a cup-shaped bloom\n2. a straight green stem",
    ],
)
def test_other_shapes_of_reply_are_understood(text: str) -> None:
    parsed = parse_descriptions(text, ["rose", "tulip"], 3)
    assert parsed.descriptions["rose"] == ["{}, red spiral petals"]
    assert parsed.descriptions["tulip"][0] == "{}, a cup-shaped bloom"


@pytest.mark.parametrize(
    "text", ["", "I am sorry, I cannot help with that.", '{"classes": [{"class": "rose", "descr', "[1, 2, 3]"]
)
def test_replies_with_nothing_usable_describe_no_class(text: str) -> None:
    parsed = parse_descriptions(text, ["rose", "tulip"], 3)
    assert parsed.descriptions == {}
    assert parsed.rejected  # the caller sees why


@pytest.mark.parametrize(
    "text",
    [
        "[" * 5_000,  # deeper than Python's stack: the decoder raises RecursionError, not ValueError
        '{"classes": ' * 3_000 + '{"rose": ["red spiral petals"]}' + "}" * 3_000,
        "{}" * 20_000,  # a bracket at every other character, none of them describing a class
    ],
)
def test_deeply_nested_or_bracket_filled_replies_describe_no_class(text: str) -> None:
    parsed = parse_descriptions(text, ["rose", "tulip"], 3)
    assert "tulip" not in parsed.descriptions
    assert parsed.descriptions.get("rose", ["{}, red spiral petals"]) == ["{}, red spiral petals"]


# --- the writer against the scripted server ----------------------------------------------------


async def test_several_classes_per_call_and_missing_ones_are_asked_again(
    fake: FakeOpenAI, make_backend: Callable[..., ChatBackend]
) -> None:
    fake.replies = [
        # First call (marigold, rose, sun_flower): rose is left out, a stranger is added.
        Reply(
            reply(
                {"marigold": ["orange ruffled petals"], "sun flower": ["a huge yellow head"], "iris": ["x"]}
            )
        ),
        # Second call (rose again, then Daisy, water lily): only garbage for water lily.
        Reply(
            reply(
                {
                    "Rose": ["red spiral petals"],
                    "daisy": ["white petals, yellow centre"],
                    "water lily": ['{"a": 1'],
                }
            )
        ),
        # Third call (water lily asked again, tulip).
        Reply(reply({"water lily": ["a flower floating on a pond"], "tulip": ["a cup-shaped bloom"]})),
    ]
    writer = DescriptionWriter(make_backend(max_retries=0))
    proposal = await writer.propose(
        DescriptionRequest(
            DescriptionStrategy.DESCRIBE,
            class_names=FLOWERS,
            descriptions_per_class=2,
            task_description="photos of flowers",
            max_classes_per_call=3,
            seed=7,
        )
    )
    assert [listed(b) for b in fake.requests] == [
        ["marigold", "rose", "sun_flower"],
        ["rose", "Daisy", "water lily"],
        ["water lily", "tulip"],
    ]
    assert "Earlier answers left out rose" in user_turn(fake.requests[1])
    assert "Earlier answers left out water lily" in user_turn(fake.requests[2])
    assert [b["seed"] for b in fake.requests] == [7, 8, 9]  # a repeated question is not a cached one
    # The grammar names exactly the classes of that call.
    schema = fake.requests[0]["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["classes"]["items"]["properties"]["class"]["enum"] == FLOWERS[:3]
    assert list(proposal.descriptions) == FLOWERS  # in the order asked, each class once
    assert proposal.descriptions["water lily"] == ["{}, a flower floating on a pond"]
    assert proposal.missing == []
    assert {r.reason for r in proposal.rejected} == {"unknown_class", "markup"}
    assert proposal.usage.llm_calls == 3
    assert proposal.usage.prompt_tokens == 3 * 11 and proposal.usage.completion_tokens == 3 * 7


async def test_a_class_never_described_is_reported_missing_not_invented(
    fake: FakeOpenAI, make_backend: Callable[..., ChatBackend]
) -> None:
    fake.default = lambda body: reply({"rose": ["red spiral petals"]})  # never the tulip
    writer = DescriptionWriter(make_backend(max_retries=0))
    proposal = await writer.propose(
        DescriptionRequest(DescriptionStrategy.DESCRIBE, class_names=["rose", "tulip"], max_llm_calls=3)
    )
    assert proposal.descriptions == {"rose": ["{}, red spiral petals"]}
    assert proposal.missing == ["tulip"]
    assert len(fake.requests) == 3 and [listed(b) for b in fake.requests[1:]] == [["tulip"], ["tulip"]]


async def test_calls_fit_the_completion_cap_and_the_prompt_budget(
    fake: FakeOpenAI, make_backend: Callable[..., ChatBackend]
) -> None:
    def answer(body: dict[str, Any]) -> str:
        return reply({c: [f"a {c} in a field"] for c in asked(body)})

    fake.default = answer
    # 3 descriptions take ~90 reply tokens per class, so a 200-token cap holds two classes.
    window = ContextWindow(tokens=4096, completion_tokens=200, source="setting")
    writer = DescriptionWriter(make_backend(max_retries=0), window=window, counter=EstimatingCounter())
    proposal = await writer.propose(DescriptionRequest(DescriptionStrategy.DESCRIBE, class_names=FLOWERS))
    assert [len(listed(b)) for b in fake.requests] == [2, 2, 2]
    assert proposal.missing == [] and len(proposal.descriptions) == 6

    # A small window: its prompt budget (1000 - 600 - margin) splits a call the 600-token
    # completion cap would allow (ten classes) further.
    fake.requests.clear()
    names = [f"a rather long class name number {i} of this dataset" for i in range(12)]
    small = ContextWindow(tokens=1000, completion_tokens=600, source="setting")
    writer = DescriptionWriter(make_backend(max_retries=0), window=small, counter=EstimatingCounter())
    proposal = await writer.propose(
        DescriptionRequest(
            DescriptionStrategy.DESCRIBE, class_names=names, descriptions_per_class=1, max_classes_per_call=12
        )
    )
    sent = [[ChatMessage(m["role"], m["content"]) for m in b["messages"]] for b in fake.requests]
    assert all(estimate_tokens(m) <= small.prompt_budget for m in sent)
    assert (
        sum(len(listed(b)) for b in fake.requests) == 12 and max(len(listed(b)) for b in fake.requests) < 10
    )
    assert proposal.missing == []


SCORED = [
    ScoredClass("marigold", ("{}, orange petals",), 0.50),
    ScoredClass("rose", ("{}, red petals", "a {} in a vase"), 0.25),
    ScoredClass("tulip", ("{}, a cup-shaped bloom",), 0.25),
    ScoredClass("Daisy", ("{}, white petals",), 1.0),
    ScoredClass("water lily", ("{} on a pond",), 0.75),
]
CONFUSIONS = [("rose", "tulip", 3), ("rose", "marigold", 1), ("tulip", "rose", 2), ("marigold", "Daisy", 2)]


def test_weakest_classes_lowest_accuracy_then_most_confused() -> None:
    request = DescriptionRequest(
        DescriptionStrategy.REFINE, scored=SCORED, confusions=CONFUSIONS, weakest_k=3
    )
    assert [s.name for s in weakest(request)] == ["rose", "tulip", "marigold"]
    # A class with every image right is never rewritten, whatever weakest_k asks.
    request.weakest_k = 10
    assert "Daisy" not in [s.name for s in weakest(request)]


async def test_refine_shows_the_confusions_and_rewrites_only_the_weakest(
    fake: FakeOpenAI, make_backend: Callable[..., ChatBackend]
) -> None:
    fake.replies = [
        Reply(
            reply(
                {
                    "rose": ["a rose in a vase", "layered red petals in a tight spiral"],  # first: current
                    "tulip": ["smooth petals in a closed cup"],
                    "marigold": ["dense orange pompom"],  # not among the weakest two
                }
            )
        )
    ]
    writer = DescriptionWriter(make_backend(max_retries=0))
    proposal = await writer.propose(
        DescriptionRequest(
            DescriptionStrategy.REFINE,
            scored=SCORED,
            confusions=CONFUSIONS,
            weakest_k=2,
            descriptions_per_class=2,
        )
    )
    turn = user_turn(fake.requests[0])
    assert "rose: 25.0% right, mistaken for tulip (3 images), marigold (1 image)" in turn
    assert '  current: "a rose in a vase"' in turn
    assert "tulip: 25.0% right, mistaken for rose (2 images)" in turn
    assert "marigold: 50.0%" not in turn  # only the weakest two are shown
    assert proposal.descriptions == {
        "rose": ["{}, layered red petals in a tight spiral"],
        "tulip": ["{}, smooth petals in a closed cup"],
    }
    assert {(r.text, r.reason) for r in proposal.rejected} == {
        ("a {} in a vase", "duplicate"),
        ("marigold", "unknown_class"),
    }


async def test_refine_with_every_class_right_asks_nothing(
    fake: FakeOpenAI, make_backend: Callable[..., ChatBackend]
) -> None:
    perfect = [ScoredClass(s.name, s.descriptions, 1.0) for s in SCORED]
    proposal = await DescriptionWriter(make_backend()).propose(
        DescriptionRequest(DescriptionStrategy.REFINE, scored=perfect)
    )
    assert proposal.descriptions == {} and proposal.usage.llm_calls == 0 and fake.requests == []


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"descriptions_per_class": 0}, "descriptions_per_class"),
        ({"descriptions_per_class": 11}, "descriptions_per_class"),
        ({"class_names": []}, "class_names"),
        ({"class_names": ["rose", "Rose"]}, "class_names[1]"),
        ({"class_names": ["rose", "a\x00b"]}, "class_names[1]"),
        ({"max_classes_per_call": 0}, "max_classes_per_call"),
        ({"max_llm_calls": 0}, "max_llm_calls"),
        ({"temperature": 2.5}, "temperature"),
        ({"strategy": DescriptionStrategy.REFINE, "scored": []}, "scored"),
        (
            {"strategy": DescriptionStrategy.REFINE, "scored": [ScoredClass("rose", (), float("nan"))]},
            "scored[0].accuracy",
        ),
        (
            {"strategy": DescriptionStrategy.REFINE, "scored": SCORED, "confusions": [("rose", "orchid", 1)]},
            "confusions[0]",
        ),
    ],
)
async def test_invalid_requests(
    make_backend: Callable[..., ChatBackend], changes: dict[str, Any], field: str
) -> None:
    fields: dict[str, Any] = {"strategy": DescriptionStrategy.DESCRIBE, "class_names": ["rose"], **changes}
    with pytest.raises(InvalidRequest) as info:
        await DescriptionWriter(make_backend()).propose(DescriptionRequest(**fields))
    assert info.value.field == field


async def test_propose_descriptions_over_grpc(fake: FakeOpenAI, start_server: Callable[..., Any]) -> None:
    fake.default = lambda body: reply({c: [f"a {c} in bloom", "green leaves"] for c in asked(body)})
    stub, _channel, _server = await start_server(llm_base_url=fake.base_url, llm_model="fake-model")
    response = await stub.ProposeDescriptions(
        optimizer_pb2.ProposeDescriptionsRequest(
            strategy=common_pb2.DESCRIPTION_STRATEGY_DESCRIBE,
            class_names=["rose", "tulip"],
            descriptions_per_class=2,
            task_description="photos of flowers",
        )
    )
    assert [(d.class_name, list(d.texts)) for d in response.descriptions] == [
        ("rose", ["a {} in bloom", "{}, green leaves"]),
        ("tulip", ["a {} in bloom", "{}, green leaves"]),
    ]
    assert response.usage.llm_calls == 1 and response.structured and not response.missing
    refined = await stub.ProposeDescriptions(
        optimizer_pb2.ProposeDescriptionsRequest(
            strategy=common_pb2.DESCRIPTION_STRATEGY_REFINE,
            scored=[
                optimizer_pb2.ScoredClass(class_name="rose", descriptions=["{}, red"], accuracy=0.5),
                optimizer_pb2.ScoredClass(class_name="tulip", descriptions=["{}, cup"], accuracy=1.0),
            ],
            confusions=[common_pb2.Confusion(true_class="rose", predicted_class="tulip", count=2)],
        )
    )
    assert [d.class_name for d in refined.descriptions] == ["rose"]
    for request in [
        optimizer_pb2.ProposeDescriptionsRequest(class_names=["rose"]),  # no strategy
        optimizer_pb2.ProposeDescriptionsRequest(
            strategy=common_pb2.DESCRIPTION_STRATEGY_DESCRIBE, class_names=["rose"], descriptions_per_class=0
        ),
        optimizer_pb2.ProposeDescriptionsRequest(strategy=common_pb2.DESCRIPTION_STRATEGY_DESCRIBE),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as call:
            await stub.ProposeDescriptions(request)
        assert call.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_the_coordinators_client(fake: FakeOpenAI, start_server: Callable[..., Any]) -> None:
    fake.default = lambda body: reply({c: [f"a {c} in bloom"] for c in asked(body)})
    _stub, _channel, server = await start_server(llm_base_url=fake.base_url, llm_model="fake-model")
    proposer = GrpcProposer(f"127.0.0.1:{server.port}", prices={"*": (1.0, 2.0)})
    try:
        described = await proposer.propose_descriptions(
            DescriptionStrategy.DESCRIBE, class_names=["rose", "tulip"], descriptions_per_class=1, seed=3
        )
        refined = await proposer.propose_descriptions(
            DescriptionStrategy.REFINE,
            scored={"rose": (("{}, red",), 0.5), "tulip": (("{}, cup",), 0.25)},
            confusions=[("tulip", "rose", 3)],
            weakest_k=1,
        )
    finally:
        await proposer.close()
    assert described.descriptions == {"rose": ("a {} in bloom",), "tulip": ("a {} in bloom",)}
    assert described.llm_calls == 1 and described.cost_usd == pytest.approx((11 * 1.0 + 7 * 2.0) / 1000)
    assert fake.requests[0]["seed"] == 3
    assert list(refined.descriptions) == ["tulip"] and refined.missing == ()
    assert "mistaken for rose (3 images)" in user_turn(fake.requests[1])


@pytest.mark.slow
@pytest.mark.llm
async def test_describe_against_the_real_model(llama: LlamaServer, start_server: Callable[..., Any]) -> None:  # noqa: F811
    """SmolLM2 behind llama.cpp: the pipeline, not the quality (the model is tiny)."""
    stub, _channel, _server = await start_server(
        llm_base_url=llama.base_url, llm_model="smollm2-135m", **{**LLM_SETTINGS, "max_tokens": 160}
    )
    classes = ["rose", "tulip", "sunflower"]
    response = await stub.ProposeDescriptions(
        optimizer_pb2.ProposeDescriptionsRequest(
            strategy=common_pb2.DESCRIPTION_STRATEGY_DESCRIBE,
            class_names=classes,
            descriptions_per_class=2,
            task_description="photos of flowers",
            seed=1,
        ),
        timeout=600,
    )
    described = [d.class_name for d in response.descriptions]
    # Every class is accounted for, each exactly once, in the order asked.
    assert sorted(described + list(response.missing)) == sorted(classes)
    assert described == [c for c in classes if c in described]
    assert described, "the grammar-bound model described no class at all"
    for d in response.descriptions:
        assert 1 <= len(d.texts) <= 2 and all("{}" in t and len(t) <= 150 for t in d.texts)
    # 160 completion tokens hold two classes of two descriptions: more than one call was needed.
    assert response.usage.llm_calls >= 2 and response.usage.completion_tokens > 0
    assert response.structured

"""Every strategy fits the endpoint's context window: trimming, counting, and recovering a rejection."""

from __future__ import annotations

import json

from promptclimb.testing.fake_openai import FakeOpenAI, Reply
from services.optimizer import metrics
from services.optimizer.backend import BackendConfig, ChatBackend
from services.optimizer.context import (
    ContextWindow,
    EndpointCounter,
    EstimatingCounter,
    estimate_tokens,
    fit_messages,
    parse_context_rejection,
)
from services.optimizer.core import Optimizer
from services.optimizer.domain import ChatMessage, ScoredTemplate, Strategy
from services.optimizer.strategies import STRATEGIES, Conversation
from tests.optimizer.conftest import TINY_BACKOFF, make_request

LLAMA_REJECTION = (
    "This model's maximum context length is 2048 tokens. However, you requested 4831 tokens "
    "(4815 in the messages, 16 in the completion). Please reduce the length of the messages or completion."
)


def long_history(
    n: int, filler: str = "a carefully lit studio photograph with soft shadows and a plain background showing"
) -> list[ScoredTemplate]:
    """``n`` distinct templates (about 150 characters by default), accuracies spread over [0.1, 0.9]."""
    return [ScoredTemplate(f"{filler} the {{}} number {i}, item {i}.", 0.1 + 0.8 * i / n) for i in range(n)]


def reply(templates: list[str]) -> ChatMessage:
    return ChatMessage("assistant", json.dumps({"templates": templates}))


def chat_of(turns: int, history: list[ScoredTemplate]) -> list[ChatMessage]:
    """A conversation as the coordinator sends it back: opening, then (reply, feedback) turns."""
    conversation = STRATEGIES[Strategy.CONVERSATION]
    request = make_request(Strategy.CONVERSATION, history=history, best_k=15, worst_k=15, num_templates=5)
    chat = conversation.messages(request)
    for t in range(turns):
        chat = [*chat, reply([history[(5 * t + j) % len(history)].template for j in range(5)])]
        if t < turns - 1:
            chat = conversation.messages(
                make_request(Strategy.CONVERSATION, history=history, conversation=chat)
            )
    return chat


def test_rejection_text_gives_limit_requested_and_prompt() -> None:
    assert parse_context_rejection(LLAMA_REJECTION) == (2048, 4831, 4815)
    assert parse_context_rejection("context too long") == (None, None, None)


async def test_a_long_conversation_is_trimmed_keeping_system_opening_and_newest_turns() -> None:
    history = long_history(60, filler="a studio photo with soft light of")  # about 55 characters
    chat = chat_of(12, history)  # opening + 11 (reply, feedback) turns + the last reply
    request = make_request(
        Strategy.CONVERSATION, history=history, best_k=15, worst_k=15, num_templates=5, conversation=chat
    )
    untrimmed = STRATEGIES[Strategy.CONVERSATION].messages(request)
    budget = 2600
    assert estimate_tokens(untrimmed) > 2 * budget  # the paper's protocol outgrows a 2,048 window
    fitted, tokens = await fit_messages(
        request, Conversation().messages, Conversation().fold, budget, EstimatingCounter().count
    )
    assert tokens == estimate_tokens(fitted) <= budget
    assert fitted[0] == untrimmed[0]  # the system message
    assert fitted[-2:] == untrimmed[-2:]  # the last reply and the new feedback turn
    assert len(fitted) < len(untrimmed)
    opening = fitted[1].content
    assert opening.startswith(untrimmed[1].content.split("\n\nWrite ")[0])  # the opening, kept
    # What the folded turns proposed is listed in the opening with its accuracy, best first.
    assert "Earlier in this conversation you also wrote these templates (best first):" in opening
    assert opening.rstrip().endswith(untrimmed[1].content.rsplit("\n\nWrite ", 1)[1].rstrip())
    folded = opening.split("(best first):\n")[1].split("\n\n")[0].splitlines()
    assert folded and all(line.startswith('- "') and line.endswith("%)") for line in folded)
    # Roles still alternate after the opening, as chat templates require.
    assert [m.role for m in fitted[1:]] == ["user", "assistant"] * ((len(fitted) - 2) // 2) + ["user"]


async def test_fifteen_best_and_fifteen_worst_long_templates_fit_every_single_turn_strategy() -> None:
    history = long_history(60)
    for strategy in (Strategy.CONTRAST, Strategy.TRAJECTORY, Strategy.CONVERSATION):
        request = make_request(strategy, history=history, best_k=15, worst_k=15, num_templates=5)
        assert estimate_tokens(STRATEGIES[strategy].messages(request)) > 900
        fitted, tokens = await fit_messages(
            request, STRATEGIES[strategy].messages, None, 900, EstimatingCounter().count
        )
        assert tokens <= 900, strategy
        assert "number 59" in fitted[-1].content  # the best template is still shown


async def test_a_context_rejection_shrinks_the_request_and_the_call_succeeds() -> None:
    # The window is unknown (8,192 assumed); the endpoint has 2,048 and says so, as llama.cpp does.
    rejection = json.dumps(
        {
            "error": {
                "message": LLAMA_REJECTION,
                "type": "invalid_request_error",
                "code": "context_length_exceeded",
            }
        }
    ).encode()
    with FakeOpenAI(replies=[Reply(status=400, raw_body=rejection)]) as fake:
        fake.default = lambda _body: json.dumps({"templates": ["a studio photo of the {}."]})
        backend = ChatBackend(
            BackendConfig(model="fake", base_url=fake.base_url, structured_output="off", **TINY_BACKOFF)
        )
        window = ContextWindow(tokens=8192, completion_tokens=512)
        optimizer = Optimizer(backend, window=window, counter=EndpointCounter(backend))
        before = metrics.CONTEXT_RETRIES._value.get()
        history = long_history(200)
        request = make_request(Strategy.CONTRAST, history=history, best_k=50, worst_k=50, num_templates=5)
        proposal = await optimizer.propose(request)
        await backend.close()
    assert proposal.templates == ["a studio photo of the {}."]
    assert window.tokens == 2048 and window.source == "rejection"
    assert metrics.CONTEXT_RETRIES._value.get() == before + 1
    chats = [r for r in fake.requests if "messages" in r]
    assert len(chats) == 2
    first, second = ("".join(m["content"] for m in r["messages"]) for r in chats)
    assert len(second) < len(first)
    # The retry fits the learned window by our count, scaled by how the endpoint counted the first.
    sent = [ChatMessage(m["role"], m["content"]) for m in chats[1]["messages"]]
    assert (
        estimate_tokens(sent)
        * 4815
        / estimate_tokens([ChatMessage(m["role"], m["content"]) for m in chats[0]["messages"]])
        <= window.prompt_budget
    )


async def test_the_endpoint_tokenizer_is_used_where_it_answers_and_estimates_elsewhere() -> None:
    with FakeOpenAI() as fake:  # no tokenizer endpoint: 404
        backend = ChatBackend(BackendConfig(model="fake", base_url=fake.base_url, **TINY_BACKOFF))
        messages = [ChatMessage("user", "a photo of a {}.")]
        assert await EndpointCounter(backend).count(messages) == estimate_tokens(messages)
        assert backend._tokenizer == "none"  # asked once, remembered
        await backend.close()


async def test_a_reply_cut_by_a_full_window_teaches_the_window_and_is_asked_again() -> None:
    # llama-cpp-python takes a prompt that leaves too little room and cuts the reply where its
    # 2,048-token window ends (finish_reason "length" long before max_tokens).
    cut = Reply(content='{"templates": [', finish_reason="length", prompt_tokens=2044, completion_tokens=4)
    with FakeOpenAI(replies=[cut]) as fake:
        fake.default = lambda _body: json.dumps({"templates": ["a studio photo of the {}."]})
        backend = ChatBackend(
            BackendConfig(model="fake", base_url=fake.base_url, structured_output="off", **TINY_BACKOFF)
        )
        window = ContextWindow(tokens=8192, completion_tokens=512)
        optimizer = Optimizer(backend, window=window, counter=EndpointCounter(backend))
        request = make_request(Strategy.CONTRAST, history=long_history(200), best_k=50, worst_k=50)
        proposal = await optimizer.propose(request)
        await backend.close()
    assert proposal.templates == ["a studio photo of the {}."]
    assert window.tokens == 2048
    chats = [r for r in fake.requests if "messages" in r]
    assert len(chats) == 2 and len(json.dumps(chats[1]["messages"])) < len(json.dumps(chats[0]["messages"]))
    assert proposal.usage.llm_calls == 2  # the cut reply was spent too
    assert proposal.usage.prompt_tokens == 2044 + 11

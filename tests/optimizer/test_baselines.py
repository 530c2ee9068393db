"""The two strategies that answer "does the LLM add anything?": edit (no LLM) and evolve (EvoPrompt)."""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any

from promptclimb.api.v1 import common_pb2
from promptclimb.testing.fake_openai import FakeOpenAI
from services.optimizer.domain import ChatMessage, ScoredTemplate, Strategy
from services.optimizer.edits import edit_children, random_edit, vocabulary
from services.optimizer.strategies import STRATEGIES, SYSTEM_PROMPT, Evolve
from tests.optimizer.conftest import HISTORY, make_request, proto_request

Start = Any

TASK = (
    "Task: classify photos of clothing items (Fashion-MNIST).\nSome class names: T-shirt, Trouser, Bag.\n\n"
)
ANSWER = (
    'Answer with a JSON object only, of the form {"templates": ["..."]}, holding exactly 2 new templates, '
    "each with {} exactly once where the class name goes."
)
# Seed 7 draws these two parents from HISTORY (pinned: a change of the tournament shows here).
EVOLVE = (
    TASK + "Two parent templates, with the accuracy CLIP reached with them:\n"
    'Parent 1: "a photo of a {}." (62.0%)\n'
    'Parent 2: "a drawing of a {}." (41.0%)\n'
    "\n"
    "Write 2 child templates. For each child, first cross the parents over (combine parts of both into "
    "one template), then mutate the result (change, add or drop a word or two), so that the child is "
    "likely to score higher than both parents.\n" + ANSWER
)
EVOLVE_ONE_PARENT = (
    TASK + "A parent template, with the accuracy CLIP reached with it:\n"
    'Parent: "a photo of a {}." (62.0%)\n'
    "\n"
    "Write 2 child templates, each a mutation of the parent: change, add or drop a word or two, so "
    "that the child is likely to score higher.\n" + ANSWER
)


# --- evolve ---------------------------------------------------------------------------------------


def test_evolve_sends_two_tournament_parents_and_asks_for_crossover_then_mutation() -> None:
    messages = STRATEGIES[Strategy.EVOLVE].messages(make_request(Strategy.EVOLVE, seed=7))
    assert messages == [ChatMessage("system", SYSTEM_PROMPT), ChatMessage("user", EVOLVE)]


def test_evolve_with_a_single_template_asks_for_mutations_of_it() -> None:
    request = make_request(Strategy.EVOLVE, seed=7, history=[HISTORY[0]])
    assert STRATEGIES[Strategy.EVOLVE].messages(request)[-1] == ChatMessage("user", EVOLVE_ONE_PARENT)


def test_evolve_parents_replay_with_the_seed_and_the_worst_is_never_one() -> None:
    evolve = Evolve()
    worst = min(HISTORY, key=lambda s: s.accuracy).template
    picks = {}
    for seed in range(40):
        parents = [p.template for p in evolve.parents(make_request(Strategy.EVOLVE, seed=seed))]
        again = [p.template for p in evolve.parents(make_request(Strategy.EVOLVE, seed=seed))]
        assert parents == again and len(set(parents)) == 2 and worst not in parents
        picks[seed] = tuple(parents)
    assert len(set(picks.values())) > 3  # the seed matters: different calls breed different pairs


async def test_evolve_end_to_end_sends_the_pinned_messages_and_parses_the_reply(
    fake: FakeOpenAI, start_server: Start
) -> None:
    fake.default = lambda _body: json.dumps({"templates": ["a photo drawing of a {class}.", "no slot"]})
    stub, _channel, _server = await start_server(llm_base_url=fake.base_url, llm_model="fake-model")
    response = await stub.ProposePrompts(proto_request(common_pb2.STRATEGY_EVOLVE, seed=7))
    assert [m["content"] for m in fake.requests[0]["messages"]] == [SYSTEM_PROMPT, EVOLVE]
    assert list(response.templates) == ["a photo drawing of a {}."]
    assert [(r.text, r.reason) for r in response.rejected] == [("no slot", "no_slot")]
    assert response.usage.llm_calls == 1


# --- edit -----------------------------------------------------------------------------------------


def is_one_edit(child: str, parent: str, vocab: set[str]) -> bool:
    """Whether ``child`` is one swap, insert, delete or replace of ``parent``'s words."""
    c, p = child.split(), parent.split()
    if len(c) == len(p) + 1:  # insert
        return any(c[:i] + c[i + 1 :] == p and c[i] in vocab for i in range(len(c)))
    if len(c) == len(p) - 1:  # delete (never the slot's word)
        return any(p[:i] + p[i + 1 :] == c and "{}" not in p[i] for i in range(len(p)))
    if len(c) != len(p):
        return False
    diff = [i for i in range(len(p)) if c[i] != p[i]]
    if len(diff) == 1:  # replace (never the slot's word)
        return "{}" not in p[diff[0]] and c[diff[0]] in vocab
    return len(diff) == 2 and diff[1] == diff[0] + 1 and Counter(c) == Counter(p)  # swap


async def test_edit_makes_no_llm_request_and_reports_zero_usage(
    fake: FakeOpenAI, start_server: Start
) -> None:
    stub, _channel, _server = await start_server(llm_base_url=fake.base_url, llm_model="fake-model")
    request = proto_request(common_pb2.STRATEGY_EDIT, seed=11, num_templates=6, best_k=2)
    response = await stub.ProposePrompts(request)
    assert fake.requests == []  # the LLM endpoint never heard of it
    assert (response.usage.llm_calls, response.usage.prompt_tokens, response.usage.completion_tokens) == (
        0,
        0,
        0,
    )
    assert list(response.conversation) == [] and not response.rejected

    templates = list(response.templates)
    history = {s.template.casefold() for s in HISTORY}
    best_two = ["a close-up photo of the {}.", "a photo of a {}."]
    vocab = set(vocabulary([s.template for s in HISTORY], "photos of clothing items (Fashion-MNIST)"))
    assert len(templates) == 6 and len(set(templates)) == 6
    for t in templates:
        assert t.count("{}") == 1 and t.casefold() not in history
        assert any(is_one_edit(t, parent, vocab) for parent in best_two), t
    assert {"clothing", "Fashion-MNIST", "drawing"} <= vocab  # from the task and from the whole pool

    again = await stub.ProposePrompts(request)
    assert list(again.templates) == templates  # seeded: a replay proposes the same templates
    other = await stub.ProposePrompts(proto_request(common_pb2.STRATEGY_EDIT, seed=12, num_templates=6))
    assert list(other.templates) != templates
    assert fake.requests == []


async def test_edit_with_no_history_is_an_invalid_argument(fake: FakeOpenAI, start_server: Start) -> None:
    import grpc
    import pytest

    stub, _channel, _server = await start_server(llm_base_url=fake.base_url, llm_model="fake-model")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ProposePrompts(proto_request(common_pb2.STRATEGY_EDIT, history=[]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fake.requests == []


def test_random_edits_never_delete_or_replace_the_slot_word() -> None:
    rng = random.Random(3)
    vocab = vocabulary(["a photo of a {}."], "shoes {} and {bags}")
    assert vocab == ["a", "and", "of", "photo", "shoes"]  # no brace ever enters the vocabulary
    for _ in range(2000):
        child = random_edit("a {}.", vocab, rng)
        assert child.count("{}") == 1 and "{}." in child.split()


def test_edit_children_are_new_bounded_and_few_when_edits_run_out() -> None:
    rng = random.Random(0)
    children = edit_children(["{}"], 5, ["x"], rng, known=["{}", "X {}"])
    assert sorted(children) == ["{} x"]  # the only new one-edit child; "x {}" is known (case aside)
    long = edit_children(["a photo of a {}."], 20, ["enormous"], rng, max_chars=20)
    assert long and all(len(t) <= 20 for t in long)


def test_edit_uses_only_the_best_k_as_parents() -> None:
    history = [ScoredTemplate("a b c {}", 0.9), ScoredTemplate("x y z {}", 0.1)]
    request = make_request(Strategy.EDIT, history=history, best_k=1, num_templates=10, seed=5)
    templates = STRATEGIES[Strategy.EDIT].templates(request, max_chars=200)  # type: ignore[union-attr]
    assert len(templates) == 10
    for t in templates:  # an edit of "a b c {}": at most one word of the other template comes in
        assert sum(w in {"x", "y", "z"} for w in t.split()) <= 1 and sum(w in "abc" for w in t.split()) >= 2

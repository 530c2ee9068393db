"""The coordinator over gRPC against fake scorer/optimizer servers: states, budgets, errors."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from promptclimb.api.v1 import coordinator_pb2 as pb
from promptclimb.client import make_spec
from services.coordinator.pools import NAMED_POOLS
from tests.coordinator.conftest import Harness
from tests.coordinator.fakes import FakeOptimizer, FakeScorer, fake_accuracy

pytestmark = pytest.mark.timeout(60)


async def test_search_runs_restarts_and_iterations_to_succeeded(harness: Harness) -> None:
    search = await harness.client.start(
        dataset="toy",
        restarts=2,
        iterations=3,
        templates_per_iteration=2,
        strategy="conversation",
        request_id="r1",
    )
    done = await harness.client.wait(search.name)
    assert done.state == pb.SEARCH_STATE_SUCCEEDED
    assert done.end_reason == "completed"
    pool = NAMED_POOLS["basic"]
    assert len(done.history) == len(pool) + 2 * 3 * 2
    assert [(i.restart, i.iteration) for i in done.iterations] == [
        (0, 0),
        (0, 1),
        (0, 2),
        (0, 3),
        (1, 1),
        (1, 2),
        (1, 3),
    ]
    best = max(done.history, key=lambda t: t.accuracy)
    assert done.best.template == best.template == done.result.best.template
    assert done.result.best_evaluation_accuracy == pytest.approx(fake_accuracy(best.template))
    top3 = sorted(done.history, key=lambda t: -t.accuracy)[:3]
    assert list(done.result.ensemble_templates) == [t.template for t in top3]
    # The evaluation split is scored once, for the best template only; nothing is scored twice.
    assert [k for k in harness.scorer.scored if k[0] == "test"] == [("test", best.template)]
    assert max(harness.scorer.scored.values()) == 1
    assert done.usage.llm_calls == 6 and done.usage.prompt_tokens == 60 and done.usage.completion_tokens == 30
    assert done.usage.evaluations == len(done.history) + 1
    # A restart resets the conversation: the first call of restart 1 carries no chat.
    convs = [len(r.conversation) for r in harness.optimizer.requests]
    assert convs == [0, 2, 4, 0, 2, 4]
    # The LLM sees the whole shared pool, growing by 2 per call.
    assert [len(r.history) for r in harness.optimizer.requests] == [5, 7, 9, 11, 13, 15]


async def test_repeated_request_id_returns_the_same_search(harness: Harness) -> None:
    first = await harness.client.start(dataset="toy", iterations=1, request_id="same")
    again = await harness.client.start(dataset="toy", iterations=5, request_id="same")
    other = await harness.client.start(dataset="toy", iterations=1, request_id="other")
    assert again.name == first.name and again.spec.iterations == 1
    assert other.name != first.name
    await harness.client.wait(first.name)
    await harness.client.wait(other.name)
    assert len(await harness.client.list()) == 2


@pytest.mark.parametrize(
    ("budget", "reason", "check"),
    [
        ({"max_llm_calls": 2}, "budget: max_llm_calls", lambda s: s.usage.llm_calls == 2),
        (
            {"max_tokens": 30},
            "budget: max_tokens",
            lambda s: s.usage.prompt_tokens + s.usage.completion_tokens == 30,
        ),
        ({"max_evaluations": 8}, "budget: max_evaluations", lambda s: len(s.history) == 8),
    ],
)
async def test_count_budgets_end_succeeded_with_reason(
    harness: Harness, budget: dict, reason: str, check
) -> None:
    search = await harness.client.start(dataset="toy", iterations=20, templates_per_iteration=2, **budget)
    done = await harness.client.wait(search.name)
    assert done.state == pb.SEARCH_STATE_SUCCEEDED
    assert done.end_reason == reason
    assert check(done)
    assert done.result.best.template  # a result is still reported
    assert done.result.best_evaluation_accuracy > 0


@pytest.mark.parametrize("fake_optimizer", [FakeOptimizer(delay=0.2)])
async def test_duration_budget_ends_succeeded(harness: Harness) -> None:
    t0 = time.monotonic()
    search = await harness.client.start(dataset="toy", iterations=100, max_duration_seconds=0.7)
    done = await harness.client.wait(search.name)
    assert done.state == pb.SEARCH_STATE_SUCCEEDED
    assert done.end_reason == "budget: max_duration"
    assert 1 <= done.usage.llm_calls <= 5
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize("fake_optimizer", [FakeOptimizer(delay=30)])
async def test_cancel_is_prompt_even_mid_llm_call(harness: Harness) -> None:
    search = await harness.client.start(dataset="toy", iterations=5)
    while (await harness.client.get(search.name)).phase != pb.SEARCH_PHASE_PROPOSING:  # noqa: ASYNC110 (polling a remote service)
        await asyncio.sleep(0.02)
    t0 = time.monotonic()
    cancelled = await harness.client.cancel(search.name)
    assert time.monotonic() - t0 < 2
    assert cancelled.state == pb.SEARCH_STATE_CANCELLED
    assert cancelled.end_reason == "cancelled"
    assert len((await harness.client.get(search.name)).history) == len(NAMED_POOLS["basic"])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await harness.client.cancel(search.name)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_unknown_dataset_fails_the_search_with_not_found(harness: Harness) -> None:
    search = await harness.client.start(dataset="nope", iterations=2)
    done = await harness.client.wait(search.name)
    assert done.state == pb.SEARCH_STATE_FAILED
    assert done.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    assert "'nope'" in done.end_reason and "toy" in done.end_reason


@pytest.mark.parametrize("fake_optimizer", [FakeOptimizer(down=True)])
async def test_optimizer_down_fails_after_retries_keeping_the_scored_pool(harness: Harness) -> None:
    search = await harness.client.start(dataset="toy", iterations=2)
    done = await harness.client.wait(search.name)
    assert done.state == pb.SEARCH_STATE_FAILED
    assert done.error_code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert done.end_reason.startswith("optimizer ProposePrompts: UNAVAILABLE")
    assert len(done.history) == len(NAMED_POOLS["basic"])
    # It died after seeding: the result is the best seeded template, scored once on test, partial.
    best = max(NAMED_POOLS["basic"], key=fake_accuracy)
    assert done.result.partial
    assert done.result.best.template == best
    assert done.result.best_evaluation_accuracy == pytest.approx(fake_accuracy(best))
    assert [k for k in harness.scorer.scored if k[0] == "test"] == [("test", best)]
    # Dying during seeding (the LLM writes the starting pool) leaves nothing to keep.
    seeded_by_llm = await harness.client.start(dataset="toy", llm_starters=4)
    failed = await harness.client.wait(seeded_by_llm.name)
    assert failed.state == pb.SEARCH_STATE_FAILED
    assert not failed.HasField("result") or not failed.result.best.template


async def test_a_bad_description_spec_names_each_field(harness: Harness) -> None:
    spec = make_spec(
        "toy",
        descriptions=True,
        descriptions_per_class=11,
        rounds=-1,
        description_template="no slot",
        transfer_models=["other"],
        max_evaluations=1,
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await harness.client.start(spec)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad = error_details_pb2.BadRequest()
    rpc_status.from_call(err.value).details[0].Unpack(bad)
    assert {v.field for v in bad.field_violations} == {
        "spec.descriptions.descriptions_per_class",
        "spec.descriptions.rounds",
        "spec.descriptions.template",
        "spec.transfer_models",
        "spec.budget.max_evaluations",
    }
    assert await harness.client.list() == []  # nothing was started


@pytest.mark.parametrize("fake_scorer", [FakeScorer(unavailable_first=2)])
async def test_scorer_unavailable_costs_a_retry_not_the_search(harness: Harness) -> None:
    search = await harness.client.start(dataset="toy", iterations=1)
    done = await harness.client.wait(search.name)
    assert done.state == pb.SEARCH_STATE_SUCCEEDED


async def test_bad_spec_is_invalid_argument_with_field_violations(harness: Harness) -> None:
    spec = make_spec("", iterations=-1, templates=["no slot here"])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await harness.client.start(spec)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(err.value)
    bad = error_details_pb2.BadRequest()
    status.details[0].Unpack(bad)
    fields = {v.field for v in bad.field_violations}
    assert fields == {"spec.dataset", "spec.iterations", "spec.initial_pool.templates[0]"}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await harness.client.get("searches/unknown")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # NUL cannot be stored in PostgreSQL text: refused up front on every store, not a FAILED search later.
    nul = make_spec("to\x00y", templates=["a {}\x00 photo."])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await harness.client.start(nul)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(err.value)
    status.details[0].Unpack(bad)
    assert {v.field for v in bad.field_violations} == {"spec.dataset", "spec.initial_pool.templates[0]"}


async def test_user_pool_and_invalid_template_from_scorer_is_skipped(harness: Harness) -> None:
    search = await harness.client.start(dataset="toy", iterations=1, templates=["a {} photo.", "art of {}."])
    done = await harness.client.wait(search.name)
    assert {t.template for t in done.history if t.iteration == 0} == {"a {} photo.", "art of {}."}
    assert {t.origin for t in done.history} == {"user", "llm"}


@pytest.mark.parametrize("fake_optimizer", [FakeOptimizer(delay=0.05)])
async def test_two_concurrent_watchers_get_snapshot_then_every_iteration(harness: Harness) -> None:
    search = await harness.client.start(dataset="toy", restarts=2, iterations=2)

    async def collect() -> list[tuple[str, int, int, int]]:
        return [
            (event, s.state, s.restart, len(s.iterations))
            async for event, s in harness.client.watch(search.name)
        ]

    a, b = await asyncio.gather(collect(), collect())
    for events in (a, b):
        assert events[0][0] == "snapshot"
        assert events[-1][1] == pb.SEARCH_STATE_SUCCEEDED
        done = [n for e, _, _, n in events if e == "iteration_done"]
        # every iteration after the snapshot arrives, in order (seed summary counts as 1)
        assert done == list(range(done[0], 5 + 1)) and done[0] <= 2
    assert [e for e in a if e[0] == "iteration_done"] == [e for e in b if e[0] == "iteration_done"]


async def test_list_pages_and_filters_by_state(harness: Harness) -> None:
    names = [(await harness.client.start(dataset="toy", iterations=1)).name for _ in range(3)]
    for n in names:
        await harness.client.wait(n)
    listed = await harness.client.list(page_size=2)
    assert [s.name for s in listed] == names[::-1]
    assert len(await harness.client.list(state="succeeded")) == 3
    assert await harness.client.list(state="running") == []


async def test_selecting_on_the_evaluation_split_is_refused(harness: Harness) -> None:
    for spec in (
        make_spec("toy", selection_split="test", evaluation_split="test"),
        make_spec("toy", selection_split="test"),  # evaluation defaults to "test"
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await harness.client.start(spec)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        bad = error_details_pb2.BadRequest()
        rpc_status.from_call(err.value).details[0].Unpack(bad)
        assert [v.field for v in bad.field_violations] == ["spec.evaluation_split"]


async def test_worst_k_zero_reaches_the_optimizer_as_zero(harness: Harness) -> None:
    search = await harness.client.start(make_spec("toy", worst_k=0, iterations=1, restarts=1))
    done = await harness.client.wait(search.name)
    assert done.state == pb.SEARCH_STATE_SUCCEEDED
    assert done.spec.HasField("worst_k") and done.spec.worst_k == 0
    assert harness.optimizer.requests, "the optimizer was never asked"
    assert all(r.HasField("worst_k") and r.worst_k == 0 for r in harness.optimizer.requests)
    default = await harness.client.start(make_spec("toy", iterations=1, restarts=1))
    assert (await harness.client.wait(default.name)).spec.worst_k == 3


async def test_patience_stops_a_search_that_no_longer_improves(harness: Harness) -> None:
    patience = 2
    search = await harness.client.start(
        make_spec("toy", iterations=40, restarts=1, templates_per_iteration=1, patience=patience)
    )
    done = await harness.client.wait(search.name)
    assert done.state == pb.SEARCH_STATE_SUCCEEDED
    # The same rule computed independently over what the fakes produce: the pool, then one
    # "take N" template per iteration; stop once `patience` iterations in a row bring no new best.
    best, since, iterations = max(fake_accuracy(t) for t in NAMED_POOLS["basic"]), 0, 0
    for n in range(1, 41):
        iterations = n
        accuracy = fake_accuracy(f"a photo of a {{}} (take {n}).")
        best, since = (accuracy, 0) if accuracy > best else (best, since + 1)
        if since >= patience:
            break
    assert iterations < 40, "the fakes never plateau: pick another patience"
    assert done.end_reason == "converged"
    assert done.iteration == iterations
    assert done.usage.llm_calls == iterations


async def test_cost_is_priced_per_model_and_counted(harness: Harness) -> None:
    from prometheus_client import REGISTRY

    from services.coordinator.settings import CoordinatorSettings

    # USD per 1k tokens; the fake answers as model "fake" with 10 prompt + 5 completion tokens.
    harness.runner.proposer.prices = CoordinatorSettings(llm_prices=["fake=1.5,4", "*=100,100"]).prices()
    before = REGISTRY.get_sample_value("promptclimb_coordinator_llm_cost_usd_total") or 0.0
    search = await harness.client.start(make_spec("toy", iterations=3, restarts=1))
    done = await harness.client.wait(search.name)
    assert done.usage.llm_calls == 3
    assert done.usage.cost_usd == pytest.approx(3 * (10 * 1.5 + 5 * 4) / 1000)
    after = REGISTRY.get_sample_value("promptclimb_coordinator_llm_cost_usd_total")
    assert after == pytest.approx(before + done.usage.cost_usd)


def test_malformed_prices_are_refused_naming_the_entry() -> None:
    from pydantic import ValidationError

    from services.coordinator.settings import CoordinatorSettings

    for bad in ("gpt-4o-mini", "m=1", "m=a,b", "m=-1,2", "=1,2"):
        with pytest.raises(ValidationError, match="llm price"):
            CoordinatorSettings(llm_prices=[bad])


async def test_released_scores_every_valid_template_of_a_reply(harness: Harness) -> None:
    # One template asked per call, three written: released scores all three, contrast the one.
    harness.optimizer.extra = 2
    search = await harness.client.start(
        make_spec("toy", strategy="released", iterations=2, restarts=1, templates_per_iteration=1)
    )
    done = await harness.client.wait(search.name)
    assert done.state == pb.SEARCH_STATE_SUCCEEDED
    assert len(done.history) == len(NAMED_POOLS["basic"]) + 2 * 3
    contrast = await harness.client.start(
        make_spec("toy", strategy="contrast", iterations=2, restarts=1, templates_per_iteration=1)
    )
    assert len((await harness.client.wait(contrast.name)).history) == len(NAMED_POOLS["basic"]) + 2

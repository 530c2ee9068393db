"""Faults beyond a killed coordinator: a misbehaving LLM, a restarted optimizer, a locked store.

The coordinator, its store and the optimizer are the real ones (the optimizer talks HTTP to a
scripted fake LLM); the scorer is the coordinator tests' fake. Each test shows the search's final
state and its scored history after the fault: a search recovers, or ends FAILED with the reason,
and nothing recorded before the fault is lost.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from promptclimb.api.v1 import coordinator_pb2
from promptclimb.client import CoordinatorClient
from promptclimb.testing.fake_openai import FakeOpenAI, Reply
from services.coordinator.clients import GrpcProposer, GrpcScorer, RetryPolicy
from services.coordinator.pools import NAMED_POOLS
from services.optimizer.main import build_server
from services.optimizer.settings import OptimizerSettings
from tests.coordinator.fakes import FakeScorer, start_scorer
from tests.support.coordinator import coordinator_in_process

POOL = len(NAMED_POOLS["basic"])


def numbered(body: dict[str, object]) -> str:
    n = len(str(body))  # differs per request (the history grows)
    return f"1. a photo of a {{}}, take {n}.\n2. a close-up of the {{}}, take {n}."


@dataclass
class Stack:
    llm: FakeOpenAI
    client: CoordinatorClient
    db: Path
    optimizer_port: int
    restart_optimizer: object
    stop_optimizer: object


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    llm = FakeOpenAI(default=numbered).start()
    optimizer_settings = OptimizerSettings(
        port=0,
        llm_base_url=llm.base_url,
        llm_model="fake-model",
        probe_endpoint=False,
        max_retries=4,
        timeout_seconds=2,
        backoff_initial_seconds=0.01,
        backoff_max_seconds=0.05,
        retry_after_max_seconds=5,
    )
    holder: dict[str, object] = {}

    async def start_optimizer(port: int = 0) -> int:
        server, backend = build_server(optimizer_settings.model_copy(update={"port": port}))
        await server.start()
        await server.set_ready()
        holder.update(server=server, backend=backend)
        return server.port

    async def stop_optimizer() -> None:
        await holder["server"].stop(0)  # type: ignore[attr-defined]
        await holder["backend"].close()  # type: ignore[attr-defined]

    optimizer_port = await start_optimizer()
    scorer_server, scorer_port = await start_scorer(FakeScorer())
    db = tmp_path / "searches.db"
    retry = RetryPolicy()  # the production defaults: 6 tries, 0.2 s doubling (a ~6 s window)
    scorer = GrpcScorer(f"127.0.0.1:{scorer_port}", chunk_size=4, deadline_seconds=10, retry=retry)
    proposer = GrpcProposer(f"127.0.0.1:{optimizer_port}", deadline_seconds=10, retry=retry)
    try:
        async with coordinator_in_process(db, scorer, proposer, lease_seconds=30) as c:
            async with CoordinatorClient(f"127.0.0.1:{c.port}", timeout=30) as client:
                yield Stack(llm, client, db, optimizer_port, start_optimizer, stop_optimizer)
    finally:
        await scorer_server.stop(0)
        if "server" in holder:
            await stop_optimizer()
        llm.stop()


def state(search: coordinator_pb2.Search) -> str:
    return coordinator_pb2.SearchState.Name(search.state).removeprefix("SEARCH_STATE_")


async def run(stack: Stack, iterations: int = 3) -> coordinator_pb2.Search:
    search = await stack.client.start(
        dataset="toy", pool="basic", iterations=iterations, templates_per_iteration=2
    )
    return await asyncio.wait_for(stack.client.wait(search.name), 60)


async def test_llm_errors_slowness_and_broken_replies_are_ridden_out(stack: Stack) -> None:
    stack.llm.replies = [
        Reply(status=500),
        Reply(status=429, retry_after=0.2),
        Reply(raw_body=b'{"choices": [ {"message": '),  # malformed JSON
        Reply(close_connection=True),
        Reply(status=503),
        Reply(content="1. a slow photo of a {}.", delay=1.0),  # slow, but inside the 2 s timeout
    ]
    done = await run(stack)
    assert state(done) == "SUCCEEDED", done.end_reason
    assert done.end_reason == "completed"
    origins = [t.origin for t in done.history]
    assert origins.count("pool") == POOL and origins.count("llm") >= 3  # every iteration added templates
    assert len(stack.llm.requests) >= 3 + 5  # the scripted faults were each met and retried


async def test_llm_down_for_good_fails_the_search_with_the_reason_and_keeps_the_pool(stack: Stack) -> None:
    stack.llm.replies = [Reply(status=500)] * 200
    done = await run(stack)
    assert state(done) == "FAILED"
    assert "UNAVAILABLE" in done.end_reason and "optimizer" in done.end_reason
    assert [t.origin for t in done.history] == ["pool"] * POOL  # scored before the fault, still there
    assert all(t.total == 100 for t in done.history)


async def test_optimizer_restarted_mid_search(stack: Stack) -> None:
    stack.llm.replies = [Reply(content="1. a photo of a {}, before.", delay=0.5)]
    search = await stack.client.start(dataset="toy", pool="basic", iterations=3, templates_per_iteration=1)
    deadline = time.monotonic() + 30
    while not stack.llm.requests:  # the first proposal is in flight (the LLM holds it 0.5 s)
        assert time.monotonic() < deadline, "the search never asked the LLM"
        await asyncio.sleep(0.01)
    await stack.stop_optimizer()  # type: ignore[operator]
    await asyncio.sleep(0.5)  # the coordinator meets UNAVAILABLE and backs off
    await stack.restart_optimizer(stack.optimizer_port)  # type: ignore[operator]
    done = await asyncio.wait_for(stack.client.wait(search.name), 60)
    assert state(done) == "SUCCEEDED", done.end_reason
    assert [t.origin for t in done.history][:POOL] == ["pool"] * POOL
    assert sum(t.origin == "llm" for t in done.history) == 3  # one per iteration, none lost


async def test_store_locked_for_seconds_then_released(stack: Stack) -> None:
    stack.llm.default = lambda body: numbered(body)
    search = await stack.client.start(dataset="toy", pool="basic", iterations=4, templates_per_iteration=1)
    locked = threading.Event()

    def hold_lock() -> None:
        other = sqlite3.connect(stack.db, timeout=10)
        other.execute("BEGIN EXCLUSIVE")
        locked.set()
        time.sleep(3)
        other.rollback()
        other.close()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    locked.wait(5)
    t0 = time.monotonic()
    done = await asyncio.wait_for(stack.client.wait(search.name), 60)
    holder.join()
    assert state(done) == "SUCCEEDED", done.end_reason
    assert time.monotonic() - t0 >= 1.0  # it did wait for the lock
    assert [t.origin for t in done.history][:POOL] == ["pool"] * POOL
    assert sum(t.origin == "llm" for t in done.history) == 4
    assert [i.iteration for i in done.iterations] == [0, 1, 2, 3, 4]


async def test_search_seeded_by_the_llm_runs_through_the_real_optimizer(stack: Stack) -> None:
    """`llm_starters`: the seeding call carries no history, and the real optimizer answers it."""
    search = await stack.client.start(dataset="toy", llm_starters=2, iterations=2, templates_per_iteration=2)
    done = await asyncio.wait_for(stack.client.wait(search.name), 60)
    assert state(done) == "SUCCEEDED", done.end_reason
    origins = [t.origin for t in done.history]
    assert origins[0] == "llm" and "pool" not in origins
    seeding = stack.llm.requests[0]["messages"][-1]["content"]
    assert "diverse templates" in seeding

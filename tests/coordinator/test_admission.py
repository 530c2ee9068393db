"""Admission control: searches past the running cap wait PENDING, oldest first; past the bound on
waiting searches StartSearch is RESOURCE_EXHAUSTED with a retry delay, and nothing is started.

A real coordinator (store, runner, servicer) in process; the scorer is the fake, gated per search
so a test decides when each search may go on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from promptclimb.api.v1 import coordinator_pb2 as pb
from promptclimb.client import CoordinatorClient
from promptclimb.common.errors import retry_delay_of
from services.coordinator.clients import GrpcProposer, GrpcScorer, RetryPolicy
from services.coordinator.runner import SearchRunner
from services.coordinator.search import SearchConfig
from services.coordinator.settings import CoordinatorSettings
from services.coordinator.store import PENDING, RUNNING, SUCCEEDED, SearchRecord, SearchStore
from tests.coordinator.fakes import FakeOptimizer, FakeScorer, start_optimizer, start_scorer
from tests.support.coordinator import InProcessCoordinator, coordinator_in_process

RETRY = RetryPolicy(max_attempts=3, backoff_seconds=0.02, max_backoff_seconds=0.05)


class GatedScorer(FakeScorer):
    """The fake scorer; a call for templates naming a gated marker waits for that marker's gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gates: dict[str, asyncio.Event] = {}

    async def EvaluatePrompts(self, request, context):  # type: ignore[no-untyped-def]
        for marker, gate in list(self.gates.items()):
            if any(f"[{marker}]" in t for t in request.templates):
                await gate.wait()
        return await super().EvaluatePrompts(request, context)


@dataclass
class Admission:
    scorer: GatedScorer
    coordinator: InProcessCoordinator
    client: CoordinatorClient
    names: dict[str, str]  # marker -> search name

    async def start(self, marker: str, *, request_id: str | None = None) -> pb.Search:
        """A search whose seed template carries ``marker``: it can not finish before its gate opens."""
        self.scorer.gates.setdefault(marker, asyncio.Event())
        search = await self.client.start(
            request_id=request_id or f"admission-{marker}",
            dataset="toy",
            templates=[f"a photo of a {{}} [{marker}]."],
            iterations=1,
            templates_per_iteration=1,
        )
        self.names[marker] = search.name
        return search

    def record(self, marker: str) -> SearchRecord:
        record = self.coordinator.store.get(self.names[marker].removeprefix("searches/"))
        assert record is not None
        return record

    def states(self) -> dict[str, str]:
        return {m: self.record(m).state for m in self.names}

    async def wait_state(self, marker: str, state: str, within: float = 30) -> None:
        deadline = time.monotonic() + within
        while (seen := self.record(marker).state) != state:
            assert time.monotonic() < deadline, f"{marker} still {seen}, never {state}"
            await asyncio.sleep(0.02)


async def admission(tmp_path: Path, *, running: int, pending: int) -> AsyncIterator[Admission]:
    scorer = GatedScorer()
    scorer_server, scorer_port = await start_scorer(scorer)
    optimizer_server, optimizer_port = await start_optimizer(FakeOptimizer())
    grpc_scorer = GrpcScorer(f"127.0.0.1:{scorer_port}", deadline_seconds=60, retry=RETRY)
    proposer = GrpcProposer(f"127.0.0.1:{optimizer_port}", deadline_seconds=10, retry=RETRY)
    settings = CoordinatorSettings(port=0, max_running_searches=running, max_pending_searches=pending)
    try:
        # A 30 s lease: the lease loop claims every 10 s, so what starts a search here is StartSearch
        # or a slot freed, never a periodic pass that would hide an order a slot gave away.
        async with (
            coordinator_in_process(
                tmp_path / "searches.db", grpc_scorer, proposer, lease_seconds=30, settings=settings
            ) as c,
            CoordinatorClient(f"127.0.0.1:{c.port}", timeout=10) as client,
        ):
            yield Admission(scorer, c, client, {})
    finally:
        for gate in scorer.gates.values():
            gate.set()
        await scorer_server.stop(0)
        await optimizer_server.stop(0)


@pytest.fixture
async def one_slot(tmp_path: Path) -> AsyncIterator[Admission]:
    """One search runs at a time; up to 2 wait."""
    async for a in admission(tmp_path, running=1, pending=2):
        yield a


@pytest.fixture
async def one_slot_long_queue(tmp_path: Path) -> AsyncIterator[Admission]:
    """One search runs at a time; up to 20 wait."""
    async for a in admission(tmp_path, running=1, pending=20):
        yield a


async def test_searches_past_the_running_cap_wait_pending_and_start_oldest_first(
    one_slot_long_queue: Admission,
) -> None:
    a = one_slot_long_queue
    await a.start("s0")
    await a.wait_state("s0", RUNNING)
    for m in ("s1", "s2", "s3"):
        await a.start(m)
    # One slot: the first runs, the others wait.
    assert a.states() == {"s0": RUNNING, "s1": PENDING, "s2": PENDING, "s3": PENDING}

    order = ["s0"]
    for step in range(4):
        running = order[-1]
        a.scorer.gates[running].set()
        # A newer search started the moment a slot frees must not take it from an older one.
        await a.start(f"late{step}")
        await a.wait_state(running, SUCCEEDED)
        deadline = time.monotonic() + 30
        while not (now := [m for m, s in a.states().items() if s == RUNNING]):
            assert time.monotonic() < deadline, "no search took the free slot"
            await asyncio.sleep(0.02)
        assert len(now) == 1, now  # never two at once
        order.extend(now)
    assert order == ["s0", "s1", "s2", "s3", "late0"]
    for gate in a.scorer.gates.values():
        gate.set()
    for m in a.names:
        await a.wait_state(m, SUCCEEDED)
    by_start = sorted(a.names, key=lambda m: a.record(m).start_time or 0.0)
    by_create = sorted(a.names, key=lambda m: a.record(m).create_time)
    assert by_start == by_create


async def test_a_search_waiting_for_a_peer_s_slot_starts_before_a_newer_one(tmp_path: Path) -> None:
    """Fleet-wide order: a search a full peer accepted starts before one StartSearch takes here later."""
    scorer = GatedScorer()
    scorer.gates = {"peer": asyncio.Event(), "newer": asyncio.Event()}
    scorer_server, scorer_port = await start_scorer(scorer)
    optimizer_server, optimizer_port = await start_optimizer(FakeOptimizer())
    store = SearchStore(str(tmp_path / "searches.db"))
    peer = SearchStore(store.url)  # another replica's API on the same store
    runner = SearchRunner(
        store,
        GrpcScorer(f"127.0.0.1:{scorer_port}", deadline_seconds=60, retry=RETRY),
        GrpcProposer(f"127.0.0.1:{optimizer_port}", deadline_seconds=10, retry=RETRY),
        lease_seconds=30,
        max_running=1,
    )
    try:
        # Accepted by a peer's API while that peer was full; this replica's lease loop is not
        # started yet, so what claims here is StartSearch alone.
        older, _ = peer.create(search_config("peer"), "peer-1")
        newer, _ = await runner.submit(search_config("newer"), "here-1")
        assert set(runner.tasks) == {older.id}  # the free slot went to the older search
        assert (store.get(newer.id) or newer).state == PENDING
        scorer.gates["peer"].set()
        await runner.tasks[older.id]
        await runner.start()  # the lease loop claims the newer one now the slot is free
        scorer.gates["newer"].set()
        deadline = time.monotonic() + 30
        while not all((store.get(sid) or older).state == SUCCEEDED for sid in (older.id, newer.id)):
            assert time.monotonic() < deadline, "the searches did not both succeed"
            await asyncio.sleep(0.02)
    finally:
        for gate in scorer.gates.values():
            gate.set()
        await runner.stop()
        await runner.scorer.close()  # type: ignore[attr-defined]
        await runner.proposer.close()  # type: ignore[attr-defined]
        await runner.store.close()
        peer.close()
        await scorer_server.stop(0)
        await optimizer_server.stop(0)


def search_config(marker: str) -> SearchConfig:
    return SearchConfig(dataset="toy", user_templates=(f"a photo of a {{}} [{marker}].",), iterations=1)


async def test_past_max_pending_start_search_is_resource_exhausted_and_starts_nothing(
    one_slot: Admission,
) -> None:
    a = one_slot
    await a.start("run")
    await a.wait_state("run", RUNNING)
    first = await a.start("wait1")
    await a.start("wait2")

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await a.start("over")
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "2 searches are already waiting" in (refused.value.details() or "")
    assert "max_pending_searches=2" in (refused.value.details() or "")
    assert retry_delay_of(refused.value) == pytest.approx(5.0)
    assert len(await a.client.list()) == 3  # the refused one was not recorded

    # A retried StartSearch of a search that exists is answered with it, full or not.
    again = await a.start("wait1")
    assert again.name == first.name

    # Once one of the waiting searches runs, there is room again.
    a.scorer.gates["run"].set()
    await a.wait_state("wait1", RUNNING)
    admitted = await a.start("over")
    assert admitted.state == pb.SEARCH_STATE_PENDING
    for gate in a.scorer.gates.values():
        gate.set()
    for m in ("run", "wait1", "wait2", "over"):
        await a.wait_state(m, SUCCEEDED)

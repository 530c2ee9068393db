"""A store call held for 5 s stalls only the search that made it, on SQLite and on PostgreSQL.

One search's first journal write (its seed scores) is held; meanwhile GetSearch of another
search, the health check and the lease renewal of that other (running) search must all go on.
Held two ways: the store method itself waits in its thread (SQLite and PostgreSQL), or a
PostgreSQL session holds an uncommitted row with the same unique key, so the search's INSERT
waits on a real database lock. (On SQLite a held write lock would block every writer, the lease
renewal included, by SQLite's design, so there the hold is in the method.)

Each check is made while the hold is still in force: before the store calls left the event loop,
the loop itself was held, nothing answered during the hold and these tests fail.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import create_engine, insert, text

from promptclimb.api.v1 import coordinator_pb2, coordinator_pb2_grpc
from services.coordinator.clients import GrpcProposer, GrpcScorer, RetryPolicy
from services.coordinator.search import Score
from services.coordinator.store import RUNNING, SUCCEEDED, SearchRecord, SearchStore, scored_templates
from tests.coordinator.fakes import FakeOptimizer, FakeScorer, start_optimizer, start_scorer
from tests.support.coordinator import InProcessCoordinator, coordinator_in_process

pytestmark = pytest.mark.timeout(120)

HOLD_SECONDS = 5.0
ANSWER_WITHIN = 1.0  # the deadline of every GetSearch and health check made during the hold
LEASE_SECONDS = 1.5  # renewed every 0.5 s
RETRY = RetryPolicy(max_attempts=3, backoff_seconds=0.02, max_backoff_seconds=0.05)
HELD, RUNS = "held", "runs"  # markers in the seed templates of the two searches


class GatedScorer(FakeScorer):
    """The fake scorer, but a call for templates with a gated marker waits for its gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gates = {HELD: asyncio.Event(), RUNS: asyncio.Event()}

    async def EvaluatePrompts(self, request, context):  # type: ignore[no-untyped-def]
        for marker, gate in self.gates.items():
            if any(marker in t for t in request.templates):
                await gate.wait()
        return await super().EvaluatePrompts(request, context)


@dataclass
class Hold:
    """One store call held: when it began and ended (set from whichever thread holds it)."""

    entered: threading.Event = field(default_factory=threading.Event)
    left: threading.Event = field(default_factory=threading.Event)
    entered_at: float = 0.0  # wall clock, to compare with lease expiries
    held_for: float = 0.0
    error: BaseException | None = None

    @contextmanager
    def held(self) -> Iterator[None]:
        """Mark the block's time as the hold."""
        self.entered_at, start = time.time(), time.monotonic()
        self.entered.set()
        try:
            yield
        finally:
            self.held_for = time.monotonic() - start
            self.left.set()


def hold_in_method(store: SearchStore, monkeypatch: pytest.MonkeyPatch) -> Hold:
    """The first ``add_scores`` of the held search waits HOLD_SECONDS in its thread, then runs."""
    hold, original = Hold(), store.add_scores

    def add_scores(search_id: str, split: str, scores: list[Score], *args: object) -> None:
        if any(HELD in s.template for s in scores) and not hold.entered.is_set():
            with hold.held():
                threading.Event().wait(HOLD_SECONDS)
        original(search_id, split, scores, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "add_scores", add_scores)
    return hold


def hold_by_row_lock(url: str, search_id: str, templates: list[str]) -> tuple[Hold, threading.Event]:
    """Another PostgreSQL session inserts the held search's seed scores and keeps them uncommitted.

    The search's own INSERT of those rows then waits on the unique key; once it has waited
    HOLD_SECONDS the session rolls back and the search's INSERT goes through. Returns the hold and
    an event set once the rows are in place.
    """
    hold, locked = Hold(), threading.Event()
    rows = [
        dict(
            search_id=search_id,
            split="train",
            template=t,
            accuracy=0.0,
            correct=0,
            total=1,
            restart=0,
            iteration=0,
            origin="lock",
        )
        for t in templates
    ]

    def session() -> None:
        engine = create_engine(url)
        try:
            with engine.connect() as c:
                transaction = c.begin()
                c.execute(insert(scored_templates), rows)
                locked.set()
                waiting = text("SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype='transactionid'")
                deadline = time.monotonic() + 30
                while not c.execute(waiting).scalar():
                    if time.monotonic() > deadline:
                        raise TimeoutError("the search's INSERT never waited on the lock")
                    time.sleep(0.01)
                with hold.held():
                    threading.Event().wait(HOLD_SECONDS)
                    transaction.rollback()
        except BaseException as err:
            hold.error = err
            locked.set()
            hold.left.set()
        finally:
            engine.dispose()

    threading.Thread(target=session, name="row-lock", daemon=True).start()
    return hold, locked


@dataclass
class Served:
    """A coordinator with the gated scorer, and stubs to reach it."""

    coordinator: InProcessCoordinator
    scorer: GatedScorer
    search: coordinator_pb2_grpc.CoordinatorServiceStub
    health: health_pb2_grpc.HealthStub

    async def start(self, marker: str) -> str:
        """Start a one-iteration search seeded from templates with ``marker``; its id."""
        spec = coordinator_pb2.SearchSpec(dataset="toy", iterations=1, templates_per_iteration=2)
        spec.initial_pool.templates.templates.extend(seeds(marker))
        reply = await self.search.StartSearch(coordinator_pb2.StartSearchRequest(spec=spec), timeout=10)
        return reply.search.name.removeprefix("searches/")

    async def record(self, search_id: str) -> SearchRecord:
        """The stored record, read in a thread of the test's own."""
        record = await asyncio.to_thread(self.coordinator.store.get, search_id, with_history=True)
        assert record is not None
        return record

    async def wait_for(
        self, search_id: str, done: Callable[[SearchRecord], bool], within: float = 30
    ) -> SearchRecord:
        """Poll the store until ``done(record)``."""
        deadline = time.monotonic() + within
        while not done(record := await self.record(search_id)):
            assert time.monotonic() < deadline, f"timed out; last seen {record.state} {record.phase}"
            await asyncio.sleep(0.05)
        return record


def seeds(marker: str) -> list[str]:
    return [f"a {marker} photo {i} of a {{}}." for i in range(3)]


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A SQLite file, or a fresh database on the session's PostgreSQL cluster."""
    if request.param == "sqlite":
        return str(tmp_path / "searches.db")
    return str(request.getfixturevalue("postgres_url"))


@asynccontextmanager
async def serve(url: str) -> AsyncIterator[Served]:
    """The coordinator on ``url`` as ``serve`` runs it, with the gated fake scorer."""
    scorer = GatedScorer()
    scorer_server, scorer_port = await start_scorer(scorer)
    optimizer_server, optimizer_port = await start_optimizer(FakeOptimizer())
    # One chunk per call, and a deadline that outlasts the gates.
    grpc_scorer = GrpcScorer(f"127.0.0.1:{scorer_port}", chunk_size=8, deadline_seconds=60, retry=RETRY)
    proposer = GrpcProposer(f"127.0.0.1:{optimizer_port}", deadline_seconds=10, retry=RETRY)
    try:
        async with coordinator_in_process(url, grpc_scorer, proposer, lease_seconds=LEASE_SECONDS) as c:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{c.port}") as channel:
                search_stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
                yield Served(c, scorer, search_stub, health_pb2_grpc.HealthStub(channel))
    finally:
        await scorer_server.stop(0)
        await optimizer_server.stop(0)


@pytest.fixture
async def served(store_url: str) -> AsyncIterator[Served]:
    async with serve(store_url) as s:
        yield s


@pytest.fixture
async def served_on_postgres(postgres_url: str) -> AsyncIterator[Served]:
    async with serve(postgres_url) as s:
        yield s


async def start_running_search(served: Served) -> str:
    """A search that runs (its scoring waits at the gate) under a live lease of this replica."""
    running = await served.start(RUNS)
    record = await served.wait_for(running, lambda r: r.state == RUNNING and r.lease_expires is not None)
    assert record.lease_owner == served.coordinator.runner.owner
    return running


async def assert_replica_answers_while_held(served: Served, hold: Hold, running: str) -> None:
    """GetSearch, health and the lease renewal of ``running`` go on for the whole hold."""
    deadline = time.monotonic() + 30
    while not hold.entered.is_set():
        assert time.monotonic() < deadline, "the store call was never held"
        await asyncio.sleep(0.01)

    answers = 0  # GetSearch and health both answered, while the call was still held
    expiries: list[float] = []  # the running search's lease expiry, as read during the hold
    while not hold.left.is_set():
        try:
            got = await served.search.GetSearch(
                coordinator_pb2.GetSearchRequest(name=f"searches/{running}"), timeout=ANSWER_WITHIN
            )
            health = await served.health.Check(health_pb2.HealthCheckRequest(), timeout=ANSWER_WITHIN)
        except grpc.aio.AioRpcError as err:
            pytest.fail(f"no answer within {ANSWER_WITHIN} s while a store call was held: {err}")
        record = await served.record(running)
        if hold.left.is_set():
            break  # answered after the hold ended: not evidence of anything
        assert got.search.state == coordinator_pb2.SEARCH_STATE_RUNNING
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        answers += 1
        assert record.lease_owner == served.coordinator.runner.owner
        assert record.lease_expires is not None and record.lease_expires > time.time()  # never lapsed
        if not expiries or record.lease_expires > expiries[-1]:
            expiries.append(record.lease_expires)
        await asyncio.sleep(0.1)

    assert hold.error is None, hold.error
    assert hold.held_for >= HOLD_SECONDS - 0.05  # the call really was held the whole time
    assert answers >= 10, f"only {answers} GetSearch and health checks answered during the hold"
    # Renewed all along: several times, and in the second half of the hold too.
    assert len(expiries) >= 4, expiries
    assert expiries[-1] >= hold.entered_at + HOLD_SECONDS / 2 + LEASE_SECONDS, (hold.entered_at, expiries)


async def assert_both_succeed(served: Served, held: str, running: str) -> None:
    """Once let go, both searches finish, the held one with its held seed scores recorded once."""
    served.scorer.gates[RUNS].set()
    for search_id, marker in ((held, HELD), (running, RUNS)):
        record = await served.wait_for(search_id, lambda r: r.done)
        assert record.state == SUCCEEDED, record.progress.end_reason
        templates = [t.template for t in record.history]
        assert set(seeds(marker)) <= set(templates) and len(templates) == len(set(templates))
        assert all(t.origin != "lock" for t in record.history)


async def test_a_held_store_call_stalls_only_its_search(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    hold = hold_in_method(served.coordinator.store, monkeypatch)
    running = await start_running_search(served)
    held = await served.start(HELD)
    served.scorer.gates[HELD].set()
    await assert_replica_answers_while_held(served, hold, running)
    await assert_both_succeed(served, held, running)


async def test_an_insert_waiting_on_a_postgres_row_lock_stalls_only_its_search(
    served_on_postgres: Served, postgres_url: str
) -> None:
    served = served_on_postgres
    running = await start_running_search(served)
    held = await served.start(HELD)
    hold, locked = hold_by_row_lock(postgres_url, held, seeds(HELD))
    deadline = time.monotonic() + 10
    while not locked.is_set():
        assert time.monotonic() < deadline, "the locking session never inserted its rows"
        await asyncio.sleep(0.01)
    assert hold.error is None, hold.error
    served.scorer.gates[HELD].set()  # now the held search scores its seeds and inserts them
    await assert_replica_answers_while_held(served, hold, running)
    await assert_both_succeed(served, held, running)

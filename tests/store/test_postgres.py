"""The coordinator's store and runner on a real PostgreSQL: searches, two replicas, kills, restarts.

The scorer and optimizer are the in-process fakes on loopback (real gRPC); the database is the
throwaway cluster of ``conftest.py``. Every search seeds from templates unique to it, so the fake
scorer's counters tell, per template, how often it was scored across all searches and replicas.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from promptclimb.api.v1 import coordinator_pb2, coordinator_pb2_grpc
from promptclimb.common.errors import retry_delay_of
from services.coordinator.clients import GrpcProposer, GrpcScorer, RetryPolicy
from services.coordinator.main import build_server as build_coordinator
from services.coordinator.runner import SearchRunner
from services.coordinator.search import SearchConfig
from services.coordinator.settings import CoordinatorSettings
from services.coordinator.store import RUNNING, SUCCEEDED, SearchRecord, SearchStore
from tests.coordinator.fakes import FakeOptimizer, FakeScorer, fake_accuracy, start_optimizer, start_scorer
from tests.store.conftest import PostgresCluster
from tests.support.processes import test_env

pytestmark = pytest.mark.timeout(90)

REPO = Path(__file__).resolve().parents[2]
RETRY = RetryPolicy(max_attempts=3, backoff_seconds=0.02, max_backoff_seconds=0.05)


@dataclass
class Fakes:
    """The fake scorer and optimizer servers every replica talks to."""

    scorer: FakeScorer
    optimizer: FakeOptimizer
    scorer_target: str
    optimizer_target: str
    closers: list[Callable[[], object]] = field(default_factory=list)


@pytest.fixture
async def fakes() -> AsyncIterator[Fakes]:
    scorer, optimizer = FakeScorer(delay=0.05), FakeOptimizer(delay=0.02)
    scorer_server, scorer_port = await start_scorer(scorer)
    optimizer_server, optimizer_port = await start_optimizer(optimizer)
    f = Fakes(scorer, optimizer, f"127.0.0.1:{scorer_port}", f"127.0.0.1:{optimizer_port}")
    try:
        yield f
    finally:
        for close in reversed(f.closers):
            result = close()
            if asyncio.iscoroutine(result):
                await result
        await scorer_server.stop(0)
        await optimizer_server.stop(0)


def replica(
    url: str, fakes: Fakes, owner: str, *, lease: float = 3.0, max_running: int = 8, store_retry: float = 30.0
) -> SearchRunner:
    """A coordinator replica (runner + its own engine) on ``url``; closed by the fixture."""
    store = SearchStore(url)
    scorer = GrpcScorer(fakes.scorer_target, chunk_size=2, deadline_seconds=5, retry=RETRY)
    proposer = GrpcProposer(fakes.optimizer_target, deadline_seconds=5, retry=RETRY)
    runner = SearchRunner(
        store,
        scorer,
        proposer,
        lease_seconds=lease,
        max_running=max_running,
        owner=owner,
        store_retry_seconds=store_retry,
    )
    fakes.closers += [store.close, scorer.close, proposer.close, runner.stop]
    return runner


@contextmanager
def logged(logger: str, message: str) -> Iterator[threading.Event]:
    """An event set once ``logger`` logs ``message`` (from any thread) inside the block."""
    seen = threading.Event()

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage() == message:
                seen.set()

    handler = Handler(logging.DEBUG)
    log = logging.getLogger(logger)
    log.addHandler(handler)
    try:
        yield seen
    finally:
        log.removeHandler(handler)


def config(tag: str, iterations: int = 3) -> SearchConfig:
    """A search seeded from three templates that no other search uses."""
    seeds = tuple(f"{tag} photo {i} of a {{}}." for i in range(3))
    return SearchConfig(dataset="toy", user_templates=seeds, iterations=iterations, templates_per_iteration=2)


async def wait_for(
    store: SearchStore, search_id: str, done: Callable[[SearchRecord], bool], within: float = 60
) -> SearchRecord:
    """Poll until ``done(record)``; reads that meet a stopped server are retried."""
    deadline = time.monotonic() + within
    while True:
        try:
            record = store.get(search_id, with_history=True)
        except Exception:
            record = None
        if record is not None and done(record):
            return record
        assert time.monotonic() < deadline, f"timed out; last seen {record and record.state}"
        await asyncio.sleep(0.05)


def assert_complete(
    record: SearchRecord, fakes: Fakes, iterations: int = 3, *, fault: SearchRecord | None = None
) -> None:
    """SUCCEEDED with the seeds plus two LLM templates per iteration, each scored exactly once.

    With a ``fault`` (the record just before it), a template recorded by then was scored once; one
    chunk (two templates) in flight at the fault, never recorded, may have been scored again.
    """
    assert record.state == SUCCEEDED, record.progress.end_reason
    templates = [t.template for t in record.history]
    assert len(templates) == len(set(templates)) == 3 + 2 * iterations
    assert [t.origin for t in record.history].count("llm") == 2 * iterations
    assert [i.iteration for i in record.progress.iterations] == list(range(iterations + 1))
    recorded = {t.template for t in fault.history} if fault else set(templates)
    for t in record.history:
        assert t.accuracy == pytest.approx(fake_accuracy(t.template))
        assert fakes.scorer.scored[("train", t.template)] == 1 or t.template not in recorded, t.template
    assert sum(fakes.scorer.scored[("train", t)] - 1 for t in templates) <= 2
    best = max(record.history, key=lambda t: t.accuracy)
    assert record.progress.result is not None
    assert record.progress.result.best.template == best.template


async def test_a_search_runs_to_succeeded_on_postgres(postgres_url: str, fakes: Fakes) -> None:
    runner = replica(postgres_url, fakes, "replica-a")
    await runner.start()
    record, created = await runner.submit(config("solo"), request_id="solo-1")
    again, created_again = await runner.submit(config("other"), request_id="solo-1")
    assert created and not created_again and again.id == record.id
    done = await wait_for(runner.store.sync, record.id, lambda r: r.done)
    assert_complete(done, fakes)
    assert done.lease_owner is None  # released at the end
    assert fakes.scorer.scored[("test", done.progress.result.best.template)] == 1  # type: ignore[union-attr]


def test_concurrent_lease_takers_get_one_winner_per_search(postgres_url: str) -> None:
    """Eight replicas race (threads, own engines) for each search: exactly one wins each race."""
    stores = [SearchStore(postgres_url) for _ in range(8)]
    try:
        ids = [stores[0].create(config(f"race{i}"), None)[0].id for i in range(5)]
        for search_id in ids:
            barrier = threading.Barrier(len(stores))
            wins: list[str] = []

            def take(
                store: SearchStore,
                owner: str,
                search_id: str = search_id,
                barrier: threading.Barrier = barrier,
                wins: list[str] = wins,
            ) -> None:
                barrier.wait()
                if store.try_acquire(search_id, owner, 30):
                    wins.append(owner)

            threads = [threading.Thread(target=take, args=(s, f"r{i}")) for i, s in enumerate(stores)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert len(wins) == 1
            assert stores[0].get(search_id).lease_owner == wins[0]  # type: ignore[union-attr]
    finally:
        for s in stores:
            s.close()


async def test_two_replicas_share_searches_and_never_run_one_twice(postgres_url: str, fakes: Fakes) -> None:
    a = replica(postgres_url, fakes, "replica-a", max_running=2)
    b = replica(postgres_url, fakes, "replica-b", max_running=2)
    ids = [a.store.sync.create(config(f"shared{i}"), None)[0].id for i in range(4)]
    await a.start()
    await b.start()
    owners: dict[str, set[str]] = {sid: set() for sid in ids}
    deadline = time.monotonic() + 60
    while True:
        records = [a.store.sync.get(sid) for sid in ids]
        for r in records:
            assert r is not None
            if r.lease_owner:
                owners[r.id].add(r.lease_owner)
        assert len(a.tasks) <= 2 and len(b.tasks) <= 2
        if all(r is not None and r.done for r in records):
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    for sid in ids:
        assert_complete(b.store.sync.get(sid, with_history=True), fakes)  # type: ignore[arg-type]
        assert len(owners[sid]) == 1, owners[sid]  # one replica ran it, start to end
    # Each replica took its share (two slots each, four searches).
    assert sorted(next(iter(o)) for o in owners.values()) == ["replica-a"] * 2 + ["replica-b"] * 2


async def test_killed_replica_s_search_is_taken_over_after_the_lease_with_nothing_lost(
    postgres_url: str, fakes: Fakes
) -> None:
    lease = 2.0
    store = SearchStore(postgres_url)
    fakes.closers.append(store.close)
    iterations = 8
    search = store.create(config("killed", iterations=iterations), None)[0]
    env = test_env()
    args = [postgres_url, fakes.scorer_target, fakes.optimizer_target, "replica-a", str(lease)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.store.replica",
        *args,
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        mid = await wait_for(store, search.id, lambda r: r.lease_owner == "replica-a" and r.iteration >= 3)
        os.kill(proc.pid, signal.SIGKILL)  # no lease released, no state written: a crash
        await asyncio.wait_for(proc.wait(), 10)
        killed_at = time.monotonic()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    before = store.get(search.id, with_history=True)
    assert before is not None and before.state == RUNNING and before.lease_owner == "replica-a"
    replies_before = store.proposals(search.id)
    llm_calls_at_kill = len(fakes.optimizer.requests)

    b = replica(postgres_url, fakes, "replica-b", lease=lease)
    await b.start()
    taken = await wait_for(store, search.id, lambda r: r.lease_owner == "replica-b" or r.done)
    assert time.monotonic() - killed_at >= lease * 0.5  # it waited for the dead replica's lease
    assert taken.lease_owner == "replica-b"
    done = await wait_for(store, search.id, lambda r: r.done)

    assert mid.iteration >= 3
    assert_complete(done, fakes, iterations, fault=before)
    # Everything scored before the kill is still there, with the same numbers, scored once.
    after = {t.template: t for t in done.history}
    for t in before.history:
        assert after[t.template] == t
    # No recorded LLM reply was asked again: B asked only for the iterations A had not recorded.
    assert store.proposals(search.id).items() >= replies_before.items()
    assert len(fakes.optimizer.requests) - llm_calls_at_kill <= iterations - len(replies_before)


async def test_postgres_restarted_mid_search_the_search_recovers(
    postgres_url: str, postgres_cluster: PostgresCluster, fakes: Fakes
) -> None:
    runner = replica(postgres_url, fakes, "replica-a", lease=5.0)
    await runner.start()
    iterations = 8
    record, _ = await runner.submit(config("restarted", iterations=iterations), None)
    before = await wait_for(runner.store.sync, record.id, lambda r: r.iteration >= 2)
    assert before.state == RUNNING
    # `pg_ctl stop -m fast` ends every session; the server stays down until the search has met
    # the outage (a store call of it failed and is being retried), not for a guessed time.
    with logged("services.coordinator.runner", "store unavailable; retrying") as met:
        await asyncio.to_thread(postgres_cluster.stop, "fast")
        assert await asyncio.to_thread(met.wait, 30), "the search never met the outage"
    await asyncio.to_thread(postgres_cluster.start)
    done = await wait_for(runner.store.sync, record.id, lambda r: r.done)
    assert_complete(done, fakes, iterations, fault=before)
    after = {t.template: t for t in done.history}
    for t in before.history:
        assert after[t.template] == t


async def test_outage_longer_than_the_retry_window_resumes_the_search_once_back(
    postgres_url: str, postgres_cluster: PostgresCluster, fakes: Fakes
) -> None:
    """The store gone for longer than the runner retries: the run gives up without an outcome (none
    can be written), and once the store is back the search resumes from its journal and SUCCEEDS."""
    runner = replica(postgres_url, fakes, "replica-a", lease=1.0, store_retry=0.3)
    await runner.start()
    iterations = 6
    record, _ = await runner.submit(config("long-outage", iterations=iterations), None)
    before = await wait_for(runner.store.sync, record.id, lambda r: r.iteration >= 2)
    await asyncio.to_thread(postgres_cluster.stop, "immediate")  # a crash, not a clean shutdown
    # Down until the run has spent its retry window and its try to record the end: its task is
    # gone. Back any sooner, the end (FAILED, "store unavailable") could still be written.
    deadline = time.monotonic() + 30
    while record.id in runner.tasks:
        assert time.monotonic() < deadline, "the run never gave up on the store"
        await asyncio.sleep(0.02)
    await asyncio.to_thread(postgres_cluster.start)
    done = await wait_for(runner.store.sync, record.id, lambda r: r.done)
    assert done.state == SUCCEEDED, done.progress.end_reason
    assert_complete(done, fakes, iterations, fault=before)
    after = {t.template: t for t in done.history}
    for t in before.history:
        assert after[t.template] == t


async def test_api_calls_during_a_store_outage_are_unavailable_then_work_again(
    postgres_url: str, postgres_cluster: PostgresCluster, fakes: Fakes
) -> None:
    """Clients see UNAVAILABLE with a retry delay while the database is down, not UNKNOWN."""
    runner = replica(postgres_url, fakes, "replica-api")
    await runner.start()
    record, _ = await runner.submit(config("api", iterations=1), None)
    await wait_for(runner.store.sync, record.id, lambda r: r.done)
    server = build_coordinator(CoordinatorSettings(port=0), runner)
    port = await server.start()
    name = f"searches/{record.id}"
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
            await asyncio.to_thread(postgres_cluster.stop)
            try:
                for call in (
                    stub.GetSearch(coordinator_pb2.GetSearchRequest(name=name)),
                    stub.ListSearches(coordinator_pb2.ListSearchesRequest()),
                ):
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        await call
                    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
                    assert retry_delay_of(caught.value) == pytest.approx(1.0)
            finally:
                await asyncio.to_thread(postgres_cluster.start)
            got = await stub.GetSearch(coordinator_pb2.GetSearchRequest(name=name))
            assert got.search.state == coordinator_pb2.SEARCH_STATE_SUCCEEDED
    finally:
        await server.stop(0)

"""Leases go by the database's clock, not a replica's.

On PostgreSQL the replicas' clocks are skewed by injection (``SearchStore(clock=...)``, a minute
ahead and a minute behind) while the server's clock runs true: no replica takes a live lease, and a
lease a skewed replica set ends when the database's clock says, so a dead replica keeps nothing.
On SQLite (no server: the one host's clock is the database's) the clock is injected outright, so
expiry is tested without waiting on real time.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from services.coordinator.clients import GrpcProposer, GrpcScorer
from services.coordinator.runner import SearchRunner
from services.coordinator.search import SearchConfig, SearchState
from services.coordinator.store import SearchStore
from tests.store.test_postgres import RETRY, Fakes, assert_complete, config, fakes, replica, wait_for  # noqa: F401
from tests.support.clock import ManualClock

pytestmark = pytest.mark.timeout(90)

SKEW = 60.0


@pytest.fixture
def skewed(postgres_url: str):  # type: ignore[no-untyped-def]
    """Three replicas' stores on one PostgreSQL database: true, a minute ahead, a minute behind."""
    stores = {
        "true": SearchStore(postgres_url),
        "ahead": SearchStore(postgres_url, clock=lambda: time.time() + SKEW),
        "behind": SearchStore(postgres_url, clock=lambda: time.time() - SKEW),
    }
    yield stores
    for s in stores.values():
        s.close()


def test_a_replica_a_minute_off_does_not_take_a_live_lease(skewed: dict[str, SearchStore]) -> None:
    true = skewed["true"]
    live = true.create(SearchConfig(dataset="d"), None)[0]
    assert true.try_acquire(live.id, "true", 30)
    for name in ("ahead", "behind"):
        assert live.id not in skewed[name].claimable(), name
        assert not skewed[name].try_acquire(live.id, name, 30), name
    record = true.get(live.id)
    assert record is not None and record.lease_owner == "true"


@pytest.mark.parametrize("name", ["ahead", "behind"])
def test_a_lease_set_by_a_replica_a_minute_off_lasts_its_length_on_the_database_s_clock(
    skewed: dict[str, SearchStore], name: str
) -> None:
    true, off, lease = skewed["true"], skewed[name], 1.0
    search = true.create(SearchConfig(dataset="d"), None)[0]
    before = true.now()
    assert off.try_acquire(search.id, name, lease)
    assert off.renew(name, [search.id], lease) == {search.id: False}
    after = true.now()
    record = true.get(search.id)
    assert record is not None and record.lease_expires is not None
    # Neither a minute longer (a dead replica keeping it) nor a minute shorter (taken while live).
    assert before + lease <= record.lease_expires <= after + lease
    assert not true.try_acquire(search.id, "true", 30)  # still live
    # The skewed replica dies (renews no more): the lease is free once the database's clock passes
    # its end, not a minute later.
    deadline = time.monotonic() + 15
    while not true.try_acquire(search.id, "true", 30):
        assert time.monotonic() < deadline, "the dead replica's lease outlived its length"
        time.sleep(0.05)
    assert true.now() >= record.lease_expires


def test_sqlite_leases_expire_by_the_injected_clock(tmp_path: Path) -> None:
    clock = ManualClock()
    store = SearchStore(str(tmp_path / "s.db"), clock=clock)
    other = SearchStore(str(tmp_path / "s.db"), clock=clock)  # a second replica on the same host
    search = store.create(SearchConfig(dataset="d"), None)[0]
    assert store.try_acquire(search.id, "replica-1", lease_seconds=60)
    clock.advance(59.9)
    assert other.claimable() == [] and not other.try_acquire(search.id, "replica-2", lease_seconds=60)
    assert store.renew("replica-1", [search.id], lease_seconds=60) == {search.id: False}
    clock.advance(59.9)  # renewed: 59.9 s into the new lease, still live
    assert other.claimable() == [] and not other.try_acquire(search.id, "replica-2", lease_seconds=60)
    clock.advance(0.2)  # replica-1 renewed no more: the lease has ended
    assert other.claimable() == [search.id]
    assert other.try_acquire(search.id, "replica-2", lease_seconds=60)
    assert not store.save_progress(search.id, "replica-1", SearchState(search.config), 1.0)  # fenced off
    record = other.get(search.id)
    assert record is not None and record.lease_owner == "replica-2"
    assert record.lease_expires == pytest.approx(clock() + 60)
    store.close()
    other.close()


async def test_a_replica_a_minute_ahead_never_takes_over_a_running_search(
    postgres_url: str,
    fakes: Fakes,  # noqa: F811  # the fixture of test_postgres
) -> None:
    """Two coordinator replicas on PostgreSQL, one a minute ahead: the search stays with its owner."""
    honest = replica(postgres_url, fakes, "replica-true", lease=3.0)
    ahead_store = SearchStore(postgres_url, clock=lambda: time.time() + SKEW)
    scorer = GrpcScorer(fakes.scorer_target, chunk_size=2, deadline_seconds=5, retry=RETRY)
    proposer = GrpcProposer(fakes.optimizer_target, deadline_seconds=5, retry=RETRY)
    ahead = SearchRunner(ahead_store, scorer, proposer, lease_seconds=3.0, owner="replica-ahead")
    fakes.closers += [ahead_store.close, scorer.close, proposer.close, ahead.stop]
    await honest.start()
    iterations = 6
    record, _ = await honest.submit(config("skewed", iterations=iterations), None)
    await wait_for(honest.store.sync, record.id, lambda r: r.lease_owner == "replica-true")
    await ahead.start()  # claims, every second, what its clock would call expired
    owners: set[str] = set()
    deadline = time.monotonic() + 60
    while True:
        seen = honest.store.sync.get(record.id)
        assert seen is not None
        if seen.lease_owner:
            owners.add(seen.lease_owner)
        if seen.done:
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    assert owners == {"replica-true"}
    assert ahead.tasks == {}
    done = honest.store.sync.get(record.id, with_history=True)
    assert done is not None
    assert_complete(done, fakes, iterations)  # every template scored once: never run twice

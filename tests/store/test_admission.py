"""The bound on waiting searches is the store's, over every replica, and holds under a burst.

Two ``SearchStore`` objects on one database are two coordinator replicas; many threads create
searches through both at once, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from services.coordinator.search import SearchConfig
from services.coordinator.store import PENDING, SearchStore, TooManyPending

BOUND = 10


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "searches.db")
    return str(request.getfixturevalue("postgres_url"))


def config(i: int) -> SearchConfig:
    return SearchConfig(dataset="toy", user_templates=(f"a photo {i} of a {{}}.",))


def test_a_burst_through_two_replicas_admits_exactly_the_bound(store_url: str) -> None:
    replicas = [SearchStore(store_url), SearchStore(store_url)]
    try:

        def start(i: int) -> str:
            try:
                replicas[i % 2].create(config(i), f"burst-{i}", max_pending=BOUND)
            except TooManyPending as err:
                assert (err.pending, err.bound) == (BOUND, BOUND)
                return "refused"
            return "created"

        with ThreadPoolExecutor(16) as pool:
            outcomes = Counter(pool.map(start, range(60)))
        # Not one more (the count and the insert are one locked transaction), and no store error.
        assert outcomes == {"created": BOUND, "refused": 60 - BOUND}
        states = Counter(r.state for r in replicas[0].list_searches(state=None, limit=100, offset=0))
        assert states == {PENDING: BOUND}

        # A repeated request id is answered with its search, full or not; a new one is refused.
        created = [r for r in replicas[1].list_searches(state=None, limit=100, offset=0)]
        again, new = replicas[1].create(config(999), created[0].request_id, max_pending=BOUND)
        assert (again.id, new) == (created[0].id, False)
        with pytest.raises(TooManyPending):
            replicas[0].create(config(1000), "one-more", max_pending=BOUND)
        # A search that leaves PENDING makes room (on either replica).
        assert replicas[0].try_acquire(created[0].id, "replica-a", 30)
        assert replicas[0].mark_running(created[0].id, "replica-a")
        _, made = replicas[1].create(config(1000), "one-more", max_pending=BOUND)
        assert made
    finally:
        for r in replicas:
            r.close()

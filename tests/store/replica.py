"""A coordinator replica in a process of its own, so a test can SIGKILL it mid-search.

``python -m tests.store.replica STORE_URL SCORER OPTIMIZER OWNER LEASE_SECONDS``: a SearchRunner that
claims unfinished searches from the store until it is killed; prints ``ready`` once running.
"""

from __future__ import annotations

import asyncio
import sys

from services.coordinator.clients import GrpcProposer, GrpcScorer, RetryPolicy
from services.coordinator.runner import SearchRunner
from services.coordinator.store import SearchStore


async def serve(url: str, scorer_target: str, optimizer_target: str, owner: str, lease: float) -> None:
    """Run the replica until the process dies."""
    retry = RetryPolicy(max_attempts=3, backoff_seconds=0.02, max_backoff_seconds=0.05)
    runner = SearchRunner(
        SearchStore(url),
        GrpcScorer(scorer_target, chunk_size=2, deadline_seconds=5, retry=retry),
        GrpcProposer(optimizer_target, deadline_seconds=5, retry=retry),
        lease_seconds=lease,
        owner=owner,
    )
    await runner.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    url, scorer_target, optimizer_target, owner, lease = sys.argv[1:6]
    asyncio.run(serve(url, scorer_target, optimizer_target, owner, float(lease)))

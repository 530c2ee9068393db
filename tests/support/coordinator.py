"""A real coordinator (store, runner, gRPC server) served in-process, for tests.

Callers build the upstream clients (retry policy, chunking, TLS differ per test); this starts the
rest in ``serve``'s order (server, runner, ready) and stops it all, clients included, on exit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from services.coordinator.async_store import AsyncSearchStore
from services.coordinator.clients import GrpcProposer, GrpcScorer
from services.coordinator.main import build_server
from services.coordinator.runner import SearchRunner
from services.coordinator.settings import CoordinatorSettings
from services.coordinator.store import SearchStore


@dataclass
class InProcessCoordinator:
    """What a test touches of a served coordinator."""

    runner: SearchRunner
    store: SearchStore
    port: int


@asynccontextmanager
async def coordinator_in_process(
    db: Path | str,
    scorer: GrpcScorer,
    proposer: GrpcProposer,
    *,
    lease_seconds: float,
    settings: CoordinatorSettings | None = None,
) -> AsyncIterator[InProcessCoordinator]:
    """A coordinator on a free port over ``db`` (SQLite file or URL), reaching ``scorer`` and ``proposer``."""
    settings = settings or CoordinatorSettings(port=0)
    store = SearchStore(str(db))
    async_store = AsyncSearchStore(store)
    runner = SearchRunner(
        async_store,
        scorer,
        proposer,
        lease_seconds=lease_seconds,
        max_running=settings.max_running_searches,
        max_pending=settings.max_pending_searches,
    )
    server = build_server(settings, runner)
    port = await server.start()
    try:
        await runner.start()
        await server.set_ready()
        yield InProcessCoordinator(runner, store, port)
    finally:
        await runner.stop()
        await server.stop(0)
        await scorer.close()
        await proposer.close()
        await async_store.close()

"""A coordinator served in-process against fake scorer/optimizer servers on loopback."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from promptclimb.client import CoordinatorClient
from services.coordinator.clients import GrpcProposer, GrpcScorer, RetryPolicy
from services.coordinator.main import build_server as build_coordinator
from services.coordinator.runner import SearchRunner
from services.coordinator.settings import CoordinatorSettings
from services.coordinator.store import SearchStore
from tests.coordinator.fakes import FakeOptimizer, FakeScorer, start_optimizer, start_scorer


@dataclass
class Harness:
    """Everything a test touches."""

    scorer: FakeScorer
    optimizer: FakeOptimizer
    runner: SearchRunner
    store: SearchStore
    client: CoordinatorClient
    port: int
    db: Path


@pytest.fixture
def fake_scorer() -> FakeScorer:
    return FakeScorer()


@pytest.fixture
def fake_optimizer() -> FakeOptimizer:
    return FakeOptimizer()


@pytest.fixture
async def harness(
    tmp_path: Path, fake_scorer: FakeScorer, fake_optimizer: FakeOptimizer
) -> AsyncIterator[Harness]:
    scorer_server, scorer_port = await start_scorer(fake_scorer)
    optimizer_server, optimizer_port = await start_optimizer(fake_optimizer)
    db = tmp_path / "searches.db"
    store = SearchStore(str(db))
    retry = RetryPolicy(max_attempts=3, backoff_seconds=0.02, max_backoff_seconds=0.05)
    scorer = GrpcScorer(f"127.0.0.1:{scorer_port}", chunk_size=4, deadline_seconds=5, retry=retry)
    proposer = GrpcProposer(f"127.0.0.1:{optimizer_port}", deadline_seconds=5, retry=retry)
    runner = SearchRunner(store, scorer, proposer, lease_seconds=3)
    server = build_coordinator(CoordinatorSettings(port=0), runner)
    port = await server.start()
    await runner.start()
    client = CoordinatorClient(f"127.0.0.1:{port}", timeout=10)
    try:
        yield Harness(fake_scorer, fake_optimizer, runner, store, client, port, db)
    finally:
        await client.close()
        await runner.stop()
        await server.stop(0)
        await scorer.close()
        await proposer.close()
        await scorer_server.stop(0)
        await optimizer_server.stop(0)
        store.close()

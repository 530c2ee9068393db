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
from services.coordinator.runner import SearchRunner
from services.coordinator.store import SearchStore
from tests.coordinator.fakes import FakeOptimizer, FakeScorer, start_optimizer, start_scorer
from tests.support.coordinator import coordinator_in_process


@dataclass
class Harness:
    """Everything a test touches."""

    scorer: FakeScorer
    optimizer: FakeOptimizer
    runner: SearchRunner
    store: SearchStore
    client: CoordinatorClient


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
    retry = RetryPolicy(max_attempts=3, backoff_seconds=0.02, max_backoff_seconds=0.05)
    scorer = GrpcScorer(f"127.0.0.1:{scorer_port}", chunk_size=4, deadline_seconds=5, retry=retry)
    proposer = GrpcProposer(f"127.0.0.1:{optimizer_port}", deadline_seconds=5, retry=retry)
    try:
        async with coordinator_in_process(tmp_path / "searches.db", scorer, proposer, lease_seconds=3) as c:
            async with CoordinatorClient(f"127.0.0.1:{c.port}", timeout=10) as client:
                yield Harness(fake_scorer, fake_optimizer, c.runner, c.store, client)
    finally:
        await scorer_server.stop(0)
        await optimizer_server.stop(0)

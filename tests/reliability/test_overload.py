"""Overload: a scorer with a tiny queue refuses work; the coordinator backs off and finishes.

Also: the scorer's text-embedding cache never holds more than its setting, however many
distinct templates it sees (the memory a long-running scorer could otherwise grow without end).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from promptclimb.api.v1 import coordinator_pb2, scorer_pb2, scorer_pb2_grpc
from promptclimb.client import CoordinatorClient
from promptclimb.common.channels import open_channel
from promptclimb.common.errors import retry_delay_of
from promptclimb.common.server import ServiceServer
from promptclimb.testing.tiny_clip import make_image_folder, make_tiny_model_dir
from services.coordinator import metrics as coordinator_metrics
from services.coordinator.clients import GrpcProposer, GrpcScorer, RetryPolicy
from services.scorer.datasets import parse_dataset_spec
from services.scorer.engine import ScoringEngine
from services.scorer.servicer import SERVICE_NAME, register
from services.scorer.settings import ScorerSettings
from tests.coordinator.fakes import FakeOptimizer, start_optimizer
from tests.support.coordinator import coordinator_in_process


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("overload")
    return make_tiny_model_dir(root / "model"), make_image_folder(
        root / "images", per_split={"train": 2, "test": 2}
    )


async def start_scorer(tiny: tuple[Path, Path], **overrides: object) -> tuple[ScoringEngine, ServiceServer]:
    model, images = tiny
    settings = ScorerSettings(model=f"local-dir:{model}", **overrides)  # type: ignore[arg-type]
    engine = ScoringEngine(settings)
    server = ServiceServer("scorer", settings, [SERVICE_NAME], lambda s: register(s, engine))
    await server.start()
    await asyncio.to_thread(engine.load_model)
    await asyncio.to_thread(engine.register, parse_dataset_spec(f"toy={images}"))
    await server.set_ready()
    return engine, server


@pytest.fixture
async def busy_scorer(tiny: tuple[Path, Path]) -> AsyncIterator[int]:
    """A scorer that holds each batch 200 ms and queues at most 4 templates."""
    engine, server = await start_scorer(tiny, max_queue_templates=4, batch_wait_ms=200, batch_wait_alone=True)
    try:
        yield server.port
    finally:
        await engine.close()
        await server.stop(0)


async def test_full_queue_rejects_with_retry_info(busy_scorer: int) -> None:
    async with open_channel(f"127.0.0.1:{busy_scorer}") as channel:
        stub = scorer_pb2_grpc.ScorerServiceStub(channel)

        async def one(i: int) -> grpc.StatusCode | float:
            request = scorer_pb2.EvaluatePromptsRequest(
                dataset="toy", split="train", templates=[f"a {{}} {i}", f"the {{}} {i}"]
            )
            try:
                await stub.EvaluatePrompts(request, timeout=10)
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                delay = retry_delay_of(err)
                assert delay is not None and delay > 0
                return delay
            return grpc.StatusCode.OK

        results = await asyncio.gather(*(one(i) for i in range(10)))
    assert results.count(grpc.StatusCode.OK) >= 2  # the queue holds 4 templates = 2 calls
    assert sum(isinstance(r, float) for r in results) >= 5


async def test_coordinator_backs_off_and_the_search_succeeds(busy_scorer: int, tmp_path: Path) -> None:
    optimizer_server, optimizer_port = await start_optimizer(FakeOptimizer())
    retry = RetryPolicy(max_attempts=30, backoff_seconds=0.05, max_backoff_seconds=0.5)
    # Chunks of 2, four at once: 8 templates in flight against a queue of 4 — rejections guaranteed.
    scorer = GrpcScorer(f"127.0.0.1:{busy_scorer}", chunk_size=2, max_concurrent_chunks=4, retry=retry)
    proposer = GrpcProposer(f"127.0.0.1:{optimizer_port}", retry=retry)
    retries = coordinator_metrics.SCORER_RETRIES.labels("RESOURCE_EXHAUSTED")
    before = retries._value.get()
    try:
        async with (
            coordinator_in_process(tmp_path / "s.db", scorer, proposer, lease_seconds=30) as c,
            CoordinatorClient(f"127.0.0.1:{c.port}") as client,
        ):
            search = await client.start(dataset="toy", pool="basic", iterations=2, templates_per_iteration=2)
            done = await asyncio.wait_for(client.wait(search.name), 120)
    finally:
        await optimizer_server.stop(0)
    assert coordinator_pb2.SearchState.Name(done.state) == "SEARCH_STATE_SUCCEEDED", done.end_reason
    assert retries._value.get() > before  # it was refused, waited, and tried again
    assert all(t.total == 10 for t in done.history)  # every template scored on the 10 train images


async def test_text_cache_is_bounded_by_its_setting(tiny: tuple[Path, Path]) -> None:
    engine, server = await start_scorer(tiny, text_cache_size=40, batch_wait_ms=0)
    try:
        for round_ in range(10):
            templates = [f"a photo {round_}-{i} of a {{}}" for i in range(16)]
            await engine.evaluate("toy", "train", templates, False)
        assert len(engine.cache) <= 40
    finally:
        await engine.close()
        await server.stop(0)

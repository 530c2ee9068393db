"""The scorer service in process: readiness, a full queue, runtime registration."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from promptclimb.api.v1 import scorer_pb2, scorer_pb2_grpc
from promptclimb.client import ScorerClient
from promptclimb.common.errors import retry_delay_of
from promptclimb.common.server import ServiceServer
from services.scorer.datasets import parse_dataset_spec
from services.scorer.engine import ScoringEngine
from services.scorer.main import build_server
from services.scorer.servicer import SERVICE_NAME
from services.scorer.settings import ScorerSettings
from tests.scorer.conftest import TEMPLATES


class Running:
    def __init__(self, engine: ScoringEngine, server: ServiceServer, channel: grpc.aio.Channel) -> None:
        self.engine, self.server = engine, server
        self.stub = scorer_pb2_grpc.ScorerServiceStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)

    async def status(self, service: str = "") -> int:
        return (await self.health.Check(health_pb2.HealthCheckRequest(service=service))).status


@pytest.fixture
async def running(tiny_model: Path, tmp_path: Path) -> AsyncIterator[Running]:
    settings = ScorerSettings(
        model=f"local-dir:{tiny_model}",
        cache_dir=tmp_path,
        batch_wait_ms=300,
        batch_wait_alone=True,  # hold the first request so the queue fills
        max_queue_templates=5,
        max_templates_per_request=8,
    )
    engine = ScoringEngine(settings)
    server = build_server(settings, engine)
    port = await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield Running(engine, server, channel)
    await engine.close()
    await server.stop(0)


def request(templates: list[str], dataset: str = "demo") -> scorer_pb2.EvaluatePromptsRequest:
    return scorer_pb2.EvaluatePromptsRequest(dataset=dataset, split="test", templates=templates)


async def until_ready(stub: scorer_pb2_grpc.ScorerServiceStub, dataset: str) -> scorer_pb2.Dataset:
    """Poll ListDatasets (with a deadline) until ``dataset``'s features are computed."""
    deadline = time.monotonic() + 60
    while True:
        listed = {d.id: d for d in (await stub.ListDatasets(scorer_pb2.ListDatasetsRequest())).datasets}
        if listed[dataset].ready:
            return listed[dataset]
        assert not listed[dataset].error, listed[dataset].error
        assert time.monotonic() < deadline, f"{dataset} never became ready"
        await asyncio.sleep(0.02)


async def test_unavailable_until_model_and_features_are_ready(running: Running, images: Path) -> None:
    assert await running.status("") == health_pb2.HealthCheckResponse.NOT_SERVING
    assert await running.status(SERVICE_NAME) == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(grpc.aio.AioRpcError) as call:
        await running.stub.EvaluatePrompts(request(["a {}"]))
    assert call.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.aio.AioRpcError) as call:
        await running.stub.GetModelInfo(scorer_pb2.GetModelInfoRequest())
    assert call.value.code() == grpc.StatusCode.UNAVAILABLE
    await asyncio.to_thread(running.engine.load_model)
    await asyncio.to_thread(running.engine.register, parse_dataset_spec(f"demo={images}"))
    await running.server.set_ready(True)
    assert await running.status(SERVICE_NAME) == health_pb2.HealthCheckResponse.SERVING
    assert (await running.stub.EvaluatePrompts(request(["a {}"]))).scores[0].total == 20


async def test_full_queue_is_resource_exhausted_with_retry_info(running: Running, images: Path) -> None:
    await asyncio.to_thread(running.engine.load_model)
    await asyncio.to_thread(running.engine.register, parse_dataset_spec(f"demo={images}"))
    running.engine.batcher.batch_wait = 2.0  # the first request waits long for company to batch with
    first = asyncio.ensure_future(running.stub.EvaluatePrompts(request(TEMPLATES[:4])))
    deadline = time.monotonic() + 30
    while running.engine.batcher.pending_templates < 4:  # queued: the queue holds 4 of its 5
        assert time.monotonic() < deadline, "the first request was never queued"
        await asyncio.sleep(0.01)
    with pytest.raises(grpc.aio.AioRpcError) as call:
        await running.stub.EvaluatePrompts(request(TEMPLATES[4:6]))
    assert call.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    delay = retry_delay_of(call.value)
    assert delay is not None and delay > 0
    assert [s.total for s in (await first).scores] == [20] * 4
    await asyncio.sleep(delay)
    assert (await running.stub.EvaluatePrompts(request(TEMPLATES[4:6]))).scores[1].total == 20


async def test_register_dataset_at_run_time(running: Running, images: Path, tmp_path: Path) -> None:
    await asyncio.to_thread(running.engine.load_model)
    registered = await running.stub.RegisterDataset(
        scorer_pb2.RegisterDatasetRequest(
            id="pics", image_folder=scorer_pb2.ImageFolderSource(path=str(images))
        )
    )
    assert len(registered.dataset.class_names) == 5  # known at once; features come in the background
    assert registered.dataset.images_total == 30
    assert (await until_ready(running.stub, "pics")).images_done == 30
    again = await running.stub.RegisterDataset(
        scorer_pb2.RegisterDatasetRequest(
            id="pics", image_folder=scorer_pb2.ImageFolderSource(path=str(images))
        )
    )
    assert again.dataset.id == "pics"  # idempotent for the same source

    arrays = tmp_path / "a.npz"
    rng = np.random.default_rng(0)
    np.savez(
        arrays,
        test_images=rng.integers(0, 255, (6, 28, 28), dtype=np.uint8),
        test_labels=np.array([0, 1, 2, 0, 1, 2]),
        class_names=np.array(["t-shirt", "trouser", "bag"]),
    )
    npz = await running.stub.RegisterDataset(
        scorer_pb2.RegisterDatasetRequest(id="fm", array=scorer_pb2.ArraySource(path=str(arrays)))
    )
    assert [s.num_images for s in npz.dataset.splits] == [6]
    await until_ready(running.stub, "fm")
    scored = await running.stub.EvaluatePrompts(request(["a photo of a {}."], dataset="fm"))
    assert scored.scores[0].total == 6

    with pytest.raises(grpc.aio.AioRpcError) as call:
        await running.stub.RegisterDataset(
            scorer_pb2.RegisterDatasetRequest(
                id="x", image_folder=scorer_pb2.ImageFolderSource(path="/no/such")
            )
        )
    assert call.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as call:
        await running.stub.RegisterDataset(
            scorer_pb2.RegisterDatasetRequest(id="pics", array=scorer_pb2.ArraySource(path=str(arrays)))
        )
    assert call.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.aio.AioRpcError) as call:
        await running.stub.RegisterDataset(scorer_pb2.RegisterDatasetRequest(id="y"))
    assert call.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    listed = await running.stub.ListDatasets(scorer_pb2.ListDatasetsRequest())
    assert [d.id for d in listed.datasets] == ["fm", "pics"]


async def test_register_roots_and_dataset_limit(tiny_model: Path, images: Path, tmp_path: Path) -> None:
    """Remote callers may only register data under the configured roots, and only so many sets."""
    settings = ScorerSettings(model=f"local-dir:{tiny_model}", register_roots=[images], max_datasets=1)
    engine = ScoringEngine(settings)
    server = build_server(settings, engine)
    port = await server.start()
    await asyncio.to_thread(engine.load_model)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = scorer_pb2_grpc.ScorerServiceStub(channel)

            def folder(id_: str, path: str) -> scorer_pb2.RegisterDatasetRequest:
                return scorer_pb2.RegisterDatasetRequest(
                    id=id_, image_folder=scorer_pb2.ImageFolderSource(path=path)
                )

            for outside in ("/", "/etc", f"{images}/..", str(tmp_path)):
                with pytest.raises(grpc.aio.AioRpcError) as call:
                    await stub.RegisterDataset(folder("escape", outside))
                assert call.value.code() == grpc.StatusCode.PERMISSION_DENIED, outside
            ok = await stub.RegisterDataset(folder("pics", str(images)))
            assert ok.dataset.id == "pics"
            with pytest.raises(grpc.aio.AioRpcError) as call:
                await stub.RegisterDataset(folder("pics2", str(images)))
            assert call.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            listed = await stub.ListDatasets(scorer_pb2.ListDatasetsRequest())
            assert [d.id for d in listed.datasets] == ["pics"]
    finally:
        await engine.close()
        await server.stop(0)


async def test_list_datasets_tells_computed_features_from_cached_ones(running: Running, images: Path) -> None:
    """A split's features are COMPUTED on first registration and read from the CACHE on a restart."""
    await asyncio.to_thread(running.engine.load_model)
    folder = scorer_pb2.RegisterDatasetRequest(
        id="pics", image_folder=scorer_pb2.ImageFolderSource(path=str(images))
    )
    await running.stub.RegisterDataset(folder)
    listed_first = await until_ready(running.stub, "pics")
    first = {s.name: s.features_source for s in listed_first.splits}
    assert first and set(first.values()) == {scorer_pb2.FEATURES_SOURCE_COMPUTED}

    # A second scorer process on the same cache folder: the same splits, now read from disk.
    restarted = ScoringEngine(running.engine.settings)
    server = build_server(restarted.settings, restarted)
    port = await server.start()
    try:
        await asyncio.to_thread(restarted.load_model)
        async with ScorerClient(f"127.0.0.1:{port}", timeout=60) as client:
            again = await client.register_dataset("pics", image_folder=str(images))
            assert {s.name for s in again.splits} == set(first)
            (listed_again,) = await client.list_datasets()
            assert {s.features_source for s in listed_again.splits} == {scorer_pb2.FEATURES_SOURCE_CACHE}
            # The same client scores through the restarted scorer.
            assert (await client.model_info()).embed_dim == restarted.model_info().embed_dim
            scored = await client.evaluate("pics", "test", ["a {}", "{}!"])
            assert [s.total for s in scored.scores] == [20, 20]
            ensemble = await client.evaluate_ensemble("pics", "test", ["a {}", "{}!"])
            assert ensemble.score.total == 20
    finally:
        await restarted.close()
        await server.stop(0)


async def test_a_scorer_still_loading_its_start_up_datasets_lists_none_as_unavailable(
    running: Running,
) -> None:
    # An empty list would read as "not registered": a coordinator would fail its searches
    # NOT_FOUND instead of retrying (bench/chaos.py caught 10 searches failing so after a restart).
    running.engine.starting = True
    with pytest.raises(grpc.aio.AioRpcError) as call:
        await running.stub.ListDatasets(scorer_pb2.ListDatasetsRequest())
    assert call.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "still loading" in (call.value.details() or "")
    running.engine.starting = False
    listed = await running.stub.ListDatasets(scorer_pb2.ListDatasetsRequest())
    assert list(listed.datasets) == []

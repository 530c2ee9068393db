"""RegisterDataset does not block: real scorer processes (tiny CLIP) and a set of 4,000 images.

The RPC returns before the features exist, ListDatasets shows the progress, scoring the set is
UNAVAILABLE with RetryInfo until it is ready, and a scorer SIGKILLed mid-way resumes from the
chunks it wrote: the restarted scorer encodes exactly the images no chunk holds, and its counts
equal an independent open_clip computation.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from prometheus_client.parser import text_string_to_metric_families

from promptclimb.api.v1 import scorer_pb2, scorer_pb2_grpc
from promptclimb.common.errors import resource_of, retry_delay_of
from promptclimb.testing.tiny_clip import make_image_folder
from services.scorer.engine import ScoringEngine
from services.scorer.main import build_server
from services.scorer.settings import ScorerSettings
from tests.scorer.conftest import TEMPLATES, paper_scores
from tests.support.processes import ServedProcess, serve

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PER_CLASS = 800  # 5 classes: 4,000 test images, several seconds of encoding on one CPU thread
TOTAL = 5 * PER_CLASS
CHUNK = 200  # images per feature-cache chunk
SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def many_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("many"), per_split={"test": PER_CLASS})


def metric(proc: ServedProcess, name: str) -> float:
    """A scorer's own sample ``name`` (summed over its label sets), from its /metrics."""
    assert proc.metrics_port is not None
    text = urllib.request.urlopen(f"http://127.0.0.1:{proc.metrics_port}/metrics", timeout=5).read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def listed(stub: scorer_pb2_grpc.ScorerServiceStub) -> dict[str, scorer_pb2.Dataset]:
    return {d.id: d for d in stub.ListDatasets(scorer_pb2.ListDatasetsRequest(), timeout=10).datasets}


def chunk_rows(cache: Path) -> int:
    """Images held by the chunk files of interrupted encodings under ``cache``."""
    rows = 0
    for f in (cache / "features").glob("*.partial/*.safetensors"):
        start, end = (int(x) for x in f.stem.split("-"))
        rows += end - start
    return rows


def scorer_flags(model: Path, cache: Path) -> tuple[str, ...]:
    return (
        *("--model", f"local-dir:{model}", "--cache-dir", str(cache)),
        *("--feature-chunk-images", str(CHUNK), "--image-batch-size", "50"),
    )


def stub_of(proc: ServedProcess, channels: list[grpc.Channel]) -> scorer_pb2_grpc.ScorerServiceStub:
    channels.append(grpc.insecure_channel(proc.target))
    return scorer_pb2_grpc.ScorerServiceStub(channels[-1])


@pytest.fixture
def channels() -> Iterator[list[grpc.Channel]]:
    opened: list[grpc.Channel] = []
    yield opened
    for c in opened:
        c.close()


def test_registration_returns_at_once_shows_progress_and_resumes_after_a_sigkill(
    tiny_model: Path, many_images: Path, tmp_path: Path, channels: list[grpc.Channel]
) -> None:
    cache = tmp_path / "cache"
    first = serve("scorer", *scorer_flags(tiny_model, cache))
    try:
        first.wait_serving()  # no start-up dataset: SERVING once the model is loaded
        stub = stub_of(first, channels)
        reply = stub.RegisterDataset(
            scorer_pb2.RegisterDatasetRequest(
                id="many", image_folder=scorer_pb2.ImageFolderSource(path=str(many_images))
            ),
            timeout=60,
        )
        assert not reply.dataset.ready  # returned before the features exist
        assert reply.dataset.images_total == TOTAL and reply.dataset.images_done < TOTAL
        assert list(reply.dataset.class_names) and [s.num_images for s in reply.dataset.splits] == [TOTAL]

        with pytest.raises(grpc.RpcError) as call:
            stub.EvaluatePrompts(
                scorer_pb2.EvaluatePromptsRequest(dataset="many", split="test", templates=["a {}"]),
                timeout=10,
            )
        assert call.value.code() == grpc.StatusCode.UNAVAILABLE
        assert (retry_delay_of(call.value) or 0) > 0  # type: ignore[arg-type]
        assert resource_of(call.value) == ("dataset", "many")  # type: ignore[arg-type]
        assert first.health() == SERVING  # a registration at run time keeps the scorer SERVING

        progress: list[int] = []
        deadline = time.monotonic() + 120
        while not progress or progress[-1] < 2 * CHUNK:
            d = listed(stub)["many"]
            assert not d.ready, "encoding ended before the test could interrupt it"
            progress.append(d.images_done)
            assert time.monotonic() < deadline, f"no progress: {progress[-5:]}"
            time.sleep(0.01)
        first.proc.kill()  # SIGKILL mid-registration
        first.proc.wait()
    finally:
        first.stop()
    assert progress == sorted(progress) and 0 < progress[-1] < TOTAL
    kept = chunk_rows(cache)
    assert CHUNK <= kept < TOTAL and kept % CHUNK == 0

    # Restarted with the set as a start-up dataset: NOT_SERVING until ready, as before; it reads
    # back the chunks and encodes only the rest.
    second = serve("scorer", *scorer_flags(tiny_model, cache), "--dataset", f"many={many_images}")
    try:
        second.wait_serving(timeout=240)
        assert metric(second, "promptclimb_scorer_images_encoded_total") == TOTAL - kept
        stub = stub_of(second, channels)
        d = listed(stub)["many"]
        assert d.ready and d.images_done == d.images_total == TOTAL
        templates = TEMPLATES[:3]
        scored = stub.EvaluatePrompts(
            scorer_pb2.EvaluatePromptsRequest(dataset="many", split="test", templates=templates), timeout=60
        )
        _classes, flags = paper_scores(tiny_model, many_images, "test", templates)
        assert [s.correct for s in scored.scores] == [sum(f) for f in flags]
        assert [s.total for s in scored.scores] == [TOTAL] * len(templates)
    finally:
        assert second.stop() == 0
    assert chunk_rows(cache) == 0  # the whole file replaced the chunks
    assert len(list((cache / "features").glob("*.safetensors"))) == 1


async def test_a_registration_that_fails_mid_encoding_says_why_and_registering_again_retries(
    tiny_model: Path, tmp_path: Path
) -> None:
    """An image whose header is fine but whose pixels are cut off passes the check, fails the encoding."""
    root = make_image_folder(tmp_path / "images", per_split={"test": 2})
    bad = root / "test" / "red_square" / "0.png"
    whole = bad.read_bytes()
    bad.write_bytes(whole[: len(whole) // 2])
    settings = ScorerSettings(model=f"local-dir:{tiny_model}")
    engine = ScoringEngine(settings)
    server = build_server(settings, engine)
    port = await server.start()
    await asyncio.to_thread(engine.load_model)
    register = scorer_pb2.RegisterDatasetRequest(
        id="cut", image_folder=scorer_pb2.ImageFolderSource(path=str(root))
    )
    evaluate = scorer_pb2.EvaluatePromptsRequest(dataset="cut", split="test", templates=["a {}"])

    async def until(stub: scorer_pb2_grpc.ScorerServiceStub, done: str) -> scorer_pb2.Dataset:
        deadline = time.monotonic() + 60
        while True:
            reply = await stub.ListDatasets(scorer_pb2.ListDatasetsRequest())
            (d,) = [d for d in reply.datasets if d.id == "cut"]
            if getattr(d, done):
                return d
            assert time.monotonic() < deadline, f"never {done}: {d}"
            await asyncio.sleep(0.02)

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = scorer_pb2_grpc.ScorerServiceStub(channel)
            assert not (await stub.RegisterDataset(register)).dataset.ready
            failed = await until(stub, "error")
            assert not failed.ready and "computing the image features failed" in failed.error
            with pytest.raises(grpc.aio.AioRpcError) as call:
                await stub.EvaluatePrompts(evaluate)
            assert call.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "register it again" in (call.value.details() or "")

            bad.write_bytes(whole)  # repaired: the same registration now succeeds
            await stub.RegisterDataset(register)
            ready = await until(stub, "ready")
            assert ready.error == "" and ready.images_done == 10
            assert (await stub.EvaluatePrompts(evaluate)).scores[0].total == 10
    finally:
        await engine.close()
        await server.stop(0)

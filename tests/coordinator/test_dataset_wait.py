"""A search started while its dataset is still being registered waits for it, then succeeds.

A real ``promptclimb serve scorer`` (tiny CLIP) is asked to register 3,000 images, which takes
seconds to encode; RegisterDataset answers at once and a search is started on the set right
away, through a coordinator whose retry policy gives up after two attempts on any other error.
The scorer answers UNAVAILABLE (RetryInfo, ResourceInfo naming the dataset) until the features
are ready; the coordinator waits, and the search succeeds with the scorer's own numbers. The
optimizer is the in-process fake: the test is about the scorer's readiness, not the LLM.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from promptclimb.api.v1 import coordinator_pb2 as pb
from promptclimb.client import CoordinatorClient, ScorerClient
from promptclimb.testing.tiny_clip import make_image_folder, make_tiny_model_dir
from services.coordinator.clients import GrpcProposer, GrpcScorer, RetryPolicy
from tests.coordinator.fakes import FakeOptimizer, start_optimizer
from tests.support.coordinator import coordinator_in_process
from tests.support.processes import ServedProcess, serve

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def handled(scorer: ServedProcess, method: str, code: str) -> float:
    """Calls of ``method`` the scorer answered with ``code``, from its own /metrics."""
    assert scorer.metrics_port is not None
    text = (
        urllib.request.urlopen(f"http://127.0.0.1:{scorer.metrics_port}/metrics", timeout=5).read().decode()
    )
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "grpc_server_handled_total"
        and s.labels.get("grpc_method") == method
        and s.labels.get("grpc_code") == code
    )


@pytest.fixture(scope="module")
def scorer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServedProcess, Path]]:
    root = tmp_path_factory.mktemp("dataset_wait")
    model = make_tiny_model_dir(root / "model")
    images = make_image_folder(root / "images", per_split={"train": 300, "test": 300})
    proc = serve("scorer", f"--model=local-dir:{model}", "--image-batch-size=50")
    try:
        proc.wait_serving()
        yield proc, images
    finally:
        proc.stop()


async def test_a_search_on_a_dataset_still_registering_waits_then_succeeds(
    scorer: tuple[ServedProcess, Path], tmp_path: Path
) -> None:
    proc, images = scorer
    o_server, o_port = await start_optimizer(FakeOptimizer())
    retry = RetryPolicy(max_attempts=2, backoff_seconds=0.02, max_backoff_seconds=0.05)
    grpc_scorer = GrpcScorer(proc.target, chunk_size=4, deadline_seconds=10, retry=retry)
    proposer = GrpcProposer(f"127.0.0.1:{o_port}", deadline_seconds=10, retry=retry)
    try:
        async with ScorerClient(proc.target, timeout=30) as direct:
            registered = await direct.register_dataset("many", image_folder=str(images), wait=False)
            assert not registered.ready and registered.images_total == 3000
            async with coordinator_in_process(tmp_path / "s.db", grpc_scorer, proposer, lease_seconds=5) as c:
                async with CoordinatorClient(f"127.0.0.1:{c.port}", timeout=30) as client:
                    started = await client.start(
                        dataset="many", pool="basic", iterations=1, templates_per_iteration=2
                    )
                    done = await asyncio.wait_for(client.wait(started.name), 180)
            assert done.state == pb.SEARCH_STATE_SUCCEEDED, done.end_reason
            # It met the dataset not ready (and waited) rather than starting after it was ready.
            assert handled(proc, "EvaluatePrompts", "UNAVAILABLE") >= 1
            (listed,) = [d for d in await direct.list_datasets() if d.id == "many"]
            assert listed.ready and listed.images_done == 3000
            history = {t.template: t.accuracy for t in done.history}
            reply = await direct.evaluate("many", "train", list(history))
            assert history == {s.template: s.accuracy for s in reply.scores}
            best = done.result.best.template
            test = await direct.evaluate("many", "test", [best])
            assert done.result.best_evaluation_accuracy == test.scores[0].accuracy
    finally:
        await o_server.stop(0)


async def test_the_scorer_client_waits_for_registration_by_default(
    scorer: tuple[ServedProcess, Path],
) -> None:
    proc, images = scorer
    async with ScorerClient(proc.target, timeout=120) as direct:
        dataset = await direct.register_dataset("waited", image_folder=str(images))
    assert dataset.ready and dataset.images_done == dataset.images_total == 3000

"""One coordinator, two scorer models: two real `promptclimb serve scorer` processes, each serving
a different tiny CLIP under its own model id, behind one real coordinator process.

The optimizer is the in-process fake (the test is about routing scores to models, not the LLM);
every accuracy a search reports is checked against a direct call to the scorer of that model.
"""

from __future__ import annotations

import asyncio
import re
import signal
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from promptclimb.api.v1 import coordinator_pb2 as pb
from promptclimb.client import CoordinatorClient, ScorerClient
from promptclimb.testing.tiny_clip import TINY_CLASSES, make_image_folder, make_tiny_model_dir
from services.coordinator.clients import GrpcScorer
from services.coordinator.models import ModelRegistry
from services.coordinator.pools import NAMED_POOLS
from services.coordinator.search import SearchFailed
from services.coordinator.settings import ModelEntry
from tests.coordinator.fakes import FakeOptimizer, start_optimizer
from tests.coordinator.test_durability import serve_coordinator
from tests.support.processes import ServedProcess, serve

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def evaluate_calls(scorer: ServedProcess) -> float:
    """EvaluatePrompts calls this scorer answered OK, from its own /metrics."""
    text = (
        urllib.request.urlopen(f"http://127.0.0.1:{scorer.metrics_port}/metrics", timeout=5).read().decode()
    )
    m = re.search(
        r'grpc_server_handled_total\{grpc_code="OK",grpc_method="EvaluatePrompts"[^}]*\} (\S+)', text
    )
    return float(m.group(1)) if m else 0.0


@dataclass
class Fleet:
    scorers: dict[str, ServedProcess]  # model id -> its scorer
    coordinator: str


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServedProcess]]:
    root = tmp_path_factory.mktemp("models")
    images = make_image_folder(root / "images", per_split={"train": 4, "test": 6})
    only_b = make_image_folder(root / "only-b", classes=TINY_CLASSES[:3], seed=1)
    scorers = {
        "tiny-a": serve(
            "scorer",
            f"--model=local-dir:{make_tiny_model_dir(root / 'a', seed=0)}",
            "--model-id=tiny-a",
            f"--dataset=toy={images}",
            f"--cache-dir={root / 'cache-a'}",
        ),
        "tiny-b": serve(
            "scorer",
            f"--model=local-dir:{make_tiny_model_dir(root / 'b', seed=1)}",
            "--model-id=tiny-b",
            f"--dataset=toy={images}",
            f"--dataset=only-b={only_b}",
            f"--cache-dir={root / 'cache-b'}",
        ),
    }
    try:
        for scorer in scorers.values():
            scorer.wait_serving()
        yield scorers
    finally:
        for scorer in scorers.values():
            scorer.stop()


@pytest.fixture
async def fleet(two_models: dict[str, ServedProcess], tmp_path: Path) -> AsyncIterator[Fleet]:
    o_server, o_port = await start_optimizer(FakeOptimizer())
    entries = [f"{m}={s.target}" for m, s in two_models.items()]  # tiny-a first: the default
    proc, port = await serve_coordinator(
        entries, f"127.0.0.1:{o_port}", tmp_path / "s.db", tmp_path / "c.log"
    )
    try:
        yield Fleet(two_models, f"127.0.0.1:{port}")
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
        await o_server.stop(0)


async def finished(client: CoordinatorClient, **spec: object) -> pb.Search:
    spec = {"dataset": "toy", "pool": "basic", "iterations": 2, "templates_per_iteration": 2, **spec}
    search = await client.start(**spec)
    done = await asyncio.wait_for(client.wait(search.name), 120)
    assert done.state == pb.SEARCH_STATE_SUCCEEDED, done.end_reason
    return done


async def direct(scorer: ServedProcess, split: str, templates: list[str]) -> dict[str, float]:
    async with ScorerClient(scorer.target) as client:
        reply = await client.evaluate("toy", split, templates)
    return {s.template: s.accuracy for s in reply.scores}


async def test_models_are_listed_and_each_search_scores_on_its_own_model(fleet: Fleet) -> None:
    async with CoordinatorClient(fleet.coordinator) as client:
        models = {m.id: m for m in await client.models()}
        assert set(models) == {"tiny-a", "tiny-b"}
        assert all(m.ready and m.reason == "" for m in models.values())
        assert models["tiny-a"].default and not models["tiny-b"].default
        assert list(models["tiny-b"].datasets) == ["only-b", "toy"]
        for model, scorer in fleet.scorers.items():
            other = fleet.scorers["tiny-b" if model == "tiny-a" else "tiny-a"]
            calls_of_other = evaluate_calls(other)
            done = await finished(client, model=model)
            assert evaluate_calls(other) == calls_of_other  # not one chunk went to the other model
            history = {t.template: t.accuracy for t in done.history}
            assert history == await direct(scorer, "train", list(history))
            best = done.result.best.template
            assert done.result.best_evaluation_accuracy == (await direct(scorer, "test", [best]))[best]


async def test_transfer_scores_equal_a_direct_evaluation_on_the_other_model(fleet: Fleet) -> None:
    b = fleet.scorers["tiny-b"]
    async with CoordinatorClient(fleet.coordinator) as client:
        done = await finished(client, model="tiny-a", transfer_models=["tiny-b"])
    (transfer,) = done.result.transfer
    best, plain = done.result.best.template, transfer.plain_template
    # The plain prompt is the initial pool's first template: the API history is in the order the
    # scorer's chunks were stored, which concurrent chunks may swap.
    assert transfer.model == "tiny-b" and plain == NAMED_POOLS["basic"][0]
    assert plain in {t.template for t in done.history}
    on_b = await direct(b, "test", [best, plain])
    on_a = await direct(fleet.scorers["tiny-a"], "test", [best, plain])
    assert on_a != on_b  # transfer scores from the search's own model would fail the checks below
    assert transfer.best_evaluation_accuracy == on_b[best]
    assert transfer.plain_evaluation_accuracy == on_b[plain]
    async with ScorerClient(b.target) as scorer:
        ensemble = await scorer.evaluate_ensemble("toy", "test", list(done.result.ensemble_templates))
    assert transfer.ensemble_evaluation_accuracy == ensemble.score.accuracy


@pytest.mark.parametrize("aggregate", ["mean", "min"])
async def test_a_two_model_objective_ranks_by_the_aggregate_a_test_recomputes(
    fleet: Fleet, aggregate: str
) -> None:
    async with CoordinatorClient(fleet.coordinator) as client:
        done = await finished(
            client,
            model="tiny-a",
            objective_models=["tiny-b"],
            objective_aggregate=aggregate,
            objective="accuracy",
            iterations=3,
        )
    templates = [t.template for t in done.history]
    on_a = await direct(fleet.scorers["tiny-a"], "train", templates)
    on_b = await direct(fleet.scorers["tiny-b"], "train", templates)
    assert any(on_a[t] != on_b[t] for t in templates)  # the two models disagree: the oracle can fail
    combine = min if aggregate == "min" else (lambda x, y: (x + y) / 2)
    expected = {t: combine(on_a[t], on_b[t]) for t in templates}
    assert {t.template: t.accuracy for t in done.history} == pytest.approx(expected)
    top = max(expected.values())
    assert done.best.template == next(t for t in templates if expected[t] == pytest.approx(top))
    # evaluation stays on the search's own model
    best = done.result.best.template
    assert (
        done.result.best_evaluation_accuracy == (await direct(fleet.scorers["tiny-a"], "test", [best]))[best]
    )


async def test_unknown_model_and_missing_dataset_are_refused_with_their_codes(fleet: Fleet) -> None:
    async with CoordinatorClient(fleet.coordinator) as client:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.start(dataset="toy", model="vit-huge")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert "vit-huge" in (err.value.details() or "") and "tiny-a" in (err.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.start(dataset="toy", transfer_models=["nope"])
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        search = await client.start(dataset="only-b", model="tiny-a", pool="basic")
        failed = await asyncio.wait_for(client.wait(search.name), 60)
    assert failed.state == pb.SEARCH_STATE_FAILED
    assert failed.error_code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "only-b" in failed.end_reason and "tiny-a" in failed.end_reason


async def test_a_target_serving_another_model_is_refused(two_models: dict[str, ServedProcess]) -> None:
    registry = ModelRegistry(
        [ModelEntry("tiny-c", two_models["tiny-a"].target), ModelEntry("", two_models["tiny-b"].target)],
        GrpcScorer,
    )
    try:
        await registry.check()
        wrong, default = registry.status
        assert not wrong.ready and wrong.mismatch
        assert wrong.reason == f"{two_models['tiny-a'].target} serves model 'tiny-a', not 'tiny-c'"
        assert default.ready and default.default and default.id == "tiny-b"  # the bare target's id, learned
        with pytest.raises(SearchFailed) as failed:
            registry.scorer_of("tiny-c")
        assert failed.value.code == "FAILED_PRECONDITION"
        assert registry.known("tiny-b") and not registry.known("tiny-a")
    finally:
        await registry.close()

"""Description searches through the real services: a real `promptclimb serve scorer` (tiny CLIP),
a real `promptclimb serve optimizer` and a real coordinator process.

The LLM is a scripted OpenAI-compatible fake here (the tests are about durability, planning and
continuation, not what an LLM writes; it counts every request, which is what "nothing asked again"
is checked against). The real local LLM is in the last test.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import signal
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from promptclimb.api.v1 import coordinator_pb2 as pb
from promptclimb.client import CoordinatorClient, ScorerClient
from promptclimb.local_llm import LlamaServer
from promptclimb.testing.fake_openai import FakeOpenAI
from promptclimb.testing.tiny_clip import make_image_folder, make_tiny_model_dir
from services.coordinator.store import SearchStore
from tests.coordinator.test_durability import serve_coordinator
from tests.optimizer.test_real_llm import llama  # noqa: F401 (the module's fixture)
from tests.support.processes import ServedProcess, serve

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

WORDINGS = [
    "a {} drawn in thick strokes",
    "{}, seen from far away",
    "a bright {} pattern",
    "an old photo of a {}",
]


_texts = itertools.count()


def answer(body: dict[str, Any], *, hold: float = 0.0) -> str:
    """Describes every class the call asks for (its reply grammar names them) with texts never
    written before (a refine that repeated a class's current texts would be asked again)."""
    time.sleep(hold)
    entry = body["response_format"]["json_schema"]["schema"]["properties"]["classes"]["items"]
    classes = entry["properties"]["class"]["enum"]

    def texts() -> list[str]:
        return [f"{WORDINGS[(n := next(_texts)) % len(WORDINGS)]}, picture {n}" for _ in range(2)]

    return json.dumps({"classes": [{"class": c, "descriptions": texts()} for c in classes]})


def handled(scorer: ServedProcess, method: str) -> float:
    """Calls of ``method`` this scorer answered OK, from its own /metrics."""
    url = f"http://127.0.0.1:{scorer.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    m = re.search(rf'grpc_server_handled_total\{{grpc_code="OK",grpc_method="{method}"[^}}]*\}} (\S+)', text)
    return float(m.group(1)) if m else 0.0


@pytest.fixture(scope="module")
def scorer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedProcess]:
    root = tmp_path_factory.mktemp("descriptions")
    images = make_image_folder(root / "images", per_split={"train": 3, "test": 4})
    served = serve(
        "scorer",
        f"--model=local-dir:{make_tiny_model_dir(root / 'model')}",
        f"--dataset=toy={images}",
        f"--cache-dir={root / 'cache'}",
    )
    try:
        served.wait_serving()
        yield served
    finally:
        served.stop()


@dataclass
class Fleet:
    scorer: ServedProcess
    llm: FakeOpenAI
    optimizer: ServedProcess
    store: Path
    log: Path


@pytest.fixture
def fleet(scorer: ServedProcess, tmp_path: Path) -> Iterator[Fleet]:
    with FakeOpenAI(default=lambda body: answer(body, hold=0.3)) as llm:
        optimizer = serve("optimizer", "--llm-base-url", llm.base_url, "--llm-model", "fake-model")
        try:
            optimizer.wait_serving()
            yield Fleet(scorer, llm, optimizer, tmp_path / "store.db", tmp_path / "coordinator.log")
        finally:
            optimizer.stop()


@pytest.fixture
async def coordinator(fleet: Fleet) -> AsyncIterator[str]:
    proc, port = await serve_coordinator(fleet.scorer.target, fleet.optimizer.target, fleet.store, fleet.log)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()


SPEC = dict(
    dataset="toy",
    descriptions=True,
    descriptions_per_class=2,
    rounds=4,
    weakest_k=2,
    max_classes_per_call=2,
    description_template="a photo of a {}.",
    seed=7,
)


async def test_sigkill_mid_search_resumes_with_nothing_recorded_lost_or_asked_again(fleet: Fleet) -> None:
    evaluated_before = handled(fleet.scorer, "EvaluateDescriptions")
    proc, port = await serve_coordinator(fleet.scorer.target, fleet.optimizer.target, fleet.store, fleet.log)
    try:
        async with CoordinatorClient(f"127.0.0.1:{port}") as client:
            search = await client.start(**SPEC, request_id="describe-crash")
            # Kill while a refine call of round >= 2 is at the LLM (each is held 0.3 s).
            deadline = time.monotonic() + 120
            while True:
                s = await client.get(search.name, full=False)
                if (
                    s.iteration >= 2
                    and s.phase == pb.SEARCH_PHASE_PROPOSING
                    and len(fleet.llm.requests) > s.usage.llm_calls
                ):
                    break
                assert s.state in (pb.SEARCH_STATE_PENDING, pb.SEARCH_STATE_RUNNING), s.end_reason
                assert time.monotonic() < deadline, "the search never reached a refine call in flight"
                await asyncio.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    asked_before = len(fleet.llm.requests)
    store = SearchStore(str(fleet.store))
    killed = store.get(search.id)
    recorded = store.steps(search.id)
    store.close()
    assert killed is not None and killed.state == "RUNNING"
    assert "llm/describe" in recorded and "llm/refine/0" in recorded
    recorded_calls = sum(v["llm_calls"] for k, v in recorded.items() if k.startswith("llm/"))
    lost = asked_before - recorded_calls
    assert lost in (0, 1)  # at most the call in flight was lost

    proc, port = await serve_coordinator(fleet.scorer.target, fleet.optimizer.target, fleet.store, fleet.log)
    try:
        async with CoordinatorClient(f"127.0.0.1:{port}") as client:
            done = await asyncio.wait_for(client.wait(search.name), 120)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    assert done.state == pb.SEARCH_STATE_SUCCEEDED, done.end_reason

    store = SearchStore(str(fleet.store))
    final = store.steps(search.id)
    store.close()
    assert all(final[k] == v for k, v in recorded.items())  # every step recorded before the kill kept
    # Every LLM request is a journaled reply, but for the one lost in flight; no set scored twice.
    assert len(fleet.llm.requests) == done.usage.llm_calls + lost
    score_steps = [k for k in final if k.startswith("score/")]
    assert handled(fleet.scorer, "EvaluateDescriptions") - evaluated_before == len(score_steps)
    assert len(score_steps) == 2 + len(done.result.descriptions.rounds)  # first set, rounds, the pick

    # The result is what the scorer says of the picked set and of the template alone.
    d = done.result.descriptions
    picked = {c.class_name: list(c.descriptions) for c in d.classes}
    async with ScorerClient(fleet.scorer.target) as direct:
        for split, accuracy in (("train", d.selection_accuracy), ("test", d.evaluation_accuracy)):
            reply = await direct.evaluate_descriptions("toy", split, {"pick": picked}, template=d.template)
            assert reply.scores[0].accuracy == accuracy
        alone = await direct.evaluate("toy", "test", ["a photo of a {}."])
    assert d.template_evaluation_accuracy == alone.scores[0].accuracy
    assert [r.round for r in d.rounds] == [1, 2, 3, 4]


async def test_dry_run_plans_what_the_search_then_spends(fleet: Fleet, coordinator: str) -> None:
    async with CoordinatorClient(coordinator) as client:
        plan = await client.plan(**SPEC)
        assert await client.list() == []  # nothing was stored
        assert len(fleet.llm.requests) == 0  # and no LLM asked
        done = await asyncio.wait_for(client.wait((await client.start(**SPEC)).name), 120)
        assert done.state == pb.SEARCH_STATE_SUCCEEDED, done.end_reason
        # Every reply of the fake is complete, so the calls are exactly the plan's; the reply room
        # reserved bounds what was written.
        assert plan.num_classes == 5 and plan.evaluations == 2 + 4
        assert plan.llm_calls == done.usage.llm_calls == len(fleet.llm.requests)
        assert done.usage.completion_tokens <= plan.completion_tokens
        assert plan.max_llm_calls >= plan.llm_calls

        small = await client.plan(**SPEC, max_llm_calls=2, max_evaluations=3)
        assert list(small.stopped_by) == ["max_llm_calls", "max_evaluations"]
        stopped = await asyncio.wait_for(client.wait((await client.start(**SPEC, max_llm_calls=4)).name), 120)
        assert stopped.state == pb.SEARCH_STATE_SUCCEEDED
        assert stopped.end_reason == "budget: max_llm_calls" and stopped.usage.llm_calls <= 4

        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await client.plan(**{**SPEC, "dataset": "nope"})
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_description_search_continues_from_a_template_search(fleet: Fleet, coordinator: str) -> None:
    spec = {k: v for k, v in SPEC.items() if k != "description_template"}
    async with CoordinatorClient(coordinator) as client:
        templates = await client.start(dataset="toy", pool="basic", strategy="edit", iterations=2)
        templates = await asyncio.wait_for(client.wait(templates.name), 120)
        assert templates.state == pb.SEARCH_STATE_SUCCEEDED, templates.end_reason
        continued = await asyncio.wait_for(
            client.wait((await client.start(**spec, from_search=templates.id)).name), 120
        )
        assert continued.state == pb.SEARCH_STATE_SUCCEEDED, continued.end_reason
        d = continued.result.descriptions
        assert d.template == continued.spec.descriptions.template == templates.result.best.template
        assert d.from_search == templates.name
        # The template alone is where the template search ended, on the same evaluation split.
        assert d.template_evaluation_accuracy == templates.result.best_evaluation_accuracy

        with pytest.raises(grpc.aio.AioRpcError) as replayed:
            await client.replay(continued.name, patience=1)
        assert replayed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "description search" in (replayed.value.details() or "")

        for source, code in (
            ("searches/does-not-exist", grpc.StatusCode.NOT_FOUND),
            (continued.name, grpc.StatusCode.FAILED_PRECONDITION),  # a description search
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.start(**spec, from_search=source)
            assert refused.value.code() == code, refused.value.details()


async def test_a_description_search_is_cancelled_promptly(fleet: Fleet, coordinator: str) -> None:
    async with CoordinatorClient(coordinator) as client:
        search = await client.start(**SPEC)
        deadline = time.monotonic() + 60
        while (await client.get(search.name, full=False)).phase != pb.SEARCH_PHASE_PROPOSING:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        cancelled = await client.cancel(search.name)
        assert cancelled.state == pb.SEARCH_STATE_CANCELLED and cancelled.end_reason == "cancelled"


async def test_against_the_real_local_llm(scorer: ServedProcess, llama: LlamaServer, tmp_path: Path) -> None:  # noqa: F811
    """SmolLM2 behind llama.cpp: the search SUCCEEDS and its result is the scorer's (not its quality)."""
    optimizer = serve(
        "optimizer",
        "--llm-base-url",
        llama.base_url,
        "--llm-model",
        "smollm2-135m",
        "--timeout",
        "120",
        env={"PROMPTCLIMB_OPTIMIZER_MAX_TOKENS": "160"},
    )
    try:
        optimizer.wait_serving()
        proc, port = await serve_coordinator(
            scorer.target, optimizer.target, tmp_path / "s.db", tmp_path / "c.log"
        )
        try:
            async with CoordinatorClient(f"127.0.0.1:{port}") as client:
                spec = {**SPEC, "rounds": 1, "task_description": "simple coloured shapes"}
                search = await client.start(**spec)
                done = await asyncio.wait_for(client.wait(search.name), 280)
        finally:
            proc.send_signal(signal.SIGTERM)
            await proc.wait()
    finally:
        optimizer.stop()
    assert done.state == pb.SEARCH_STATE_SUCCEEDED, done.end_reason
    d = done.result.descriptions
    assert len(d.classes) == 5 and done.usage.llm_calls >= 1 and done.usage.completion_tokens > 0
    described = [c for c in d.classes if list(c.descriptions) != ["{}"]]
    assert sorted(c.class_name for c in d.classes if c not in described) == sorted(d.missing)
    picked = {c.class_name: list(c.descriptions) for c in d.classes}
    async with ScorerClient(scorer.target) as direct:
        reply = await direct.evaluate_descriptions("toy", "test", {"pick": picked}, template=d.template)
    assert reply.scores[0].accuracy == d.evaluation_accuracy

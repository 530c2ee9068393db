"""Hostile requests on every CoordinatorService RPC against a real in-process coordinator.

The coordinator's store, runner and servicer are the real ones; the scorer and optimizer behind
it are the fakes of the coordinator tests (this module is about the coordinator's own API).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2
from hypothesis import given
from hypothesis import strategies as st

from promptclimb.api.v1 import coordinator_pb2, coordinator_pb2_grpc
from promptclimb.common.server import ServiceServer
from services.coordinator.clients import GrpcProposer, GrpcScorer, RetryPolicy
from services.coordinator.main import build_server as build_coordinator
from services.coordinator.pools import NAMED_POOLS
from services.coordinator.runner import SearchRunner
from services.coordinator.settings import CoordinatorSettings
from services.coordinator.store import SearchStore
from tests.coordinator.fakes import FakeOptimizer, FakeScorer, start_optimizer, start_scorer
from tests.reliability.conftest import ErrorLog
from tests.reliability.hostile import (
    DOUBLE,
    ENUM,
    HOSTILE,
    INT32,
    INT64,
    check_code,
    hostile_list,
    hostile_text,
    mostly,
)
from tests.reliability.inproc import SERVING, LoopThread, call, health_status, raw_call, wait_serving

C = grpc.StatusCode
START = {C.OK, C.INVALID_ARGUMENT, C.RESOURCE_EXHAUSTED}
GET = {C.OK, C.NOT_FOUND, C.RESOURCE_EXHAUSTED}
# DEADLINE_EXCEEDED: the test's own 2 s deadline on a stream of a search that is still running.
WATCH = {C.OK, C.NOT_FOUND, C.DEADLINE_EXCEEDED, C.RESOURCE_EXHAUSTED}
CANCEL = {C.OK, C.NOT_FOUND, C.FAILED_PRECONDITION, C.RESOURCE_EXHAUSTED}
LIST = {C.OK, C.INVALID_ARGUMENT, C.RESOURCE_EXHAUSTED}


@dataclass
class Coordinator:
    channel: grpc.Channel
    stub: coordinator_pb2_grpc.CoordinatorServiceStub
    errors: ErrorLog
    names: list[str]

    def assert_healthy(self) -> None:
        assert self.errors.take() == []
        assert health_status(self.channel) == SERVING


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory, error_log: ErrorLog) -> Iterator[Coordinator]:
    loop = LoopThread()
    db: Path = tmp_path_factory.mktemp("hostile_coordinator") / "searches.db"
    # A slow optimizer keeps the searches the hostile specs start mostly idle (two cores).
    scorer_server, scorer_port = loop.run(start_scorer(FakeScorer()))
    optimizer_server, optimizer_port = loop.run(start_optimizer(FakeOptimizer(delay=0.3)))
    retry = RetryPolicy(max_attempts=2, backoff_seconds=0.01)
    store = SearchStore(str(db))

    async def build() -> tuple[ServiceServer, SearchRunner, GrpcScorer, GrpcProposer]:
        scorer = GrpcScorer(f"127.0.0.1:{scorer_port}", deadline_seconds=5, retry=retry)
        proposer = GrpcProposer(f"127.0.0.1:{optimizer_port}", deadline_seconds=5, retry=retry)
        runner = SearchRunner(store, scorer, proposer, lease_seconds=5, max_running=2)
        server = build_coordinator(CoordinatorSettings(port=0, max_message_bytes=4 * 1024 * 1024), runner)
        await server.start()
        await runner.start()
        await server.set_ready()
        return server, runner, scorer, proposer

    server, runner, scorer, proposer = loop.run(build())
    options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    with grpc.insecure_channel(f"127.0.0.1:{server.port}", options=options) as channel:
        wait_serving(channel)
        stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
        names = []
        for i in range(3):
            spec = coordinator_pb2.SearchSpec(dataset="toy", iterations=1, display_name=f"seed {i}")
            spec.initial_pool.templates.templates.extend(["a photo of a {}.", "itap of a {}"])
            names.append(
                stub.StartSearch(coordinator_pb2.StartSearchRequest(spec=spec), timeout=10).search.name
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(
            stub.GetSearch(coordinator_pb2.GetSearchRequest(name=n)).search.state
            in (coordinator_pb2.SEARCH_STATE_PENDING, coordinator_pb2.SEARCH_STATE_RUNNING)
            for n in names
        ):
            time.sleep(0.1)
        yield Coordinator(channel, stub, error_log, names)

    async def teardown() -> None:
        await runner.stop()
        await server.stop(0)
        await scorer.close()
        await proposer.close()
        await scorer_server.stop(0)
        await optimizer_server.stop(0)

    loop.run(teardown())
    store.close()
    loop.close()


def _slot(t: str) -> str:
    return t if t.count("{}") == 1 else t.replace("{}", "") + " {}"


POOL = st.one_of(
    st.builds(
        lambda n: ("named_pool", n), mostly(st.sampled_from(sorted(NAMED_POOLS)), hostile_text(huge=500))
    ),
    st.builds(
        lambda ts: ("templates", ts),
        hostile_list(mostly(hostile_text(huge=900).map(_slot), hostile_text(huge=3_000)), huge=2_000),
    ),
    st.builds(lambda n: ("llm_starters", n), mostly(st.integers(1, 5), INT32)),
    st.just(("unset", None)),
)
SMALL = mostly(st.integers(0, 2), INT32)


@HOSTILE
@given(
    dataset=mostly(st.just("toy"), hostile_text(huge=3_000)),
    splits=st.tuples(hostile_text(huge=300), hostile_text(huge=300)),
    strategy=mostly(st.sampled_from([0, 1, 2, 3]), ENUM),
    ks=st.tuples(SMALL, SMALL, SMALL, SMALL, SMALL, SMALL),
    temperature=st.one_of(st.none(), DOUBLE),
    pool=POOL,
    budget=st.tuples(INT64, INT64, INT64, st.integers(-(10**11), 10**11), INT32),
    seed=INT64,
    text=st.tuples(hostile_text(huge=5_000), hostile_text(huge=5_000)),
    request_id=mostly(hostile_text(huge=150), hostile_text(huge=2_000)),
)
def test_start_search(
    coordinator: Coordinator,
    dataset: str,
    splits: tuple[str, str],
    strategy: int,
    ks: tuple[int, ...],
    temperature: float | None,
    pool: tuple[str, object],
    budget: tuple[int, int, int, int, int],
    seed: int,
    text: tuple[str, str],
    request_id: str,
) -> None:
    spec = coordinator_pb2.SearchSpec(
        dataset=dataset,
        selection_split=splits[0],
        evaluation_split=splits[1],
        strategy=strategy,
        best_k=ks[0],
        worst_k=ks[1],
        restarts=ks[2],
        iterations=ks[3],
        templates_per_iteration=ks[4],
        ensemble_k=ks[5],
        seed=seed,
        task_description=text[0],
        display_name=text[1],
        budget=coordinator_pb2.Budget(
            max_llm_calls=budget[0],
            max_tokens=budget[1],
            max_evaluations=budget[2],
            max_duration=duration_pb2.Duration(seconds=budget[3], nanos=budget[4]),
        ),
    )
    if temperature is not None:
        spec.temperature = temperature
    kind, value = pool
    if kind == "named_pool":
        spec.initial_pool.named_pool = value  # type: ignore[assignment]
    elif kind == "templates":
        spec.initial_pool.templates.templates.extend(value)  # type: ignore[arg-type]
    elif kind == "llm_starters":
        spec.initial_pool.llm_starters = value  # type: ignore[assignment]
    request = coordinator_pb2.StartSearchRequest(spec=spec, request_id=request_id)
    check_code(call(coordinator.stub.StartSearch, request), START, "StartSearch")
    coordinator.assert_healthy()


def names(coordinator_names: list[str]) -> st.SearchStrategy[str]:
    known = st.sampled_from(coordinator_names + [n.removeprefix("searches/") for n in coordinator_names])
    return mostly(known, hostile_text(huge=5_000))


KNOWN = ["searches/" + "0" * 16]  # replaced per test by the fixture's names via st.data()


@HOSTILE
@given(data=st.data(), view=ENUM)
def test_get_search(coordinator: Coordinator, data: st.DataObject, view: int) -> None:
    name = data.draw(names(coordinator.names))
    request = coordinator_pb2.GetSearchRequest(name=name, view=view)
    check_code(call(coordinator.stub.GetSearch, request), GET, "GetSearch")
    coordinator.assert_healthy()


@HOSTILE
@given(data=st.data(), view=ENUM)
def test_watch_search(coordinator: Coordinator, data: st.DataObject, view: int) -> None:
    name = data.draw(names(coordinator.names))
    request = coordinator_pb2.WatchSearchRequest(name=name, view=view)

    def watch(req: coordinator_pb2.WatchSearchRequest, timeout: float) -> None:
        for _ in coordinator.stub.WatchSearch(req, timeout=timeout):
            pass

    check_code(call(watch, request, timeout=2), WATCH, "WatchSearch")
    coordinator.assert_healthy()


@HOSTILE
@given(data=st.data())
def test_cancel_search(coordinator: Coordinator, data: st.DataObject) -> None:
    name = data.draw(names(coordinator.names))
    request = coordinator_pb2.CancelSearchRequest(name=name)
    check_code(call(coordinator.stub.CancelSearch, request), CANCEL, "CancelSearch")
    coordinator.assert_healthy()


def _token(n: int) -> str:
    return base64.urlsafe_b64encode(str(n).encode()).decode()


TOKENS = st.sampled_from([_token(n) for n in (0, 1, 50, -1, -(10**6), 2**63, 10**30)] + ["", "!!", "MA"])


@HOSTILE
@given(page_size=INT32, token=mostly(TOKENS, hostile_text(huge=3_000)), state=ENUM)
def test_list_searches(coordinator: Coordinator, page_size: int, token: str, state: int) -> None:
    request = coordinator_pb2.ListSearchesRequest(page_size=page_size, page_token=token, state=state)
    check_code(call(coordinator.stub.ListSearches, request), LIST, "ListSearches")
    coordinator.assert_healthy()


METHODS = {
    "StartSearch": START,
    "GetSearch": GET,
    "WatchSearch": WATCH,
    "CancelSearch": CANCEL,
    "ListSearches": LIST,
}


@HOSTILE
@given(method=st.sampled_from(sorted(METHODS)), payload=st.binary(max_size=300))
def test_raw_bytes_on_every_rpc(coordinator: Coordinator, method: str, payload: bytes) -> None:
    code = raw_call(
        coordinator.channel,
        f"/promptclimb.api.v1.CoordinatorService/{method}",
        payload,
        timeout=2,
        stream=method == "WatchSearch",
    )
    check_code(code, METHODS[method] | {C.INVALID_ARGUMENT}, method)
    coordinator.assert_healthy()

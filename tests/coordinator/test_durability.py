"""Crash recovery and scorer fan-out, with the coordinator as a real `promptclimb serve` process."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from promptclimb.api.v1 import coordinator_pb2 as pb
from promptclimb.client import CoordinatorClient
from services.coordinator.store import SearchStore
from tests.coordinator.conftest import Harness
from tests.coordinator.fakes import FakeOptimizer, FakeScorer, start_optimizer, start_scorer
from tests.support.processes import test_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
ROOT = Path(__file__).resolve().parents[2]


async def serve_coordinator(
    scorer: str | Sequence[str], optimizer: str, store: Path, log: Path
) -> tuple[asyncio.subprocess.Process, int]:
    """Start `promptclimb serve coordinator` and read its port from the announce line.

    ``scorer``: one target, or several ``[MODEL_ID=]TARGET`` entries (one ``--scorer`` each).
    """
    env = test_env(PROMPTCLIMB_COORDINATOR_LOG_JSON="true")
    scorers = [scorer] if isinstance(scorer, str) else list(scorer)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "promptclimb",
        "serve",
        "coordinator",
        *(arg for s in scorers for arg in ("--scorer", s)),
        "--optimizer",
        optimizer,
        "--store",
        str(store),
        "--port",
        "0",
        "--lease-seconds",
        "1",
        "--chunk-size",
        "4",
        stdout=asyncio.subprocess.PIPE,
        stderr=log.open("ab"),
        env=env,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    m = re.search(rb"coordinator listening port=(\d+)", line)
    assert m, (line, log.read_text()[-2000:])  # noqa: ASYNC240
    return proc, int(m.group(1))


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[FakeScorer, FakeOptimizer, int, int]]:
    scorer, optimizer = FakeScorer(), FakeOptimizer(delay=0.25)
    s_server, s_port = await start_scorer(scorer)
    o_server, o_port = await start_optimizer(optimizer)
    yield scorer, optimizer, s_port, o_port
    await s_server.stop(0)
    await o_server.stop(0)


async def test_sigkill_mid_search_resumes_without_losing_or_repeating_work(fakes, tmp_path: Path) -> None:
    scorer, optimizer, s_port, o_port = fakes
    db, log = tmp_path / "store.db", tmp_path / "coordinator.log"
    proc, port = await serve_coordinator(f"127.0.0.1:{s_port}", f"127.0.0.1:{o_port}", db, log)
    try:
        async with CoordinatorClient(f"127.0.0.1:{port}") as client:
            search = await client.start(
                dataset="toy",
                restarts=2,
                iterations=4,
                templates_per_iteration=2,
                strategy="conversation",
                request_id="crash-test",
            )
            # Kill while the LLM call of iteration >= 3 is in flight (the scorer is instant, so no
            # score is in flight: everything the scorer computed was recorded).
            deadline = time.monotonic() + 60
            while True:
                s = await client.get(search.name, full=False)
                # Proposing, and the optimizer has the call (it holds each 0.25 s): one more
                # request than the replies the search has counted.
                if (
                    len(s.iterations) >= 4
                    and s.phase == pb.SEARCH_PHASE_PROPOSING
                    and len(optimizer.requests) > s.usage.llm_calls
                ):
                    break
                assert time.monotonic() < deadline, "the search never reached a call in flight"
                await asyncio.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    requests_before = len(optimizer.requests)
    store = SearchStore(str(db))
    killed = store.get(search.id, with_history=True)
    recorded_calls = len(store.proposals(search.id))
    store.close()
    assert killed is not None and killed.state == "RUNNING"
    before = {t.template for t in killed.history}
    assert len(before) >= 5 + 2 * 3
    assert requests_before - recorded_calls in (0, 1)  # at most the call in flight was lost

    proc, port = await serve_coordinator(f"127.0.0.1:{s_port}", f"127.0.0.1:{o_port}", db, log)
    try:
        async with CoordinatorClient(f"127.0.0.1:{port}") as client:
            done = await asyncio.wait_for(client.wait(search.name), 60)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0

    assert done.state == pb.SEARCH_STATE_SUCCEEDED, done.end_reason
    after = {t.template for t in done.history}
    assert before <= after
    assert len(done.history) == 5 + 2 * 4 * 2
    assert max(scorer.scored.values()) == 1  # no template scored twice, across the crash
    # Every LLM request is accounted for by a recorded reply, except the one lost in flight.
    assert len(optimizer.requests) == done.usage.llm_calls + (requests_before - recorded_calls)
    assert done.usage.llm_calls == 8


@pytest.fixture
async def two_scorers() -> AsyncIterator[list[tuple[FakeScorer, object, int]]]:
    out = []
    for _ in range(2):
        fake = FakeScorer(delay=0.02)
        server, port = await start_scorer(fake)
        out.append((fake, server, port))
    yield out
    for _, server, _ in out:
        await server.stop(0)


async def test_two_scorers_share_load_and_one_dying_costs_only_a_retry(two_scorers, tmp_path: Path) -> None:
    optimizer = FakeOptimizer(delay=0.05)
    o_server, o_port = await start_optimizer(optimizer)
    target = ",".join(f"127.0.0.1:{port}" for _, _, port in two_scorers)
    proc, port = await serve_coordinator(target, f"127.0.0.1:{o_port}", tmp_path / "s.db", tmp_path / "c.log")
    try:
        async with CoordinatorClient(f"127.0.0.1:{port}") as client:
            search = await client.start(
                dataset="toy", pool="clip80", iterations=12, templates_per_iteration=2
            )
            while len((await client.get(search.name, full=False)).iterations) < 4:  # noqa: ASYNC110 (polling a remote service)
                await asyncio.sleep(0.02)
            first, second = two_scorers
            assert first[0].calls > 0 and second[0].calls > 0  # round_robin spread the chunks
            await first[1].stop(0)  # one scorer dies mid-search
            calls_at_death = second[0].calls
            done = await asyncio.wait_for(client.wait(search.name), 60)
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
        await o_server.stop(0)
    assert done.state == pb.SEARCH_STATE_SUCCEEDED, done.end_reason
    assert len(done.history) == 80 + 12 * 2
    assert second[0].calls > calls_at_death


async def test_restart_resumes_from_store_in_process(harness: Harness) -> None:
    """Stopping the runner (graceful) leaves the search RUNNING with its lease released."""
    harness.optimizer.delay = 0.1
    search = await harness.client.start(dataset="toy", iterations=30)
    while len((await harness.client.get(search.name, full=False)).iterations) < 2:  # noqa: ASYNC110 (polling a remote service)
        await asyncio.sleep(0.02)
    await harness.runner.stop()
    record = harness.store.get(search.id)
    assert record is not None and record.state == "RUNNING" and record.lease_owner is None

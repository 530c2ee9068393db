"""Scorer fan-out across two real `promptclimb serve scorer` processes behind one target.

The scorers are the real service on the tiny model; the optimizer is the in-process fake (the
test is about spreading and surviving scorer load, not about the LLM).
"""

from __future__ import annotations

import asyncio
import re
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from promptclimb.api.v1 import coordinator_pb2 as pb
from promptclimb.client import CoordinatorClient
from promptclimb.testing.tiny_clip import make_image_folder, make_tiny_model_dir
from tests.coordinator.fakes import FakeOptimizer, start_optimizer
from tests.coordinator.test_durability import serve_coordinator
from tests.support.processes import ServedProcess, serve

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def evaluate_calls(scorer: ServedProcess) -> float:
    """EvaluatePrompts calls this scorer answered OK, from its own /metrics."""
    text = (
        urllib.request.urlopen(f"http://127.0.0.1:{scorer.metrics_port}/metrics", timeout=5).read().decode()
    )
    m = re.search(
        r'grpc_server_handled_total\{grpc_code="OK",grpc_method="EvaluatePrompts"[^}]*\} (\S+)', text
    )
    return float(m.group(1)) if m else 0.0


@pytest.fixture
def two_real_scorers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServedProcess]]:
    root = tmp_path_factory.mktemp("fanout")
    model = make_tiny_model_dir(root / "model")
    images = make_image_folder(root / "images")
    scorers = [
        serve(
            "scorer", f"--model=local-dir:{model}", f"--dataset=toy={images}", f"--cache-dir={root / 'cache'}"
        )
        for _ in range(2)
    ]
    try:
        for scorer in scorers:
            scorer.wait_serving()
        yield scorers
    finally:
        for scorer in scorers:
            scorer.stop()


async def test_two_scorer_processes_share_load_and_a_killed_one_costs_a_retry(
    two_real_scorers: list[ServedProcess], tmp_path: Path
) -> None:
    first, second = two_real_scorers
    optimizer = FakeOptimizer(delay=0.05)
    o_server, o_port = await start_optimizer(optimizer)
    target = ",".join(s.target for s in two_real_scorers)
    proc, port = await serve_coordinator(target, f"127.0.0.1:{o_port}", tmp_path / "s.db", tmp_path / "c.log")
    try:
        async with CoordinatorClient(f"127.0.0.1:{port}") as client:
            search = await client.start(
                dataset="toy", pool="clip80", iterations=10, templates_per_iteration=2
            )
            while len((await client.get(search.name, full=False)).iterations) < 3:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            assert evaluate_calls(first) > 0 and evaluate_calls(second) > 0  # round_robin spread the chunks
            first.proc.send_signal(signal.SIGKILL)  # one scorer dies mid-search, without a goodbye
            first.proc.wait()
            calls_at_death = evaluate_calls(second)
            done = await asyncio.wait_for(client.wait(search.name), 120)
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
        await o_server.stop(0)
    assert done.state == pb.SEARCH_STATE_SUCCEEDED, done.end_reason
    assert len(done.history) == 80 + 10 * 2  # the clip80 pool and every proposal, none lost
    assert len({t.template for t in done.history}) == len(done.history)  # none scored twice
    assert all(t.total == 10 for t in done.history)  # each a real score over the 10 train images
    assert evaluate_calls(second) > calls_at_death  # the survivor took the rest

"""The scorer's batcher without a model: queue bound, coalescing, arrival order, cancellation.

Compute is a plain function recording each batch; tests that need a batch in flight hold it on a
threading event (compute runs in a worker thread), so nothing here sleeps a fixed time.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Sequence

import pytest

from services.scorer.batching import Batcher
from services.scorer.errors import QueueFull

DEADLINE = 10.0  # seconds any single wait may take before the test fails instead of hanging


class Recorder:
    """A compute function that records its batches and can hold the first one."""

    def __init__(self, hold_first: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.release = threading.Event()
        if not hold_first:
            self.release.set()
        self.started: asyncio.Event = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    def __call__(self, jobs: list[str]) -> Sequence[str]:
        self.batches.append(list(jobs))
        self._loop.call_soon_threadsafe(self.started.set)
        if not self.release.wait(DEADLINE):
            raise RuntimeError("the test never released the batch")
        return [f"done:{j}" for j in jobs]


def make(compute: Recorder, **kwargs: object) -> Batcher[str, str]:
    options: dict[str, object] = {
        "max_queue_templates": 100,
        "max_batch_templates": 10,
        "batch_wait_ms": 0.0,
        "batch_wait_alone": False,
    }
    options.update(kwargs)
    return Batcher(compute, **options)  # type: ignore[arg-type]


async def hold_first_batch(
    batcher: Batcher[str, str], compute: Recorder, job: str, size: int
) -> asyncio.Task[str]:
    """Submit ``job`` and wait until compute holds it, so later jobs queue behind it."""
    task = asyncio.create_task(batcher.submit(job, size))
    await asyncio.wait_for(compute.started.wait(), DEADLINE)
    return task


async def queued(batcher: Batcher[str, str], templates: int) -> None:
    """Wait until ``templates`` templates are queued (a deadline, not a fixed sleep)."""
    async with asyncio.timeout(DEADLINE):
        # The queue depth has no event of its own; a yield per check, bounded by the deadline.
        while batcher.pending_templates != templates:  # noqa: ASYNC110
            await asyncio.sleep(0)


def test_batching_module_imports_no_torch() -> None:
    code = "import services.scorer.batching, sys; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_a_full_queue_refuses_with_the_numbers_and_a_retry_hint() -> None:
    compute = Recorder(hold_first=True)
    batcher = make(compute, max_queue_templates=5)
    first = await hold_first_batch(batcher, compute, "a", 3)  # in compute: no longer queued
    waiting = asyncio.create_task(batcher.submit("b", 4))
    await queued(batcher, 4)
    with pytest.raises(QueueFull) as refused:
        await batcher.submit("c", 2)  # 4 + 2 > 5
    assert (refused.value.waiting, refused.value.limit) == (4, 5)
    assert "4 of 5 templates waiting" in str(refused.value)
    assert refused.value.retry_after >= 0.05
    fits = asyncio.create_task(batcher.submit("d", 1))  # 4 + 1 = 5 still fits
    await queued(batcher, 5)
    compute.release.set()
    assert await asyncio.gather(first, waiting, fits) == ["done:a", "done:b", "done:d"]
    assert "c" not in [j for batch in compute.batches for j in batch]
    await batcher.close(RuntimeError("closed"))


async def test_concurrent_requests_are_computed_in_one_batch() -> None:
    compute = Recorder(hold_first=True)
    batcher = make(compute, max_batch_templates=10)
    first = await hold_first_batch(batcher, compute, "lone", 1)
    # Two requests that arrive while the scorer is busy share the next text pass.
    pair = [asyncio.create_task(batcher.submit(j, 2)) for j in ("x", "y")]
    await queued(batcher, 4)
    compute.release.set()
    assert await asyncio.gather(first, *pair) == ["done:lone", "done:x", "done:y"]
    assert compute.batches == [["lone"], ["x", "y"]]
    await batcher.close(RuntimeError("closed"))


async def test_requests_filling_a_batch_coalesce_without_waiting_out_the_window() -> None:
    compute = Recorder()
    # A 60-second window: the batch goes as soon as it is full, or this test times out.
    batcher = make(compute, max_batch_templates=4, batch_wait_ms=60_000)
    results = await asyncio.wait_for(asyncio.gather(batcher.submit("x", 2), batcher.submit("y", 2)), DEADLINE)
    assert results == ["done:x", "done:y"]
    assert compute.batches == [["x", "y"]]
    await batcher.close(RuntimeError("closed"))


async def test_a_lone_request_on_an_idle_batcher_does_not_wait_for_company() -> None:
    compute = Recorder()
    batcher = make(compute, batch_wait_ms=60_000, batch_wait_alone=False)
    assert await asyncio.wait_for(batcher.submit("solo", 1), DEADLINE) == "done:solo"
    await batcher.close(RuntimeError("closed"))


async def test_batches_follow_arrival_order_and_nothing_jumps_a_request_that_does_not_fit() -> None:
    compute = Recorder(hold_first=True)
    batcher = make(compute, max_batch_templates=10)
    first = await hold_first_batch(batcher, compute, "head", 1)
    order = [("small1", 3), ("big", 10), ("small2", 2), ("small3", 2)]
    tasks = [asyncio.create_task(batcher.submit(j, n)) for j, n in order]
    await queued(batcher, 17)
    compute.release.set()
    await asyncio.gather(first, *tasks)
    # big does not fit after small1, and small2 does not overtake it; big (the cap) goes alone.
    assert compute.batches == [["head"], ["small1"], ["big"], ["small2", "small3"]]
    await batcher.close(RuntimeError("closed"))


async def test_a_request_larger_than_a_batch_still_runs_alone() -> None:
    compute = Recorder()
    batcher = make(compute, max_batch_templates=4, max_queue_templates=100)
    assert await asyncio.wait_for(batcher.submit("huge", 50), DEADLINE) == "done:huge"
    assert compute.batches == [["huge"]]
    await batcher.close(RuntimeError("closed"))


async def test_a_cancelled_callers_work_is_never_computed() -> None:
    compute = Recorder(hold_first=True)
    batcher = make(compute)
    first = await hold_first_batch(batcher, compute, "a", 1)
    gone = asyncio.create_task(batcher.submit("gone", 5))
    await queued(batcher, 5)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert batcher.pending_templates == 0  # its templates left the queue at once
    kept = asyncio.create_task(batcher.submit("kept", 1))
    await queued(batcher, 1)
    compute.release.set()
    assert await asyncio.gather(first, kept) == ["done:a", "done:kept"]
    assert compute.batches == [["a"], ["kept"]]
    await batcher.close(RuntimeError("closed"))


async def test_a_failing_batch_fails_its_callers_and_the_next_batch_still_runs() -> None:
    calls: list[list[str]] = []

    def compute(jobs: list[str]) -> Sequence[str]:
        calls.append(jobs)
        if "bad" in jobs:
            raise ValueError("boom")
        return jobs

    batcher: Batcher[str, str] = Batcher(
        compute, max_queue_templates=10, max_batch_templates=10, batch_wait_ms=0
    )
    with pytest.raises(ValueError, match="boom"):
        await asyncio.wait_for(batcher.submit("bad", 1), DEADLINE)
    assert await asyncio.wait_for(batcher.submit("good", 1), DEADLINE) == "good"
    await batcher.close(RuntimeError("closed"))


async def test_close_fails_every_waiting_request_with_the_given_error() -> None:
    compute = Recorder(hold_first=True)
    batcher = make(compute)
    first = await hold_first_batch(batcher, compute, "a", 1)
    waiting = asyncio.create_task(batcher.submit("b", 1))
    await queued(batcher, 1)
    close = asyncio.create_task(batcher.close(RuntimeError("shutting down")))
    with pytest.raises(RuntimeError, match="shutting down"):
        await waiting
    compute.release.set()
    await close
    assert batcher.pending_templates == 0
    first.cancel()

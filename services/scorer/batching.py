"""The scorer's admission queue and batching worker: plain asyncio, no model, no torch.

Requests wait in one FIFO queue bounded in templates (a full queue refuses at once with
:class:`~services.scorer.errors.QueueFull` and a retry hint from the measured cost per template).
One worker takes queued requests in arrival order into a batch of at most ``max_batch_templates``
(a request larger than that goes alone; a request that does not fit waits for the next batch and
nothing behind it jumps ahead), waiting up to ``batch_wait_ms`` after the oldest one arrived for
company. A lone request after a lone batch (one client, an idle scorer) does not wait unless
``batch_wait_alone``. The batch goes to the injected ``compute`` in a worker thread; a caller
that went away (a cancelled RPC) before its batch formed is dropped and never computed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from services.scorer import metrics
from services.scorer.errors import QueueFull

log = logging.getLogger(__name__)

J = TypeVar("J")  # what a request asks for (the engine's job)
R = TypeVar("R")  # what compute answers for it


@dataclass(eq=False)
class _Entry(Generic[J, R]):
    job: J
    size: int
    future: asyncio.Future[R]
    enqueued: float = field(default_factory=time.monotonic)


class Batcher(Generic[J, R]):
    """A bounded queue of jobs and the one worker that computes them in batches.

    ``compute`` maps a batch of jobs to one result per job, in order; it runs in a thread, so it
    may block (torch). An exception fails that batch's callers, not the worker.
    """

    def __init__(
        self,
        compute: Callable[[list[J]], Sequence[R]],
        *,
        max_queue_templates: int,
        max_batch_templates: int,
        batch_wait_ms: float,
        batch_wait_alone: bool = False,
    ) -> None:
        self.compute = compute
        self.max_queue_templates = max_queue_templates
        self.max_batch_templates = max_batch_templates
        self.batch_wait = batch_wait_ms / 1000
        self.batch_wait_alone = batch_wait_alone
        self._pending: deque[_Entry[J, R]] = deque()
        self._pending_templates = 0
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self.seconds_per_template = 0.01  # running estimate for the retry hint of a full queue

    @property
    def pending_templates(self) -> int:
        """Templates queued and not yet taken into a batch."""
        return self._pending_templates

    async def submit(self, job: J, size: int) -> R:
        """Queue ``job`` (``size`` templates) and wait for its result; QueueFull when full."""
        if self._pending_templates + size > self.max_queue_templates:
            metrics.REJECTED.labels("queue_full").inc()
            retry = max(0.05, self._pending_templates * self.seconds_per_template)
            raise QueueFull(self._pending_templates, self.max_queue_templates, retry)
        self._ensure_worker()
        entry: _Entry[J, R] = _Entry(job, size, asyncio.get_running_loop().create_future())
        self._pending.append(entry)
        self._pending_templates += size
        metrics.QUEUE_DEPTH.set(self._pending_templates)
        assert self._arrived is not None
        self._arrived.set()
        try:
            return await entry.future
        except asyncio.CancelledError:
            self._drop(entry)  # the caller went away: its templates leave the queue now
            raise

    def _drop(self, entry: _Entry[J, R]) -> None:
        try:
            self._pending.remove(entry)
        except ValueError:  # already taken into a batch
            return
        self._pending_templates -= entry.size
        metrics.QUEUE_DEPTH.set(self._pending_templates)

    def _ensure_worker(self) -> None:
        if self._worker is None or self._worker.done():
            self._arrived = asyncio.Event()
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="scorer-batcher")

    async def close(self, error: BaseException) -> None:
        """Stop the worker; every request still waiting fails with ``error``."""
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        while self._pending:
            entry = self._pending.popleft()
            if not entry.future.done():
                entry.future.set_exception(error)
        self._pending_templates = 0
        metrics.QUEUE_DEPTH.set(0)

    def _take_batch(self) -> list[_Entry[J, R]]:
        """The next batch in arrival order, at most ``max_batch_templates`` unless one job is more."""
        batch: list[_Entry[J, R]] = []
        size = 0
        cap = self.max_batch_templates
        while self._pending and (not batch or size + self._pending[0].size <= cap):
            entry = self._pending.popleft()
            self._pending_templates -= entry.size
            if entry.future.done():  # cancelled before it was computed
                continue
            batch.append(entry)
            size += entry.size
        metrics.QUEUE_DEPTH.set(self._pending_templates)
        return batch

    def _timed_compute(self, jobs: list[J]) -> tuple[Sequence[R], float]:
        start = time.perf_counter()
        results = self.compute(jobs)
        return results, time.perf_counter() - start

    async def _run(self) -> None:
        """The single worker: coalesce queued jobs, compute each batch in a thread."""
        assert self._arrived is not None
        last_batch_jobs = 0
        while True:
            if not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            # Wait for company only when there is company: a lone request after a lone batch (a
            # single client, an idle server) runs at once instead of paying the wait every call.
            alone = len(self._pending) == 1 and last_batch_jobs <= 1 and not self.batch_wait_alone
            deadline = self._pending[0].enqueued + (0.0 if alone else self.batch_wait)
            while (
                self._pending_templates < self.max_batch_templates
                and (left := deadline - time.monotonic()) > 0
            ):
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except TimeoutError:
                    break
            batch = self._take_batch()
            if not batch:
                continue
            size = sum(e.size for e in batch)
            now = time.monotonic()
            for e in batch:
                metrics.QUEUE_WAIT.observe(now - e.enqueued)
            metrics.BATCH_SIZE.observe(size)
            last_batch_jobs = len(batch)
            try:
                results, seconds = await asyncio.to_thread(self._timed_compute, [e.job for e in batch])
            except Exception as exc:  # a compute failure fails this batch's requests, not the worker
                log.exception("scoring batch failed")
                for e in batch:
                    if not e.future.done():
                        e.future.set_exception(exc)
                continue
            # Smooth the per-template estimate used for the retry hint of a full queue.
            self.seconds_per_template = 0.8 * self.seconds_per_template + 0.2 * seconds / max(1, size)
            for e, result in zip(batch, results, strict=True):
                if not e.future.done():  # the caller may have gone while it was computed
                    e.future.set_result(result)


__all__ = ["Batcher"]

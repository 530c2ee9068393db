"""Runs searches as asyncio tasks: leases, checkpoints, resume on start-up, cancellation.

A background loop (every third of the lease) renews this replica's leases, notices
cancellation requests made on other replicas, and claims every unfinished search whose lease is
free or expired — which is how a restarted coordinator resumes what it (or a dead peer) was
running. A search resumes by replaying its journal (see :mod:`services.coordinator.search`).

A store outage (SQLite locked, PostgreSQL restarting) is ridden out: every store call a search
makes is retried with backoff for ``store_retry_seconds``; past that the search ends FAILED with
the reason, or — when even that can not be written — stays RUNNING under a lease that expires,
so this replica or a peer resumes it from its journal once the store is back.

Every store call runs in a worker thread (:class:`AsyncSearchStore`), so a slow or locked one
holds up only the search that made it, never the event loop with its RPCs and lease renewals.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from services.coordinator import metrics, search_metrics
from services.coordinator.async_store import AsyncSearchStore
from services.coordinator.description_search import DescriptionClimb
from services.coordinator.pools import initial_templates
from services.coordinator.search import (
    HillClimb,
    Proposal,
    Score,
    SearchConfig,
    SearchFailed,
    SearchState,
    TemplateProposer,
    TemplateScorer,
)
from services.coordinator.store import (
    CANCELLED,
    FAILED,
    MAX_OWNER_CHARS,
    SUCCEEDED,
    SearchRecord,
    SearchStore,
    is_transient,
)
from services.coordinator.watch import ITERATION_DONE, NEW_BEST, PHASE_CHANGED, STATE_CHANGED, Broadcaster

log = logging.getLogger(__name__)

T = TypeVar("T")

# Backoff between store retries: short first (a lock is usually brief), capped so a store that
# comes back is noticed within a second.
_FIRST_STORE_BACKOFF, _MAX_STORE_BACKOFF = 0.05, 1.0


class StoreUnavailable(SearchFailed):
    salvageable = False  # nothing more can be recorded, not even a partial result
    """The store stayed unreachable for the whole retry window."""

    def __init__(self, err: BaseException, window: float) -> None:
        cause = getattr(err, "orig", None) or err
        first_line = (str(cause).strip().splitlines() or [""])[0]
        super().__init__(
            "UNAVAILABLE", f"store unavailable for {window:g} s: {type(cause).__name__}: {first_line}"
        )


async def with_store_retry(call: Callable[[], Awaitable[T]], *, window: float) -> T:
    """``await call()``, retried with backoff while it fails transiently, for at most ``window`` seconds.

    Raises :class:`StoreUnavailable` when the window is spent; other errors pass through at once.
    """
    deadline = time.monotonic() + window
    delay = _FIRST_STORE_BACKOFF
    while True:
        try:
            return await call()
        except Exception as err:
            if not is_transient(err):
                raise
            if time.monotonic() + delay > deadline:
                raise StoreUnavailable(err, window) from err
            log.warning("store unavailable; retrying", extra={"error": type(err).__name__})
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_STORE_BACKOFF)


class LeaseLost(Exception):
    """Another replica took the search over; stop without touching its record."""


class StoreJournal:
    """The search's :class:`~services.coordinator.search.Journal` on the store, plus broadcasts."""

    def __init__(
        self,
        store: AsyncSearchStore,
        search_id: str,
        owner: str,
        broadcaster: Broadcaster,
        started_at: float,
        *,
        scores: dict[tuple[str, str], Score],
        proposals: dict[str, Proposal],
        steps: dict[str, dict[str, Any]] | None = None,
        store_retry_seconds: float = 30.0,
    ) -> None:
        self.store, self.search_id, self.owner = store, search_id, owner
        self.broadcaster = broadcaster
        self.started_at = started_at
        self.store_retry_seconds = store_retry_seconds
        self._scores = scores
        self._proposals = proposals
        self._steps = steps if steps is not None else {}
        self._best = -1.0
        self._saved_iterations = 0

    @classmethod
    async def load(
        cls,
        store: AsyncSearchStore,
        search_id: str,
        owner: str,
        broadcaster: Broadcaster,
        started_at: float,
        *,
        store_retry_seconds: float = 30.0,
    ) -> StoreJournal:
        """The journal with everything recorded so far (by this replica or an earlier owner)."""
        scores = await with_store_retry(lambda: store.scores(search_id), window=store_retry_seconds)
        proposals = await with_store_retry(lambda: store.proposals(search_id), window=store_retry_seconds)
        steps = await with_store_retry(lambda: store.steps(search_id), window=store_retry_seconds)
        return cls(
            store,
            search_id,
            owner,
            broadcaster,
            started_at,
            scores=scores,
            proposals=proposals,
            steps=steps,
            store_retry_seconds=store_retry_seconds,
        )

    @property
    def resumed(self) -> bool:
        """Whether an earlier run recorded anything."""
        return bool(self._scores or self._proposals or self._steps)

    def recorded_score(self, split: str, template: str) -> Score | None:
        """A score recorded before (this run or an earlier one)."""
        return self._scores.get((split, template))

    async def record_scores(
        self, split: str, scores: Sequence[Score], restart: int, iteration: int, origin: str
    ) -> None:
        """Persist a chunk of scores."""
        fresh = [s for s in scores if (split, s.template) not in self._scores]
        await with_store_retry(
            lambda: self.store.add_scores(self.search_id, split, fresh, restart, iteration, origin),
            window=self.store_retry_seconds,
        )
        for s in fresh:
            self._scores[(split, s.template)] = s

    def recorded_proposal(self, key: str) -> Proposal | None:
        """An LLM reply recorded before."""
        return self._proposals.get(key)

    async def record_proposal(self, key: str, proposal: Proposal) -> None:
        """Persist an LLM reply."""
        await with_store_retry(
            lambda: self.store.add_proposal(self.search_id, key, proposal), window=self.store_retry_seconds
        )
        self._proposals[key] = proposal

    def recorded_step(self, key: str) -> dict[str, Any] | None:
        """A description search step recorded before."""
        return self._steps.get(key)

    async def record_step(self, key: str, payload: dict[str, Any]) -> None:
        """Persist a description search step."""
        await with_store_retry(
            lambda: self.store.add_step(self.search_id, key, payload), window=self.store_retry_seconds
        )
        self._steps[key] = payload

    async def checkpoint(self, state: SearchState, event: str) -> None:
        """Save progress (fenced on our lease) and tell watchers what changed."""
        wall = time.time() - self.started_at
        if not await with_store_retry(
            lambda: self.store.save_progress(self.search_id, self.owner, state, wall),
            window=self.store_retry_seconds,
        ):
            raise LeaseLost(self.search_id)
        events = [PHASE_CHANGED]
        if event == "iteration":
            events = [ITERATION_DONE]
            summary = state.iterations[-1] if state.iterations else None
            if summary is not None and len(state.iterations) > self._saved_iterations:
                self._saved_iterations = len(state.iterations)
                if summary.iteration > 0 or summary.restart > 0:
                    iteration_phase = ("propose", summary.propose_seconds), ("score", summary.score_seconds)
                    for phase, seconds in iteration_phase:
                        metrics.ITERATION_SECONDS.labels(phase).observe(seconds)
            best = state.best
            if best is not None and best.accuracy > self._best:
                if self._best >= 0:
                    events.append(NEW_BEST)
                self._best = best.accuracy
        await _publish(self.broadcaster, self.store, self.search_id, events)


class SearchRunner:
    """Owns the searches this replica runs."""

    def __init__(
        self,
        store: AsyncSearchStore | SearchStore,
        scorer: TemplateScorer,
        proposer: TemplateProposer,
        *,
        broadcaster: Broadcaster | None = None,
        lease_seconds: float = 30.0,
        max_running: int = 8,
        max_pending: int | None = None,
        owner: str | None = None,
        store_retry_seconds: float = 30.0,
    ) -> None:
        # A plain SearchStore is wrapped: no store call of the runner is made on the event loop.
        self.store = store if isinstance(store, AsyncSearchStore) else AsyncSearchStore(store)
        self.scorer, self.proposer = scorer, proposer
        self.broadcaster = broadcaster or Broadcaster()
        self.lease_seconds = lease_seconds
        self.max_running = max_running
        self.max_pending = max_pending  # PENDING searches in the store (all replicas); None: no bound
        self.store_retry_seconds = store_retry_seconds
        host = socket.gethostname()[: MAX_OWNER_CHARS - 40]
        self.owner = owner or f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        if len(self.owner) > MAX_OWNER_CHARS:
            raise ValueError(f"replica id longer than {MAX_OWNER_CHARS} characters")
        self.tasks: dict[str, asyncio.Task[None]] = {}
        # The state of each search running here, for what reads it live (per-search metrics).
        self.live: dict[str, tuple[SearchRecord, SearchState]] = {}
        self._claiming: set[str] = set()  # leases being taken (the store call is in flight)
        self._loop_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False

    # ---- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Begin claiming (and so resuming) unfinished searches."""
        self._loop_task = asyncio.create_task(self._maintain(), name="search-leases")

    async def stop(self) -> None:
        """Stop running searches without ending them: their leases are released for a peer."""
        self._stopping = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        for task in list(self.tasks.values()):
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)

    # ---- API operations ------------------------------------------------------------------------

    async def submit(self, config: SearchConfig, request_id: str | None) -> tuple[SearchRecord, bool]:
        """Create (or find, by request id) a search; free slots go to the oldest waiting ones.

        So a new search starts at once when nothing older waits, and never ahead of a search that
        waits PENDING (accepted here or by a peer while full). Raises
        :class:`~services.coordinator.store.TooManyPending` past ``max_pending`` waiting searches.
        """
        record, created = await self.store.create(config, request_id, max_pending=self.max_pending)
        if created:
            await self._fill()
        return record, created

    async def cancel(self, search_id: str) -> SearchRecord | None:
        """Cancel promptly: the local task is cancelled (in-flight calls with it) and awaited."""
        await self.store.request_cancel(search_id)
        task = self.tasks.get(search_id)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        else:
            record = await self.store.get(search_id)
            if (
                record is not None
                and not record.done
                # Judged by the database's clock, as the lease was set: not this replica's.
                and (record.lease_owner is None or (record.lease_expires or 0) < await self.store.now())
            ):
                await self._finish(search_id, None, CANCELLED, "cancelled")
            # else: the owning replica sees the flag at its next lease renewal.
        return await self.store.get(search_id)

    # ---- internals -----------------------------------------------------------------------------

    async def _maintain(self) -> None:
        # Not only cancellation ends the loop: Python 3.11's wait_for loses a cancel that meets
        # its wake-up (gh-86296), and stop() would then wait forever for this task.
        while not self._stopping:
            try:
                # Judge only the searches renewed: one claimed during the renewal is not in ``held``.
                renewing = list(self.tasks)
                held = await self.store.renew(self.owner, renewing, self.lease_seconds)
                for sid in renewing:
                    task = self.tasks.get(sid)
                    if task is not None and (sid not in held or held[sid]):  # lost, or cancelled elsewhere
                        task.cancel()
                await self._fill()
            except Exception:  # a store hiccup must not end the loop
                log.exception("lease maintenance failed")
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.lease_seconds / 3)
            except TimeoutError:
                pass

    async def _fill(self) -> None:
        """Claim unfinished searches, oldest first, while this replica has free slots."""
        if len(self.tasks) + len(self._claiming) >= self.max_running or self._stopping:
            return
        # The whole list, not just as many as there are free slots: a peer (or a concurrent call
        # here) may take some of them first, and the next ones must then fill the slots.
        for sid in await self.store.claimable():
            if len(self.tasks) + len(self._claiming) >= self.max_running:
                break
            await self._claim(sid)

    async def _claim(self, search_id: str) -> None:
        # A search being claimed counts as running: submit and the lease loop may claim the same
        # one at once, and the store would grant both (the lease is already ours the second time).
        if (
            search_id in self.tasks
            or search_id in self._claiming
            or self._stopping
            or len(self.tasks) + len(self._claiming) >= self.max_running
        ):
            return
        self._claiming.add(search_id)
        try:
            # Cancelled here (stop), the lease may still be taken in its thread: it then expires.
            if not await self.store.try_acquire(search_id, self.owner, self.lease_seconds):
                return
            if self._stopping:  # stop() began meanwhile and will not cancel a task made now
                await self.store.release(search_id, self.owner)
                return
            self.tasks[search_id] = asyncio.create_task(self._run(search_id), name=f"search-{search_id}")
        finally:
            self._claiming.discard(search_id)

    async def _store_call(self, call: Callable[[], Awaitable[T]]) -> T:
        return await with_store_retry(call, window=self.store_retry_seconds)

    async def _run(self, search_id: str) -> None:
        metrics.RUNNING.inc()
        state: SearchState | None = None
        try:
            record = await self._store_call(lambda: self.store.get(search_id))
            if record is None or record.done:
                return
            if record.cancel_requested:
                await self._finish(search_id, self.owner, CANCELLED, "cancelled")
                return
            if not await self._store_call(lambda: self.store.mark_running(search_id, self.owner)):
                return
            record = await self._store_call(lambda: self.store.get(search_id))
            assert record is not None and record.start_time is not None
            await self._publish(search_id, [STATE_CHANGED])
            journal = await StoreJournal.load(
                self.store,
                search_id,
                self.owner,
                self.broadcaster,
                record.start_time,
                store_retry_seconds=self.store_retry_seconds,
            )
            state = SearchState(record.config)
            self.live[search_id] = (record, state)
            log.info("search running", extra={"search": search_id, "resumed": journal.resumed})
            climb: HillClimb | DescriptionClimb
            if record.config.descriptions is not None:
                climb = DescriptionClimb(
                    state,
                    self.scorer,  # type: ignore[arg-type]  # the services' clients score descriptions too
                    self.proposer,  # type: ignore[arg-type]
                    journal,
                    started_at=record.start_time,
                )
            else:
                climb = HillClimb(
                    state,
                    self.scorer,
                    self.proposer,
                    journal,
                    initial_templates,
                    started_at=record.start_time,
                )
            await climb.run()
            await self._finish(search_id, self.owner, SUCCEEDED, state.end_reason, state=state)
        except asyncio.CancelledError:
            if self._stopping:
                try:
                    await self.store.release(search_id, self.owner)  # a peer (or our restart) resumes it
                except Exception:  # the lease then simply expires
                    log.warning("lease not released", extra={"search": search_id}, exc_info=True)
            else:
                await self._finish(search_id, self.owner, CANCELLED, "cancelled", state=state)
        except LeaseLost:
            log.warning("lease lost; another replica runs the search", extra={"search": search_id})
        except SearchFailed as err:
            await self._finish(search_id, self.owner, FAILED, err.message, code=err.code, state=state)
        except Exception as err:
            log.exception("search crashed", extra={"search": search_id})
            await self._finish(
                search_id, self.owner, FAILED, f"internal error: {err}", code="INTERNAL", state=state
            )
        finally:
            metrics.RUNNING.dec()
            self.live.pop(search_id, None)
            self.tasks.pop(search_id, None)
            self._wake.set()  # a slot is free: claim the next waiting search

    async def _finish(
        self,
        search_id: str,
        owner: str | None,
        outcome: str,
        reason: str,
        *,
        code: str = "",
        state: SearchState | None = None,
    ) -> None:
        try:
            finished = await self._store_call(
                lambda: self.store.finish(
                    search_id, owner, outcome, end_reason=reason, error_code=code, progress_state=state
                )
            )
        except StoreUnavailable:
            # Not even the outcome can be written: the search stays RUNNING, its lease expires and
            # it is resumed from its journal (here or on a peer) once the store is back.
            log.error("search end not recorded: store unavailable", extra={"search": search_id})
            return
        if finished:
            metrics.SEARCHES.labels(outcome.lower()).inc()
            search_metrics.count_search_end(state, reason)
            try:
                record = await self.store.get(search_id)
            except Exception as err:  # the outcome is recorded; only the duration metric is missed
                if not is_transient(err):
                    raise
                record = None
            if record is not None:
                metrics.SEARCH_SECONDS.observe(record.progress.wall_seconds)
            log.info("search ended", extra={"search": search_id, "state": outcome, "reason": reason})
        await self._publish(search_id, [STATE_CHANGED])

    async def _publish(self, search_id: str, events: list[str]) -> None:
        await _publish(self.broadcaster, self.store, search_id, events)


async def _publish(
    broadcaster: Broadcaster, store: AsyncSearchStore, search_id: str, events: list[str]
) -> None:
    """Tell local watchers; a snapshot the store can not give now is skipped (watchers also poll)."""
    try:
        await broadcaster.publish(search_id, events, lambda full: store.get(search_id, with_history=full))
    except Exception as err:
        if not is_transient(err):
            raise
        log.warning("watchers not told: store unavailable", extra={"search": search_id})

"""The search store for async code: every call runs in a worker thread, never on the event loop.

:class:`~services.coordinator.store.SearchStore` is synchronous SQLAlchemy; one locked SQLite
write (up to its 10 s busy timeout) or one slow PostgreSQL query run on the loop would stall
every RPC, health check and lease renewal of the replica. Here each call is handed to a thread
pool of this store's own, so the loop only awaits it.

Thread safety: every ``SearchStore`` method is one ``engine.begin()``/``engine.connect()`` block,
a connection checked out of the engine's pool for that call and returned at its end, so no
connection is used by two threads at once. A SQLite file engine is pooled with
``check_same_thread=False`` (SQLAlchemy's default for files), so a pooled connection may be
checked out again by another worker thread.

The pool has as many threads as the engine's connection pool has connections (SQLAlchemy's
default 5 + 10 overflow), so a worker never waits for a connection; it is not the loop's default
executor, which other code shares and which on a small machine has only a few threads.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from services.coordinator.search import Proposal, Score, SearchConfig, SearchState
from services.coordinator.store import SearchRecord, SearchStore

P = ParamSpec("P")
T = TypeVar("T")

STORE_THREADS = 15  # = SQLAlchemy's default QueuePool size (5) plus its overflow (10)


class AsyncSearchStore:
    """:class:`SearchStore` with every method awaitable and run off the event loop."""

    def __init__(self, store: SearchStore, *, threads: int = STORE_THREADS) -> None:
        self.sync = store  # for code that is not on the loop (tests, tools)
        self._threads = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="search-store")

    async def _call(self, method: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        # Like asyncio.to_thread (context variables carried over), on this store's own threads.
        loop = asyncio.get_running_loop()
        call = functools.partial(contextvars.copy_context().run, method, *args, **kwargs)
        return await loop.run_in_executor(self._threads, call)

    async def close(self) -> None:
        """Wait for calls in flight, then release the threads and the connections."""
        await asyncio.to_thread(self._threads.shutdown, wait=True)
        self.sync.close()

    # ---- searches ------------------------------------------------------------------------------

    async def create(
        self, config: SearchConfig, request_id: str | None, *, max_pending: int | None = None
    ) -> tuple[SearchRecord, bool]:
        """See :meth:`SearchStore.create`."""
        return await self._call(self.sync.create, config, request_id, max_pending=max_pending)

    async def get(self, search_id: str, *, with_history: bool = False) -> SearchRecord | None:
        """See :meth:`SearchStore.get`."""
        return await self._call(self.sync.get, search_id, with_history=with_history)

    async def list_searches(self, *, state: str | None, limit: int, offset: int) -> list[SearchRecord]:
        """See :meth:`SearchStore.list_searches`."""
        return await self._call(self.sync.list_searches, state=state, limit=limit, offset=offset)

    async def save_progress(
        self, search_id: str, owner: str, state: SearchState, wall_seconds: float
    ) -> bool:
        """See :meth:`SearchStore.save_progress`."""
        return await self._call(self.sync.save_progress, search_id, owner, state, wall_seconds)

    async def mark_running(self, search_id: str, owner: str) -> bool:
        """See :meth:`SearchStore.mark_running`."""
        return await self._call(self.sync.mark_running, search_id, owner)

    async def finish(
        self,
        search_id: str,
        owner: str | None,
        state: str,
        *,
        end_reason: str,
        error_code: str = "",
        progress_state: SearchState | None = None,
        wall_seconds: float | None = None,
    ) -> bool:
        """See :meth:`SearchStore.finish`."""
        return await self._call(
            self.sync.finish,
            search_id,
            owner,
            state,
            end_reason=end_reason,
            error_code=error_code,
            progress_state=progress_state,
            wall_seconds=wall_seconds,
        )

    async def request_cancel(self, search_id: str) -> None:
        """See :meth:`SearchStore.request_cancel`."""
        await self._call(self.sync.request_cancel, search_id)

    # ---- leases --------------------------------------------------------------------------------

    async def try_acquire(self, search_id: str, owner: str, lease_seconds: float) -> bool:
        """See :meth:`SearchStore.try_acquire`."""
        return await self._call(self.sync.try_acquire, search_id, owner, lease_seconds)

    async def renew(self, owner: str, search_ids: Sequence[str], lease_seconds: float) -> dict[str, bool]:
        """See :meth:`SearchStore.renew`."""
        return await self._call(self.sync.renew, owner, list(search_ids), lease_seconds)

    async def release(self, search_id: str, owner: str) -> None:
        """See :meth:`SearchStore.release`."""
        await self._call(self.sync.release, search_id, owner)

    async def claimable(self) -> list[str]:
        """See :meth:`SearchStore.claimable`."""
        return await self._call(self.sync.claimable)

    async def now(self) -> float:
        """See :meth:`SearchStore.now`."""
        return await self._call(self.sync.now)

    # ---- journal rows --------------------------------------------------------------------------

    async def scores(self, search_id: str) -> dict[tuple[str, str], Score]:
        """See :meth:`SearchStore.scores`."""
        return await self._call(self.sync.scores, search_id)

    async def add_scores(
        self, search_id: str, split: str, scores: Sequence[Score], restart: int, iteration: int, origin: str
    ) -> None:
        """See :meth:`SearchStore.add_scores`."""
        await self._call(self.sync.add_scores, search_id, split, list(scores), restart, iteration, origin)

    async def proposals(self, search_id: str) -> dict[str, Proposal]:
        """See :meth:`SearchStore.proposals`."""
        return await self._call(self.sync.proposals, search_id)

    async def add_proposal(self, search_id: str, key: str, proposal: Proposal) -> None:
        """See :meth:`SearchStore.add_proposal`."""
        await self._call(self.sync.add_proposal, search_id, key, proposal)

    async def steps(self, search_id: str) -> dict[str, dict[str, Any]]:
        """See :meth:`SearchStore.steps`."""
        return await self._call(self.sync.steps, search_id)

    async def add_step(self, search_id: str, key: str, payload: dict[str, Any]) -> None:
        """See :meth:`SearchStore.add_step`."""
        await self._call(self.sync.add_step, search_id, key, payload)

    async def add_event(self, search_id: str, kind: str, detail: str = "") -> None:
        """See :meth:`SearchStore.add_event`."""
        await self._call(self.sync.add_event, search_id, kind, detail)

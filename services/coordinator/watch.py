"""WatchSearch: per-search broadcast of changes to any number of concurrent watchers.

The replica that runs a search publishes every checkpoint here; each watcher has its own queue,
so a slow watcher never delays the search or the other watchers. A watcher of a search that runs
on another replica sees no local events and falls back to polling the store.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from promptclimb.common.vocabulary import SearchEvent
from services.coordinator.async_store import AsyncSearchStore
from services.coordinator.store import SearchRecord

SNAPSHOT, STATE_CHANGED, PHASE_CHANGED, ITERATION_DONE, NEW_BEST = (e.value for e in SearchEvent)


@dataclass(eq=False)  # identity hashing: each watcher is its own set member
class _Watcher:
    full: bool
    queue: asyncio.Queue[tuple[str, SearchRecord]] = field(default_factory=asyncio.Queue)


class Broadcaster:
    """Fans search changes out to the watchers of each search."""

    def __init__(self) -> None:
        self._watchers: dict[str, set[_Watcher]] = {}

    def subscribe(self, search_id: str, *, full: bool) -> _Watcher:
        """Start receiving changes of ``search_id``."""
        watcher = _Watcher(full)
        self._watchers.setdefault(search_id, set()).add(watcher)
        return watcher

    def unsubscribe(self, search_id: str, watcher: _Watcher) -> None:
        """Stop receiving."""
        group = self._watchers.get(search_id)
        if group is not None:
            group.discard(watcher)
            if not group:
                del self._watchers[search_id]

    async def publish(
        self, search_id: str, events: list[str], load: Callable[[bool], Awaitable[SearchRecord | None]]
    ) -> None:
        """Deliver ``events`` with one snapshot (loaded once, with history if a watcher wants it)."""
        group = set(self._watchers.get(search_id, ()))
        if not group:
            return
        record = await load(any(w.full for w in group))
        # Watchers that left during the load are gone; those that came read their own snapshot.
        group &= self._watchers.get(search_id, set())
        if record is None:
            return
        for w in group:
            for e in events:
                w.queue.put_nowait((e, record))


async def watch(
    store: AsyncSearchStore,
    broadcaster: Broadcaster,
    search_id: str,
    *,
    full: bool,
    poll_seconds: float = 1.0,
) -> AsyncIterator[tuple[str, SearchRecord]]:
    """The snapshot first, then every change, until the search ends. Empty if it is unknown."""
    watcher = broadcaster.subscribe(search_id, full=full)
    try:
        first = await store.get(search_id, with_history=full)
        if first is None:
            return
        yield SNAPSHOT, first
        last = first
        while not last.done:
            try:
                record: SearchRecord
                event, record = await asyncio.wait_for(watcher.queue.get(), timeout=poll_seconds)
                if record.update_time < last.update_time:
                    continue  # already part of what this watcher has seen
            except TimeoutError:
                polled = await store.get(search_id, with_history=full)
                if polled is None or polled.update_time == last.update_time:
                    continue
                record = polled
                if record.state != last.state:
                    event = STATE_CHANGED
                elif len(record.progress.iterations) != len(last.progress.iterations):
                    event = ITERATION_DONE
                else:
                    event = PHASE_CHANGED
            last = record
            yield event, record
    finally:
        broadcaster.unsubscribe(search_id, watcher)

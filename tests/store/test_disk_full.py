"""The store's disk fills up mid-search: clear statuses, nothing lost, still SERVING, resumes.

Twice: on a real 16 MiB tmpfs of the test's own, filled to the last byte by a filler file and
freed by deleting it (where the test may mount one: root with CAP_SYS_ADMIN; skipped elsewhere),
and with the full disk injected at the store's writes, which runs anywhere: while "full", every
INSERT, UPDATE and DELETE the coordinator's engine executes fails with the error SQLite gives on a
full filesystem (``sqlite3.OperationalError: database or disk is full``, code SQLITE_FULL); reads
go on, as they do on a full disk. Everything else is real: the coordinator in-process on its gRPC
API, the runner, and the fake scorer and optimizer on loopback.
"""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import Engine, event

from promptclimb.api.v1 import coordinator_pb2, coordinator_pb2_grpc
from promptclimb.common.errors import retry_delay_of
from services.coordinator.clients import GrpcProposer, GrpcScorer, RetryPolicy
from services.coordinator.store import RUNNING, SUCCEEDED, SearchRecord, SearchStore, is_disk_full
from tests.coordinator.fakes import FakeOptimizer, FakeScorer, fake_accuracy, start_optimizer, start_scorer
from tests.support.coordinator import coordinator_in_process

pytestmark = pytest.mark.timeout(90)

RETRY = RetryPolicy(max_attempts=3, backoff_seconds=0.02, max_backoff_seconds=0.05)
ITERATIONS = 6


class Disk:
    """Where the store lives; fills and frees. Counts the store's writes that met it full."""

    def __init__(self, engine: Engine) -> None:
        self.refused = 0  # the engine's errors that were a full disk, as the store sees them
        event.listen(engine, "handle_error", self._count)

    def _count(self, context: Any) -> None:
        if is_disk_full(context.original_exception):
            self.refused += 1

    def fill(self) -> None:
        raise NotImplementedError

    def free(self) -> None:
        raise NotImplementedError


class InjectedFullDisk(Disk):
    """While full, every INSERT/UPDATE/DELETE fails as SQLite's do on a full filesystem."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self.full = False
        event.listen(engine, "do_execute", self._execute)
        event.listen(engine, "do_executemany", self._execute)

    def fill(self) -> None:
        self.full = True

    def free(self) -> None:
        self.full = False

    def _execute(self, cursor: Any, statement: str, parameters: Any, context: Any) -> bool:
        if self.full and statement.lstrip().split(None, 1)[0].upper() in {"INSERT", "UPDATE", "DELETE"}:
            err = sqlite3.OperationalError("database or disk is full")
            err.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
            err.sqlite_errorname = "SQLITE_FULL"  # type: ignore[attr-defined]
            raise err
        return False  # not handled: the statement runs as usual


class TmpfsDisk(Disk):
    """A real small tmpfs under the store, filled to the last byte by a filler file."""

    def __init__(self, engine: Engine, db: Path) -> None:
        super().__init__(engine)
        self.db, self.filler = db, db.parent / "filler"

    def fill(self) -> None:
        # Empty the WAL first: SQLite rewrites a WAL it has checkpointed in the blocks it already
        # holds, so only an empty one makes the very next commit need a block of the full disk.
        with sqlite3.connect(self.db, timeout=10) as c:
            deadline = time.monotonic() + 10
            while c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] != 0:
                assert time.monotonic() < deadline, "the WAL could not be checkpointed"
                time.sleep(0.01)
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT)
        try:
            for size in (1 << 20, 1 << 12, 1):  # down to the last byte
                while True:
                    try:
                        os.write(fd, b"\0" * size)
                    except OSError as err:
                        if err.errno != errno.ENOSPC:
                            raise
                        break
        finally:
            os.close(fd)
        assert os.statvfs(self.db.parent).f_bavail == 0

    def free(self) -> None:
        self.filler.unlink()


@pytest.fixture(params=["injected", "tmpfs"])
def store_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The folder the store lives in: plain, or a 16 MiB tmpfs of its own (skipped where not allowed)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if request.param == "injected":
        yield "injected", folder
        return
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mount.returncode != 0:
        pytest.skip(f"can not mount a tmpfs here (root with CAP_SYS_ADMIN needed): {mount.stderr.strip()}")
    try:
        yield "tmpfs", folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@dataclass
class Served:
    store: SearchStore
    disk: Disk
    scorer: FakeScorer
    search: coordinator_pb2_grpc.CoordinatorServiceStub
    health: health_pb2_grpc.HealthStub

    async def start(self, marker: str) -> str:
        spec = coordinator_pb2.SearchSpec(dataset="toy", iterations=ITERATIONS, templates_per_iteration=2)
        spec.initial_pool.templates.templates.extend(f"a {marker} photo {i} of a {{}}." for i in range(3))
        reply = await self.search.StartSearch(coordinator_pb2.StartSearchRequest(spec=spec), timeout=10)
        return reply.search.name.removeprefix("searches/")

    async def wait_for(self, search_id: str, done: Any, within: float = 60) -> SearchRecord:
        deadline = time.monotonic() + within
        while True:
            record = await asyncio.to_thread(self.store.get, search_id, with_history=True)
            assert record is not None
            if done(record):
                return record
            assert time.monotonic() < deadline, f"timed out; last seen {record.state} {record.iteration}"
            await asyncio.sleep(0.05)


@pytest.fixture
async def served(store_dir: tuple[str, Path]) -> AsyncIterator[Served]:
    scorer = FakeScorer(delay=0.05)  # a search of six iterations takes a couple of seconds
    scorer_server, scorer_port = await start_scorer(scorer)
    optimizer_server, optimizer_port = await start_optimizer(FakeOptimizer())
    grpc_scorer = GrpcScorer(f"127.0.0.1:{scorer_port}", chunk_size=2, deadline_seconds=10, retry=RETRY)
    proposer = GrpcProposer(f"127.0.0.1:{optimizer_port}", deadline_seconds=10, retry=RETRY)
    try:
        kind, folder = store_dir
        db = folder / "s.db"
        async with coordinator_in_process(db, grpc_scorer, proposer, lease_seconds=3) as c:
            disk = InjectedFullDisk(c.store.engine) if kind == "injected" else TmpfsDisk(c.store.engine, db)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{c.port}") as channel:
                yield Served(
                    c.store,
                    disk,
                    scorer,
                    coordinator_pb2_grpc.CoordinatorServiceStub(channel),
                    health_pb2_grpc.HealthStub(channel),
                )
    finally:
        await scorer_server.stop(0)
        await optimizer_server.stop(0)


async def test_a_full_disk_pauses_the_search_answers_resource_exhausted_and_loses_nothing(
    served: Served,
) -> None:
    search_id = await served.start("before")
    await served.wait_for(search_id, lambda r: r.iteration >= 2)

    await asyncio.to_thread(served.disk.fill)
    # The running search meets the full disk at its next write.
    deadline = time.monotonic() + 30
    while served.disk.refused == 0:
        assert time.monotonic() < deadline, "the search never wrote"
        await asyncio.sleep(0.02)
    before = await served.wait_for(search_id, lambda r: True)
    assert before.state == RUNNING

    # A new search can not be recorded: RESOURCE_EXHAUSTED saying why, with when to retry.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await served.start("during")
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "disk is full" in (caught.value.details() or "")
    assert retry_delay_of(caught.value) == pytest.approx(10.0)
    # Reads still answer, the service is still SERVING, and the search has not moved on.
    got = await served.search.GetSearch(coordinator_pb2.GetSearchRequest(name=f"searches/{search_id}"))
    assert got.search.state == coordinator_pb2.SEARCH_STATE_RUNNING
    check = await served.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert check.status == health_pb2.HealthCheckResponse.SERVING
    refused = served.disk.refused
    while served.disk.refused < refused + 3:  # it keeps retrying rather than giving up
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    during = await served.wait_for(search_id, lambda r: True)
    assert during.state == RUNNING and during.iteration == before.iteration
    assert [t.template for t in during.history] == [t.template for t in before.history]

    served.disk.free()  # space is freed
    done = await served.wait_for(search_id, lambda r: r.done)
    assert done.state == SUCCEEDED, done.progress.end_reason
    assert [i.iteration for i in done.progress.iterations] == list(range(ITERATIONS + 1))
    after = {t.template: t for t in done.history}
    for t in before.history:  # everything recorded before the disk filled is there, unchanged
        assert after[t.template] == t
    templates = [t.template for t in done.history]
    assert len(templates) == len(set(templates)) == 3 + 2 * ITERATIONS
    for t in done.history:
        assert t.accuracy == pytest.approx(fake_accuracy(t.template))
    # Each scored once, but for the one chunk (two templates) in flight when the disk filled.
    assert sum(served.scorer.scored[("train", t)] - 1 for t in templates) <= 2
    # And new searches are taken again, and run to the end.
    again = await served.start("after")
    assert (await served.wait_for(again, lambda r: r.done)).state == SUCCEEDED


def test_a_full_disk_is_told_apart_from_other_store_errors() -> None:
    import errno

    from sqlalchemy.exc import OperationalError

    from services.coordinator.store import is_disk_full, is_transient

    pg_errors = pytest.importorskip("psycopg.errors")  # the postgres extra

    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
    locked = sqlite3.OperationalError("database is locked")
    locked.sqlite_errorcode = sqlite3.SQLITE_BUSY  # type: ignore[attr-defined]
    wrapped = OperationalError("INSERT ...", {}, full)
    for err in (
        full,
        wrapped,
        pg_errors.DiskFull("could not extend file"),
        OSError(errno.ENOSPC, "full"),
    ):
        assert is_disk_full(err), err
    for err in (locked, OperationalError("UPDATE ...", {}, locked), OSError(errno.EACCES, "denied")):
        assert not is_disk_full(err), err
    assert is_transient(wrapped)  # retried by the runner: the search waits for space, not fails

"""Durable search records in any SQLAlchemy database (a SQLite file by default).

Tables: ``searches`` (one row per search: spec, state, progress, lease), ``scored_templates``
(every score, unique per search/split/template so nothing is scored twice), ``llm_calls`` (every
optimizer reply under a deterministic key, so a resumed search never asks again),
``description_steps`` (a description search's optimizer replies and description-set scores, each
under its step's key, for the same replay) and ``events``.

Ownership: a replica runs a search only while it holds the row's lease (``lease_owner``,
``lease_expires``), taken and renewed by conditional UPDATEs — atomic on SQLite and PostgreSQL
alike — and every progress write is fenced on the owner, so a replica that lost its lease can
not overwrite the new owner's progress.

Lease time is the database's clock, never a replica's: on PostgreSQL every lease is taken, renewed
and judged against the server's ``clock_timestamp()`` inside the UPDATE itself, so a replica whose
wall clock is off by a minute neither takes a live lease nor keeps a dead one. SQLite has no server:
every replica of a SQLite store runs on the one host whose file it is, so that host's clock (the
store's ``clock``, ``time.time`` unless a test injects one) is the database's clock.

Schema: the ``promptclimb_schema`` table holds the schema's version (:data:`SCHEMA_VERSION`). At
start :meth:`SearchStore.__init__` refuses, with :class:`StoreRefused` naming the file or URL, a
file that is not a SQLite database, a database of someone else's tables, and a schema newer than
this code; an older one is migrated in place, one step of :data:`MIGRATIONS` per version, inside one
transaction that holds the database (``BEGIN IMMEDIATE`` on SQLite, an advisory lock on
PostgreSQL) so two replicas starting at once migrate it once. Each step is idempotent as well.

Outages: a restarted PostgreSQL leaves dead connections in the pool, so the engine pings a
connection before handing it out; an outage still in progress surfaces as an error that
:func:`is_transient` recognises, which the runner retries. The journal inserts are idempotent
(a retried insert whose first commit did land, or a row a former owner wrote, is skipped).
"""

from __future__ import annotations

import errno
import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    ColumnElement,
    Connection,
    Engine,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    cast,
    create_engine,
    event,
    extract,
    func,
    insert,
    inspect,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.pool import SingletonThreadPool

from promptclimb.common.vocabulary import LifecycleState
from services.coordinator.search import (
    DescriptionResult,
    IterationSummary,
    Proposal,
    Score,
    ScoredTemplate,
    SearchConfig,
    SearchResult,
    SearchState,
    TransferScore,
    Usage,
)

log = logging.getLogger(__name__)

metadata = MetaData()

# The schema this code reads and writes; a database records its own in ``promptclimb_schema``.
SCHEMA_VERSION = 2

# Replica ids are host names plus a suffix; PostgreSQL enforces the column length (SQLite does not).
MAX_OWNER_CHARS = 255

searches = Table(
    "searches",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("request_id", String(200), unique=True, nullable=True),
    Column("state", String(16), nullable=False, index=True),
    Column("phase", String(16), nullable=False),
    Column("restart", Integer, nullable=False, default=0),
    Column("iteration", Integer, nullable=False, default=0),
    Column("config", Text, nullable=False),
    Column("progress", Text, nullable=False, default="{}"),
    Column("create_time", Float, nullable=False, index=True),
    Column("update_time", Float, nullable=False),
    Column("start_time", Float, nullable=True),
    Column("end_time", Float, nullable=True),
    Column("lease_owner", String(MAX_OWNER_CHARS), nullable=True),
    Column("lease_expires", Float, nullable=True),
    Column("cancel_requested", Boolean, nullable=False, default=False),
)

scored_templates = Table(
    "scored_templates",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("search_id", String(64), nullable=False, index=True),
    Column("split", String(64), nullable=False),
    Column("template", Text, nullable=False),
    Column("accuracy", Float, nullable=False),
    Column("correct", Integer, nullable=False),
    Column("total", Integer, nullable=False),
    Column("restart", Integer, nullable=False),
    Column("iteration", Integer, nullable=False),
    Column("origin", String(16), nullable=False),
    Column("error", Text, nullable=True),
    Column("loss", Float, nullable=True),  # added after 0.1: see Store._upgrade
    # Per-image bits and float32 losses (promptclimb.common.per_image), CONFIDENT searches only:
    # what a resumed or replayed search compares without rescoring. Added later: see _upgrade.
    Column("per_image_correct", LargeBinary, nullable=True),
    Column("per_image_loss", LargeBinary, nullable=True),
    UniqueConstraint("search_id", "split", "template", name="uq_scored_once"),
)

llm_calls = Table(
    "llm_calls",
    metadata,
    Column("search_id", String(64), primary_key=True),
    Column("call_key", String(64), primary_key=True),
    Column("reply", Text, nullable=False),
    Column("create_time", Float, nullable=False),
)

# A description search's journal: every step (an optimizer reply, a description set's score) as
# JSON under a deterministic key ("llm/describe", "score/train/round-0", ...), written once.
description_steps = Table(
    "description_steps",
    metadata,
    Column("search_id", String(64), primary_key=True),
    Column("step_key", String(128), primary_key=True),
    Column("payload", Text, nullable=False),
    Column("create_time", Float, nullable=False),
)

events = Table(
    "events",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("search_id", String(64), nullable=False, index=True),
    Column("time", Float, nullable=False),
    Column("type", String(32), nullable=False),
    Column("detail", Text, nullable=False, default=""),
)

schema_info = Table(
    "promptclimb_schema",
    metadata,
    Column("id", Integer, primary_key=True),  # always 1: a single row
    Column("version", Integer, nullable=False),
)

PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED = (s.value for s in LifecycleState)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})


class StoreRefused(Exception):
    """The store given can not be used as it is (not a database, foreign tables, newer schema)."""


class TooManyPending(Exception):
    """A new search refused: ``pending`` searches already wait to run, at least the bound allowed."""

    def __init__(self, pending: int, bound: int) -> None:
        super().__init__(f"{pending} searches are already waiting to run (at most {bound})")
        self.pending, self.bound = pending, bound


@dataclass(frozen=True)
class Migration:
    """One step: a database at ``to_version - 1`` is brought to ``to_version`` by ``apply``."""

    to_version: int
    what: str
    apply: Callable[[Connection], None]


def _migrate_unversioned(c: Connection) -> None:
    """Version 0 (stores made before the version table) -> 1: tables and columns added since 0.1.

    Missing tables are created; ``scored_templates.loss``, ``per_image_correct`` and
    ``per_image_loss`` are added as nullable columns (``ALTER TABLE ... ADD COLUMN``, which SQLite
    and PostgreSQL both accept), so old rows read NULL (their ties keep earliest-first order;
    CONFIDENT ranks them by accuracy and loss).
    """
    metadata.create_all(c, tables=[searches, scored_templates, llm_calls, events, schema_info])
    present = {col["name"] for col in inspect(c).get_columns("scored_templates")}
    added = (("loss", Float()), ("per_image_correct", LargeBinary()), ("per_image_loss", LargeBinary()))
    for name, kind in added:  # BLOB on SQLite, BYTEA on PostgreSQL
        if name not in present:
            sql_type = kind.compile(dialect=c.dialect)
            c.execute(text(f"ALTER TABLE scored_templates ADD COLUMN {name} {sql_type}"))


def _add_description_steps(c: Connection) -> None:
    """Version 1 -> 2: the description search journal (a new table; nothing else changes)."""
    metadata.create_all(c, tables=[description_steps])


# MIGRATIONS[v] takes a database from version v to v + 1; append a step with each schema change.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "tables and columns added before the schema was versioned", _migrate_unversioned),
    Migration(2, "the description search journal", _add_description_steps),
)
assert len(MIGRATIONS) == SCHEMA_VERSION and all(m.to_version == i + 1 for i, m in enumerate(MIGRATIONS))

# Any constant will do: it names the lock that serialises migrations on a PostgreSQL database.
_PG_MIGRATION_LOCK = 0x70636C6D62
# Likewise for admissions: StartSearch's count of PENDING searches and its insert (max_pending).
_PG_ADMISSION_LOCK = 0x70636C6D63


def database_url(store: str) -> str:
    """A SQLAlchemy URL from ``store``: a URL as-is, anything else is a SQLite file path."""
    if "://" in store:
        return store
    return f"sqlite:///{Path(store).expanduser().resolve()}"


def is_transient(err: BaseException) -> bool:
    """Whether a store error is an outage worth retrying (server restarting, lock held, link lost).

    Constraint violations, bad data and programming errors are not: retrying cannot fix them.
    A full disk (:func:`is_disk_full`) is, deliberately: nothing recorded is lost, reads still
    work, and a write retried once space is freed goes through, so a search pauses, not fails.
    """
    if isinstance(err, (OperationalError, InterfaceError)):
        return True
    return isinstance(err, DBAPIError) and err.connection_invalidated


def is_disk_full(err: BaseException) -> bool:
    """Whether a store error is a full disk: SQLite's SQLITE_FULL, PostgreSQL's disk_full, ENOSPC."""
    cause = getattr(err, "orig", None) or err
    if isinstance(cause, sqlite3.Error):
        code = getattr(cause, "sqlite_errorcode", None)
        return code == sqlite3.SQLITE_FULL or (code is None and "database or disk is full" in str(cause))
    if getattr(cause, "sqlstate", None) == "53100":  # PostgreSQL: could not extend file ...
        return True
    return isinstance(cause, OSError) and cause.errno == errno.ENOSPC


@dataclass
class Progress:
    """The progress fields of a search row (stored as JSON)."""

    iterations: list[IterationSummary] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    best: ScoredTemplate | None = None
    result: SearchResult | None = None
    end_reason: str = ""
    error_code: str = ""  # a grpc.StatusCode name when FAILED
    wall_seconds: float = 0.0

    def to_json(self) -> str:
        """Serialise."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Progress:
        """Deserialise."""
        d: dict[str, Any] = json.loads(text or "{}")
        result = d.get("result")
        return cls(
            iterations=[IterationSummary(**i) for i in d.get("iterations", [])],
            usage=Usage(**d.get("usage", {})),
            best=ScoredTemplate(**d["best"]) if d.get("best") else None,
            result=(
                SearchResult(
                    best=ScoredTemplate(**result["best"]),
                    best_evaluation_accuracy=result["best_evaluation_accuracy"],
                    ensemble_templates=tuple(result["ensemble_templates"]),
                    ensemble_evaluation_accuracy=result["ensemble_evaluation_accuracy"],
                    partial=result.get("partial", False),
                    tied_templates=tuple(result.get("tied_templates", ())),
                    greedy_ensemble_templates=tuple(result.get("greedy_ensemble_templates", ())),
                    greedy_ensemble_evaluation_accuracy=result.get(
                        "greedy_ensemble_evaluation_accuracy", 0.0
                    ),
                    transfer=tuple(TransferScore(**t) for t in result.get("transfer", ())),
                    descriptions=(
                        DescriptionResult.from_json(result["descriptions"])
                        if result.get("descriptions")
                        else None
                    ),
                )
                if result
                else None
            ),
            end_reason=d.get("end_reason", ""),
            error_code=d.get("error_code", ""),
            wall_seconds=d.get("wall_seconds", 0.0),
        )


@dataclass
class SearchRecord:
    """One search as stored."""

    id: str
    request_id: str | None
    config: SearchConfig
    state: str
    phase: str
    restart: int
    iteration: int
    progress: Progress
    create_time: float
    update_time: float
    start_time: float | None
    end_time: float | None
    lease_owner: str | None
    lease_expires: float | None
    cancel_requested: bool
    history: list[ScoredTemplate] = field(default_factory=list)

    @property
    def done(self) -> bool:
        """Whether the search reached a terminal state."""
        return self.state in TERMINAL


class SearchStore:
    """Reads and writes search records; every method is one short transaction.

    Thread-safe: each method checks a connection out of the engine's pool for its own use and
    returns it, so async code calls it from worker threads (:mod:`services.coordinator.async_store`).
    """

    def __init__(self, url: str, *, clock: Callable[[], float] = time.time) -> None:
        """Open (create, check or migrate) the store at ``url``; :class:`StoreRefused` if it can't be used.

        ``clock`` is this replica's wall clock, for the times recorded on searches; leases go by
        the database's clock (on SQLite, which has no server, the host's: ``clock`` again).
        """
        self.clock = clock
        self.url = database_url(url)
        # pre_ping: after a database restart every pooled connection is dead; test before use.
        self.engine: Engine = create_engine(self.url, pool_pre_ping=True)
        if isinstance(self.engine.pool, SingletonThreadPool):
            # In-memory SQLite: one database per thread, but the coordinator calls the store from
            # a pool of worker threads (see async_store), so each would see its own empty one.
            self.engine.dispose()
            raise ValueError(f"an in-memory SQLite store is not supported ({self.url}); give a file")
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        try:
            self._prepare_schema()
        except StoreRefused:
            self.engine.dispose()
            raise
        except (SQLAlchemyError, self.engine.dialect.loaded_dbapi.Error) as err:
            self.engine.dispose()
            raise StoreRefused(self._cannot_use(err)) from err

    @property
    def where(self) -> str:
        """The store for messages: a SQLite file's path, else the URL with its password hidden."""
        if self.engine.dialect.name == "sqlite" and self.engine.url.database:
            return self.engine.url.database
        return self.engine.url.render_as_string(hide_password=True)

    def _cannot_use(self, err: BaseException) -> str:
        cause = getattr(err, "orig", None) or err
        first_line = (str(cause).strip().splitlines() or [""])[0]
        if self.engine.dialect.name == "sqlite" and "not a database" in first_line:
            return (
                f"{self.where} is not a SQLite database ({first_line});"
                " give a promptclimb store or a new file"
            )
        return f"cannot open the search store {self.where}: {type(cause).__name__}: {first_line}"

    def _prepare_schema(self) -> None:
        """Create, check or migrate the schema in one transaction that holds the database."""
        with self.engine.connect() as c:
            self._prepare_schema_in(c)
            if c.dialect.name == "sqlite":
                # WAL (persistent in the file) lets a reader (GetSearch) go on while the runner
                # writes. Set only now: a refused file is left byte for byte as it was.
                _set_wal(c)

    def _prepare_schema_in(self, c: Connection) -> None:
        # Refusals raise before anything is written; leaving the block rolls the transaction back.
        if c.dialect.name == "sqlite":
            c.exec_driver_sql("BEGIN IMMEDIATE")  # a second replica starting now waits here
        elif c.dialect.name == "postgresql":
            c.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
        tables = set(inspect(c).get_table_names())
        if not tables:
            metadata.create_all(c)
            c.execute(insert(schema_info).values(id=1, version=SCHEMA_VERSION))
            c.commit()
            return
        if schema_info.name in tables:
            version = c.execute(select(schema_info.c.version).where(schema_info.c.id == 1)).scalar()
            if version is None:
                raise StoreRefused(f"{self.where}: {schema_info.name} holds no version; damaged store")
        elif searches.name in tables:
            version = 0  # made before the schema was versioned, unless that table is someone else's
            self._check_columns(c, [searches])
        else:
            found = ", ".join(sorted(tables)[:8])
            raise StoreRefused(
                f"{self.where} holds tables that are not a promptclimb search store ({found});"
                " give an empty database or a new file"
            )
        if version > SCHEMA_VERSION:
            raise StoreRefused(
                f"{self.where} has schema version {version}, newer than this coordinator's"
                f" {SCHEMA_VERSION}: upgrade promptclimb (it is not used, so nothing in it is changed)"
            )
        for step in MIGRATIONS[version:]:
            log.info(
                "migrating the search store",
                extra={"store": self.where, "to_version": step.to_version, "what": step.what},
            )
            step.apply(c)
        self._check_columns(c)
        if version == 0:
            c.execute(insert(schema_info).values(id=1, version=SCHEMA_VERSION))
        elif version < SCHEMA_VERSION:
            c.execute(update(schema_info).where(schema_info.c.id == 1).values(version=SCHEMA_VERSION))
        c.commit()

    def _check_columns(self, c: Connection, tables: Sequence[Table] = ()) -> None:
        """Refuse a database whose tables lack columns of ours (someone else's ``searches`` table)."""
        inspector = inspect(c)
        for table in tables or metadata.sorted_tables:
            present = {col["name"] for col in inspector.get_columns(table.name)}
            missing = [col.name for col in table.columns if col.name not in present]
            if missing:
                raise StoreRefused(
                    f"{self.where}: table {table.name} lacks columns {', '.join(missing)}; it is not a"
                    " promptclimb search store (or a damaged one)"
                )

    def close(self) -> None:
        """Release connections."""
        self.engine.dispose()

    # ---- searches ------------------------------------------------------------------------------

    def create(
        self, config: SearchConfig, request_id: str | None, *, max_pending: int | None = None
    ) -> tuple[SearchRecord, bool]:
        """Insert a PENDING search; with a known ``request_id`` return that search instead.

        With ``max_pending``, raise :class:`TooManyPending` instead of inserting when that many
        searches are PENDING in the store (every replica's): the count and the insert are one
        transaction under a lock every replica takes, so a burst never overshoots the bound.
        A known ``request_id`` is answered with its search even then.
        """
        if request_id:
            existing = self.by_request_id(request_id)
            if existing is not None:
                return existing, False
        now = self.clock()
        search_id = uuid.uuid4().hex[:16]
        try:
            with self._admission(max_pending is not None) as c:
                if max_pending is not None:
                    if request_id and (row := _by_request_id(c, request_id)) is not None:
                        return _record(row), False  # created by a request that won the lock
                    pending = c.execute(
                        select(func.count()).select_from(searches).where(searches.c.state == PENDING)
                    ).scalar_one()
                    if pending >= max_pending:
                        raise TooManyPending(pending, max_pending)
                c.execute(
                    insert(searches).values(
                        id=search_id,
                        request_id=request_id or None,
                        state=PENDING,
                        phase="seeding",
                        restart=0,
                        iteration=0,
                        config=json.dumps(config.to_json()),
                        progress=Progress().to_json(),
                        create_time=now,
                        update_time=now,
                        cancel_requested=False,
                    )
                )
                c.execute(insert(events).values(search_id=search_id, time=now, type="created", detail=""))
        except IntegrityError:
            # Another request with the same id won the race: the unique constraint decides.
            existing = self.by_request_id(request_id or "")
            if existing is None:
                raise
            return existing, False
        record = self.get(search_id)
        assert record is not None
        return record, True

    @contextmanager
    def _admission(self, serialised: bool) -> Iterator[Connection]:
        """A write transaction; ``serialised``: holding, from its first read, the lock of admissions."""
        with self.engine.connect() as c:
            if serialised and c.dialect.name == "sqlite":
                # The write lock before the count: a deferred transaction would read, then fail
                # to upgrade ("database is locked") whenever another replica wrote meanwhile.
                c.exec_driver_sql("BEGIN IMMEDIATE")
            elif serialised and c.dialect.name == "postgresql":
                c.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_ADMISSION_LOCK})
            yield c
            c.commit()

    def by_request_id(self, request_id: str) -> SearchRecord | None:
        """The search started with ``request_id``, if any."""
        with self.engine.connect() as c:
            row = _by_request_id(c, request_id)
        return _record(row) if row else None

    def get(self, search_id: str, *, with_history: bool = False) -> SearchRecord | None:
        """One search, optionally with its selection-split history in scoring order."""
        with self.engine.connect() as c:
            row = c.execute(select(searches).where(searches.c.id == search_id)).mappings().first()
            if row is None:
                return None
            record = _record(row)
            if with_history:
                rows = c.execute(
                    select(scored_templates)
                    .where(
                        scored_templates.c.search_id == search_id,
                        scored_templates.c.split == record.config.selection_split,
                        scored_templates.c.error.is_(None),
                    )
                    .order_by(scored_templates.c.seq)
                ).mappings()
                record.history = [_scored(r) for r in rows]
        return record

    def list_searches(self, *, state: str | None, limit: int, offset: int) -> list[SearchRecord]:
        """Searches newest first."""
        query = (
            select(searches)
            .order_by(searches.c.create_time.desc(), searches.c.id)
            .limit(limit)
            .offset(offset)
        )
        if state:
            query = query.where(searches.c.state == state)
        with self.engine.connect() as c:
            return [_record(r) for r in c.execute(query).mappings()]

    def save_progress(self, search_id: str, owner: str, state: SearchState, wall_seconds: float) -> bool:
        """Write the progress of a running search; False when ``owner`` no longer holds it."""
        progress = Progress(
            iterations=state.iterations,
            usage=state.usage,
            best=state.best,
            result=state.result,
            end_reason=state.end_reason,
            wall_seconds=wall_seconds,
        )
        values = dict(
            phase=state.phase.value,
            restart=state.restart,
            iteration=state.iteration,
            progress=progress.to_json(),
            update_time=self.clock(),
        )
        return self._fenced_update(search_id, owner, values)

    def mark_running(self, search_id: str, owner: str) -> bool:
        """PENDING -> RUNNING (keeps the first start time on resume)."""
        record = self.get(search_id)
        if record is None:
            return False
        values: dict[str, Any] = {"state": RUNNING, "update_time": self.clock()}
        if record.start_time is None:
            values["start_time"] = self.clock()
        ok = self._fenced_update(search_id, owner, values)
        if ok and record.state != RUNNING:
            self.add_event(search_id, "state", RUNNING)
        return ok

    def finish(
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
        """Move to a terminal state and release the lease (fenced on ``owner`` when given)."""
        record = self.get(search_id)
        if record is None or record.done:
            return False
        progress = record.progress
        if progress_state is not None:
            progress.iterations = progress_state.iterations
            progress.usage = progress_state.usage
            progress.best = progress_state.best
            progress.result = progress_state.result
        progress.end_reason, progress.error_code = end_reason, error_code
        now = self.clock()
        if wall_seconds is not None:
            progress.wall_seconds = wall_seconds
        elif record.start_time is not None:
            progress.wall_seconds = now - record.start_time
        values = dict(
            state=state,
            phase="done",
            progress=progress.to_json(),
            update_time=now,
            end_time=now,
            lease_owner=None,
            lease_expires=None,
        )
        if owner is None:
            with self.engine.begin() as c:
                done = (
                    c.execute(
                        update(searches)
                        .where(searches.c.id == search_id, searches.c.state.not_in(list(TERMINAL)))
                        .values(**values)
                    ).rowcount
                    == 1
                )
        else:
            done = self._fenced_update(search_id, owner, values)
        if done:
            self.add_event(search_id, "state", state)
        return done

    def request_cancel(self, search_id: str) -> None:
        """Flag a search for cancellation (its owner sees the flag when it renews the lease)."""
        with self.engine.begin() as c:
            c.execute(update(searches).where(searches.c.id == search_id).values(cancel_requested=True))

    # ---- leases --------------------------------------------------------------------------------

    def try_acquire(self, search_id: str, owner: str, lease_seconds: float) -> bool:
        """Take the lease of an unfinished search that is free, expired or already ours."""
        now = self._db_now()
        with self.engine.begin() as c:
            result = c.execute(
                update(searches)
                .where(
                    searches.c.id == search_id,
                    searches.c.state.in_([PENDING, RUNNING]),
                    or_(
                        searches.c.lease_owner.is_(None),
                        searches.c.lease_owner == owner,
                        searches.c.lease_expires < now,
                    ),
                )
                .values(lease_owner=owner, lease_expires=now + lease_seconds)
            )
            return result.rowcount == 1

    def renew(self, owner: str, search_ids: Sequence[str], lease_seconds: float) -> dict[str, bool]:
        """Extend our leases; returns, per search still ours, whether cancellation was requested."""
        now = self._db_now()
        held: dict[str, bool] = {}
        with self.engine.begin() as c:
            for sid in search_ids:
                ok = (
                    c.execute(
                        update(searches)
                        .where(searches.c.id == sid, searches.c.lease_owner == owner)
                        .values(lease_expires=now + lease_seconds)
                    ).rowcount
                    == 1
                )
                if ok:
                    flag = c.execute(select(searches.c.cancel_requested).where(searches.c.id == sid)).scalar()
                    held[sid] = bool(flag)
        return held

    def release(self, search_id: str, owner: str) -> None:
        """Give a lease back (graceful shutdown) so another replica resumes at once."""
        with self.engine.begin() as c:
            c.execute(
                update(searches)
                .where(searches.c.id == search_id, searches.c.lease_owner == owner)
                .values(lease_owner=None, lease_expires=None)
            )

    def claimable(self) -> list[str]:
        """Unfinished searches nobody holds a live lease on, oldest first."""
        now = self._db_now()
        with self.engine.connect() as c:
            rows = c.execute(
                select(searches.c.id)
                .where(
                    searches.c.state.in_([PENDING, RUNNING]),
                    or_(searches.c.lease_owner.is_(None), searches.c.lease_expires < now),
                )
                .order_by(searches.c.create_time, searches.c.id)
            )
            return [r[0] for r in rows]

    # ---- journal rows --------------------------------------------------------------------------

    def scores(self, search_id: str) -> dict[tuple[str, str], Score]:
        """Every recorded score of a search by (split, template)."""
        with self.engine.connect() as c:
            rows = c.execute(
                select(scored_templates).where(scored_templates.c.search_id == search_id)
            ).mappings()
            return {
                (r["split"], r["template"]): Score(
                    r["template"],
                    r["accuracy"],
                    r["correct"],
                    r["total"],
                    r["error"],
                    r["loss"],
                    bytes(r["per_image_correct"] or b""),
                    bytes(r["per_image_loss"] or b""),
                )
                for r in rows
            }

    def add_scores(
        self, search_id: str, split: str, scores: Sequence[Score], restart: int, iteration: int, origin: str
    ) -> None:
        """Record scores (one transaction per chunk)."""
        if not scores:
            return
        rows = [
            dict(
                search_id=search_id,
                split=split,
                template=s.template,
                accuracy=s.accuracy,
                correct=s.correct,
                total=s.total,
                restart=restart,
                iteration=iteration,
                origin=origin,
                error=s.error,
                loss=s.loss,
                per_image_correct=s.per_image_correct or None,
                per_image_loss=s.per_image_loss or None,
            )
            for s in scores
        ]
        try:
            with self.engine.begin() as c:
                c.execute(insert(scored_templates), rows)
        except IntegrityError:
            # Some are recorded already (a retried insert that did commit, or a former owner's
            # rows): insert only the missing ones, keeping the first score of each template.
            with self.engine.begin() as c:
                present = set(
                    c.execute(
                        select(scored_templates.c.template).where(
                            scored_templates.c.search_id == search_id,
                            scored_templates.c.split == split,
                            scored_templates.c.template.in_([r["template"] for r in rows]),
                        )
                    ).scalars()
                )
                missing = {r["template"]: r for r in rows if r["template"] not in present}
                if missing:
                    c.execute(insert(scored_templates), list(missing.values()))

    def proposals(self, search_id: str) -> dict[str, Proposal]:
        """Every recorded LLM reply of a search by call key."""
        with self.engine.connect() as c:
            rows = c.execute(select(llm_calls).where(llm_calls.c.search_id == search_id)).mappings()
            return {r["call_key"]: Proposal.from_json(json.loads(r["reply"])) for r in rows}

    def add_proposal(self, search_id: str, key: str, proposal: Proposal) -> None:
        """Record an LLM reply (a reply already recorded under ``key`` is kept)."""
        try:
            with self.engine.begin() as c:
                c.execute(
                    insert(llm_calls).values(
                        search_id=search_id,
                        call_key=key,
                        reply=json.dumps(proposal.to_json()),
                        create_time=self.clock(),
                    )
                )
        except IntegrityError:
            # A retried insert whose first commit did land, or a former owner's reply: keep it.
            with self.engine.connect() as c:
                if (
                    c.execute(
                        select(llm_calls.c.call_key).where(
                            llm_calls.c.search_id == search_id, llm_calls.c.call_key == key
                        )
                    ).first()
                    is None
                ):
                    raise

    def steps(self, search_id: str) -> dict[str, dict[str, Any]]:
        """Every recorded step of a description search by key."""
        with self.engine.connect() as c:
            rows = c.execute(
                select(description_steps).where(description_steps.c.search_id == search_id)
            ).mappings()
            return {r["step_key"]: json.loads(r["payload"]) for r in rows}

    def add_step(self, search_id: str, key: str, payload: dict[str, Any]) -> None:
        """Record a description search step (one already recorded under ``key`` is kept)."""
        try:
            with self.engine.begin() as c:
                c.execute(
                    insert(description_steps).values(
                        search_id=search_id,
                        step_key=key,
                        payload=json.dumps(payload),
                        create_time=self.clock(),
                    )
                )
        except IntegrityError:
            with self.engine.connect() as c:  # a retried insert that did land, or a former owner's step
                found = c.execute(
                    select(description_steps.c.step_key).where(
                        description_steps.c.search_id == search_id, description_steps.c.step_key == key
                    )
                ).first()
                if found is None:
                    raise

    def add_event(self, search_id: str, kind: str, detail: str = "") -> None:
        """Append to the search's event log."""
        with self.engine.begin() as c:
            c.execute(insert(events).values(search_id=search_id, time=self.clock(), type=kind, detail=detail))

    def now(self) -> float:
        """The database's clock (epoch seconds), which every lease expiry is set and judged by."""
        with self.engine.connect() as c:
            return float(c.execute(select(self._db_now())).scalar_one())

    def _db_now(self) -> ColumnElement[float]:
        # Evaluated by the server on PostgreSQL, inside the statement that sets or judges a lease.
        if self.engine.dialect.name == "postgresql":
            return cast(extract("epoch", func.clock_timestamp()), Float)
        return literal(self.clock(), Float)  # SQLite: the one host's clock (see the module docstring)

    def _fenced_update(self, search_id: str, owner: str, values: dict[str, Any]) -> bool:
        with self.engine.begin() as c:
            result = c.execute(
                update(searches)
                .where(
                    and_(
                        searches.c.id == search_id,
                        searches.c.lease_owner == owner,
                        searches.c.state.not_in(list(TERMINAL)),
                    )
                )
                .values(**values)
            )
            return result.rowcount == 1


def _set_wal(c: Connection, *, within: float = 10.0) -> None:
    # Switching the journal mode needs the file to itself, and SQLite answers "locked" at once,
    # without its busy timeout, while another replica starting now holds it: retry for a while.
    deadline = time.monotonic() + within
    while True:
        try:
            c.exec_driver_sql("PRAGMA journal_mode=WAL")
            return
        except OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # busy_timeout rides out a restart; WAL is set once the schema is accepted (_prepare_schema).
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _by_request_id(c: Connection, request_id: str) -> Any:
    return c.execute(select(searches).where(searches.c.request_id == request_id)).mappings().first()


def _record(row: Any) -> SearchRecord:
    return SearchRecord(
        id=row["id"],
        request_id=row["request_id"],
        config=SearchConfig.from_json(json.loads(row["config"])),
        state=row["state"],
        phase=row["phase"],
        restart=row["restart"],
        iteration=row["iteration"],
        progress=Progress.from_json(row["progress"]),
        create_time=row["create_time"],
        update_time=row["update_time"],
        start_time=row["start_time"],
        end_time=row["end_time"],
        lease_owner=row["lease_owner"],
        lease_expires=row["lease_expires"],
        cancel_requested=bool(row["cancel_requested"]),
    )


def _scored(r: Any) -> ScoredTemplate:
    return ScoredTemplate(
        r["template"],
        r["accuracy"],
        r["correct"],
        r["total"],
        r["restart"],
        r["iteration"],
        r["origin"],
        r["loss"],
    )

"""The store at start-up: what it refuses (with a message naming it) and what it migrates in place.

Refusals are checked on a real ``promptclimb serve coordinator`` process: it must exit non-zero with
one line naming the file, not a traceback. Migration is checked on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from services.coordinator.search import Score, SearchConfig
from services.coordinator.store import SCHEMA_VERSION, SearchStore, StoreRefused, database_url
from tests.support.processes import ROOT, test_env

pytestmark = pytest.mark.timeout(90)


def start_coordinator(store: str) -> subprocess.CompletedProcess[str]:
    """``promptclimb serve coordinator --store STORE`` run until it exits (it should, at once)."""
    argv = [sys.executable, "-m", "promptclimb", "serve", "coordinator", "--port", "0", "--store", store]
    return subprocess.run(argv, cwd=ROOT, env=test_env(), capture_output=True, text=True, timeout=60)


def contents(path: Path) -> bytes | list[str]:
    """A database's rows and schema as SQL (a WAL checkpoint may move bytes), else the raw bytes."""
    try:
        with sqlite3.connect(path) as c:
            return list(c.iterdump())
    except sqlite3.DatabaseError:
        return path.read_bytes()


def garbled(path: Path) -> None:
    path.write_bytes(b"\x00\x13garbage, as a crash mid-copy leaves it" * 300)


def foreign(path: Path) -> None:
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT)")
        c.execute("INSERT INTO users (email) VALUES ('a@example.com')")


def newer(path: Path) -> None:
    SearchStore(str(path)).close()
    with sqlite3.connect(path) as c:
        c.execute("UPDATE promptclimb_schema SET version = ?", (SCHEMA_VERSION + 1,))


def foreign_searches(path: Path) -> None:
    with sqlite3.connect(path) as c:  # someone else's table that happens to be called searches
        c.execute("CREATE TABLE searches (id TEXT PRIMARY KEY, query TEXT)")


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (garbled, "is not a SQLite database"),
        (foreign, "holds tables that are not a promptclimb search store (users)"),
        (newer, f"has schema version {SCHEMA_VERSION + 1}, newer than this coordinator's {SCHEMA_VERSION}"),
        (foreign_searches, "table searches lacks columns"),
    ],
    ids=["not-a-database", "foreign-tables", "newer-schema", "foreign-searches-table"],
)
def test_a_store_that_can_not_be_used_stops_the_coordinator_with_a_message_naming_it(
    tmp_path: Path, damage: object, says: str
) -> None:
    db = tmp_path / "searches.db"
    damage(db)  # type: ignore[operator]
    before = contents(db)
    done = start_coordinator(str(db))
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in done.stderr, done.stderr
    assert any(str(db) in line and says in line for line in lines), done.stderr
    assert "listening" not in done.stdout  # it never served
    assert contents(db) == before  # refused means untouched


def test_a_newer_schema_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    store = SearchStore(str(db))
    record, _ = store.create(SearchConfig(dataset="d"), None)
    store.close()
    with sqlite3.connect(db) as c:
        c.execute("UPDATE promptclimb_schema SET version = ?", (SCHEMA_VERSION + 5,))
    with pytest.raises(StoreRefused, match="newer than this coordinator"):
        SearchStore(str(db))
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT version FROM promptclimb_schema").fetchall() == [(SCHEMA_VERSION + 5,)]
        assert c.execute("SELECT id FROM searches").fetchall() == [(record.id,)]


def make_unversioned(url: str) -> str:
    """A store as promptclimb 0.1 left it: no version table, no loss or per-image columns; one row."""
    store = SearchStore(url)
    record, _ = store.create(SearchConfig(dataset="d"), None)
    store.close()
    engine = create_engine(database_url(url))
    with engine.begin() as c:
        c.execute(text("DROP TABLE promptclimb_schema"))
        for column in ("loss", "per_image_correct", "per_image_loss"):
            c.execute(text(f"ALTER TABLE scored_templates DROP COLUMN {column}"))
        c.execute(
            text(
                "INSERT INTO scored_templates (search_id, split, template, accuracy, correct, total,"
                " restart, iteration, origin) VALUES (:id, 'train', 'old {}', 0.5, 1, 2, 0, 0, 'pool')"
            ),
            {"id": record.id},
        )
    engine.dispose()
    return record.id


def assert_migrated(url: str, search_id: str) -> None:
    upgraded = SearchStore(url)
    try:
        upgraded.add_scores(search_id, "train", [Score("new {}", 0.5, 1, 2, loss=0.25)], 0, 1, "llm")
        scores = upgraded.scores(search_id)
        assert scores[("train", "old {}")].loss is None  # the old row kept, its new column NULL
        assert scores[("train", "new {}")].loss == 0.25
        got = upgraded.get(search_id, with_history=True)
        assert got is not None and [t.template for t in got.history] == ["old {}", "new {}"]
        with upgraded.engine.connect() as c:
            assert c.execute(text("SELECT version FROM promptclimb_schema")).scalar() == SCHEMA_VERSION
    finally:
        upgraded.close()
    SearchStore(url).close()  # opening a current store again changes nothing and refuses nothing


def test_an_unversioned_sqlite_store_is_migrated_in_place(tmp_path: Path) -> None:
    url = str(tmp_path / "old.db")
    assert_migrated(url, make_unversioned(url))


def test_an_unversioned_postgres_store_is_migrated_in_place(postgres_url: str) -> None:
    assert_migrated(postgres_url, make_unversioned(postgres_url))


def make_version_1(url: str) -> str:
    """A store as the coordinator left it before description searches: schema 1, no step journal."""
    store = SearchStore(url)
    record, _ = store.create(SearchConfig(dataset="d"), None)
    store.close()
    engine = create_engine(database_url(url))
    with engine.begin() as c:
        c.execute(text("DROP TABLE description_steps"))
        c.execute(text("UPDATE promptclimb_schema SET version = 1"))
    engine.dispose()
    return record.id


@pytest.mark.parametrize("where", ["sqlite", "postgres"])
def test_a_version_1_store_gets_the_description_journal(where: str, tmp_path: Path, request: Any) -> None:
    url = str(tmp_path / "v1.db") if where == "sqlite" else request.getfixturevalue("postgres_url")
    search_id = make_version_1(url)
    upgraded = SearchStore(url)
    try:
        upgraded.add_step(search_id, "llm/describe", {"descriptions": {"cat": ["a {}"]}})
        upgraded.add_step(search_id, "llm/describe", {"descriptions": {}})  # a repeat keeps the first
        assert upgraded.steps(search_id) == {"llm/describe": {"descriptions": {"cat": ["a {}"]}}}
        assert upgraded.get(search_id) is not None  # the old search is still there
        with upgraded.engine.connect() as c:
            assert c.execute(text("SELECT version FROM promptclimb_schema")).scalar() == SCHEMA_VERSION
    finally:
        upgraded.close()


def test_a_newer_postgres_schema_is_refused(postgres_url: str) -> None:
    SearchStore(postgres_url).close()
    engine = create_engine(postgres_url)
    with engine.begin() as c:
        c.execute(text("UPDATE promptclimb_schema SET version = :v"), {"v": SCHEMA_VERSION + 1})
    engine.dispose()
    with pytest.raises(StoreRefused, match="newer than this coordinator") as caught:
        SearchStore(postgres_url)
    assert postgres_url.rsplit("/", 1)[1] in str(caught.value)  # names the database


def test_replicas_opening_a_new_store_at_once_all_start(tmp_path: Path) -> None:
    """Four replicas create the schema of one new file at once: one creates it, none fails."""
    db = str(tmp_path / "new.db")
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def open_store() -> None:
        barrier.wait()
        try:
            SearchStore(db).close()
        except BaseException as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT id, version FROM promptclimb_schema").fetchall() == [(1, SCHEMA_VERSION)]


def test_a_store_that_can_not_be_reached_stops_the_coordinator_with_its_url_password_hidden() -> None:
    url = "postgresql+psycopg://promptclimb:s3cret-pw@127.0.0.1:1/searches"  # nothing listens on port 1
    done = start_coordinator(url)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert "cannot open the search store postgresql+psycopg://promptclimb:***@127.0.0.1:1/searches" in (
        done.stderr
    )
    assert "s3cret-pw" not in done.stderr + done.stdout

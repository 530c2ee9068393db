"""A throwaway PostgreSQL cluster on loopback for the store tests.

One cluster per test session (initdb takes a few seconds), one fresh database per test. The
cluster lives in a temporary folder owned by the ``postgres`` system user when the tests run as
root (PostgreSQL refuses to run as root), listens on 127.0.0.1 at a free port with its unix socket
in that folder, trusts loopback connections, and is stopped and removed at the end.

Missing PostgreSQL binaries or psycopg skip these tests, unless ``PROMPTCLIMB_REQUIRE_TOOLS`` is set
(CI sets it), where they fail instead.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _missing(reason: str) -> None:
    if os.environ.get("PROMPTCLIMB_REQUIRE_TOOLS"):
        pytest.fail(f"{reason} (PROMPTCLIMB_REQUIRE_TOOLS is set)", pytrace=False)
    pytest.skip(reason)


def postgres_bindir() -> Path | None:
    """The folder with initdb and pg_ctl: ``pg_config --bindir``, else the newest Debian one."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if out.returncode == 0:
            candidates.append(Path(out.stdout.strip()))
    debian = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted((Path(p) for p in debian), key=lambda p: int(p.parent.name), reverse=True)
    for c in candidates:
        if (c / "initdb").is_file() and (c / "pg_ctl").is_file():
            return c
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresCluster:
    """A PostgreSQL server in a temporary folder; start, stop and restart it at will."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="promptclimb-pg-"))
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = "postgres"
            try:
                entry = pwd.getpwnam(self.user)
            except KeyError:
                shutil.rmtree(self.root)
                _missing("running as root, and no 'postgres' system user to run PostgreSQL as")
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.datadir = self.root / "data"
        self.logfile = self.root / "server.log"
        self.port = _free_port()

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)

    def _checked(self, *args: str) -> None:
        out = self._run(*args)
        if out.returncode != 0:
            log = self.logfile.read_text() if self.logfile.exists() else ""
            raise RuntimeError(f"{args[0]} failed: {out.stdout}\n{out.stderr}\n{log[-2000:]}")

    def init(self) -> None:
        """initdb with trust authentication (loopback only: the server listens on 127.0.0.1)."""
        self._checked(
            "initdb", "-D", str(self.datadir), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"
        )

    def start(self) -> None:
        """Start and wait until it accepts connections."""
        # fsync off: a throwaway cluster; a fast (clean) shutdown still writes everything.
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
            " -c fsync=off -c full_page_writes=off -c max_connections=100"
        )
        self._checked(
            "pg_ctl",
            "-D",
            str(self.datadir),
            "-l",
            str(self.logfile),
            "-w",
            "-t",
            "30",
            "-o",
            options,
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop (``fast`` ends client sessions and shuts down cleanly; ``immediate`` is a crash)."""
        self._checked("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "-t", "30", "stop")

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of ``database`` through the psycopg 3 driver."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str) -> None:
        """Run one statement outside a transaction (CREATE/DROP DATABASE) on the ``postgres`` db."""
        import psycopg

        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True
        ) as c:
            c.execute(sql)

    def remove(self) -> None:
        """Stop if running and delete every file."""
        if (self.datadir / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.datadir), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A running PostgreSQL cluster for the whole session."""
    bindir = postgres_bindir()
    if bindir is None:
        _missing("PostgreSQL server binaries not found (apt-get install postgresql)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _missing("psycopg not installed (pip install -e .[postgres])")
    assert bindir is not None
    cluster = PostgresCluster(bindir)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """A fresh, empty database on the session's cluster, as a SQLAlchemy URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    postgres_cluster.admin(f"CREATE DATABASE {name}")
    yield postgres_cluster.url(name)
    # A test may leave the server stopped (restart tests): bring it back for the next one.
    if not (postgres_cluster.datadir / "postmaster.pid").exists():
        postgres_cluster.start()
    for _ in range(50):
        try:
            postgres_cluster.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            break
        except Exception:  # the server may still be coming back
            time.sleep(0.1)

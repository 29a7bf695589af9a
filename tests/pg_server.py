"""A real PostgreSQL server for the tests, started from the `pgserver` wheel's binaries.

`PostgresServer` runs its own throwaway cluster (initdb, `pg_ctl start`/`stop`) listening on
127.0.0.1 at a free port, with password authentication over TCP so that tests can check that the
password never reaches a message; as root it runs the server as the unprivileged user `pgserver`
(PostgreSQL refuses to run as root). Without the `pgserver` package it uses Debian's binaries
(`/usr/lib/postgresql/*/bin`) if installed. The fixtures: `postgres_server` (one per session) and
`pg_url`, a fresh database per test, so any test can be run against the PostgreSQL store;
`disk_config`, the disk tier on each store in turn, with `disk_rows` and `heard` for tests that
run on either.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import importlib.util
import itertools
import os
import pwd
import shutil
import socket
import sqlite3
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import pytest

from sqlcache import CacheManager
from sqlcache._postgres import PostgresStore

PASSWORD = "s3cret-Pa55word"
_SYSTEM_USER = "pgserver"
_databases = itertools.count(1)


def _binaries() -> Path:
    """The directory holding initdb, pg_ctl and postgres."""
    wheel = importlib.util.find_spec("pgserver")  # located, not imported: its import sets up logging dirs
    if wheel is not None and wheel.origin is not None:
        return Path(wheel.origin).parent / "pginstall" / "bin"
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(candidate, "initdb").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise RuntimeError("no PostgreSQL binaries: pip install pgserver (the test extra) or apt-get install postgresql")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory; `stop()` and `start()` keep its data and port."""

    def __init__(self, *, durable: bool = False) -> None:
        self.bin = _binaries()
        self.root = Path(tempfile.mkdtemp(prefix="sqlcache-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        self.port = _free_port()
        self.durable = durable  # False: fsync off, for speed; the tests never crash the machine
        self._user = None
        if os.geteuid() == 0:
            self._user = _SYSTEM_USER
            try:
                pwd.getpwnam(_SYSTEM_USER)
            except KeyError:
                subprocess.run(["useradd", "--system", "--no-create-home", _SYSTEM_USER], check=True)
        self.sockets.mkdir()
        password_file = self.root / "password"
        password_file.write_text(PASSWORD)
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            for path in (self.root, self.sockets, password_file):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "--encoding=UTF8", "--locale=C",
            "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={password_file}",
        )
        password_file.unlink()

    def _run(self, program: str, *args: str, timeout: float = 60) -> None:
        result = subprocess.run(
            [str(self.bin / program), *args], user=self._user, capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            raise RuntimeError(f"{program} failed ({result.returncode}): {result.stderr or result.stdout}")

    def start(self) -> "PostgresServer":
        options = f"-h 127.0.0.1 -p {self.port} -k {self.sockets} -c max_connections=200"
        if not self.durable:
            options += " -c fsync=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-o", options, "-w", "start")
        return self

    def stop(self) -> None:
        """A fast shutdown: clients are disconnected at once, committed data kept."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        try:
            self.stop()
        except RuntimeError:
            pass  # already stopped
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres", *, password: str = PASSWORD) -> str:
        """A TCP URL with the password in it (what a user would configure)."""
        return f"postgresql://postgres:{password}@127.0.0.1:{self.port}/{database}"

    def socket_url(self, database: str = "postgres") -> str:
        """A libpq URL through the Unix socket directory (`?host=`), trusted: no password."""
        return f"postgresql://postgres@/{database}?host={self.sockets}&port={self.port}"

    def create_database(self) -> str:
        """A new empty database; its URL."""
        name = f"test_{os.getpid()}_{next(_databases)}"
        with ThreadPoolExecutor(1) as thread:  # its own event loop, whether or not one runs here
            thread.submit(asyncio.run, self._admin(f'CREATE DATABASE "{name}"')).result()
        return self.url(name)

    async def _admin(self, sql: str) -> None:
        connection = await asyncpg.connect(self.url())
        try:
            await connection.execute(sql)
        finally:
            await connection.close()


@pytest.fixture(scope="session")
def postgres_server():
    server = PostgresServer().start()
    yield server
    server.remove()


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> str:
    """The URL of a fresh, empty database on the session's server."""
    return postgres_server.create_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def disk_config(request, tmp_path):
    """Config keys putting the disk tier on each store in turn, for tests of the contract both
    keep: `disk_config(name="cache")` -> dict; managers given the same name share one disk (one
    directory on SQLite, one database on PostgreSQL), as processes sharing a cache do."""
    databases: dict[str, str] = {}

    def make(name: str = "cache") -> dict:
        config = {"disk_cache_dir": str(tmp_path / name)}
        if request.param == "postgresql":
            if name not in databases:
                databases[name] = request.getfixturevalue("postgres_server").create_database()
            config["disk_cache_url"] = databases[name]
        return config

    return make


async def heard(manager: CacheManager) -> None:
    """Let `manager` hear of the changes other processes committed. SQLite needs nothing: a look
    reads the log in the file. On PostgreSQL a change reaches another host by a notification,
    and one round trip on that host's session receives every one committed before it."""
    if isinstance(manager._store, PostgresStore):
        await manager._store.log_position()


async def disk_rows(cache: CacheManager | dict, sql: str) -> list[tuple]:
    """Rows of a query (written in the SQL both stores speak) on the disk tier of a manager, or
    of a config (one `disk_config` made)."""
    url = cache.config.disk_cache_url if isinstance(cache, CacheManager) else cache.get("disk_cache_url")
    if url is None:
        path = cache.config.db_path if isinstance(cache, CacheManager) else Path(cache["disk_cache_dir"]) / "sqlcache.db"
        with contextlib.closing(sqlite3.connect(path)) as db:
            return db.execute(sql).fetchall()
    connection = await asyncpg.connect(url)
    try:
        return [tuple(row) for row in await connection.fetch(sql)]
    finally:
        await connection.close()

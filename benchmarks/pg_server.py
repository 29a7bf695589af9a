"""A throwaway PostgreSQL server for the run, the one the tests start (`tests/pg_server.py`).

It comes from the `pgserver` wheel of the test extra (`pip install -e ".[test,postgresql,bench]"`)
or, without it, from Debian's `postgresql` binaries; without either (or without asyncpg) the
PostgreSQL rows are skipped with a note. The cluster lives in a temporary directory, listens on a
free loopback port with password authentication over TCP (what another host would use), keeps
PostgreSQL's durable defaults (fsync on, `durable=True`), and is removed when the run ends.
Every peer gets a database of its own (`create_database`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

TESTS_SERVER = Path(__file__).resolve().parent.parent / "tests" / "pg_server.py"
INSTALL_HINT = 'pip install -e ".[test,postgresql]" (the pgserver wheel) or apt-get install postgresql'


def _tests_module() -> ModuleType:
    """`tests/pg_server.py`, loaded from its file (the tests directory is no package)."""
    spec = importlib.util.spec_from_file_location("sqlcache_tests_pg_server", TESTS_SERVER)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {TESTS_SERVER}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class PostgresCluster:
    """`with PostgresCluster() as cluster:` — `cluster.server` is None when it could not start,
    and `cluster.note` then says why."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.server: Any = None
        self.note = ""

    def __enter__(self) -> "PostgresCluster":
        if not self.enabled:
            return self  # no PostgreSQL workload selected
        try:
            server = _tests_module().PostgresServer(durable=True)
        except (ImportError, RuntimeError) as error:
            self.note = f"PostgreSQL skipped: {error}; {INSTALL_HINT}"
            return self
        try:
            server.start()
        except (RuntimeError, OSError) as error:
            server.remove()
            self.note = f"PostgreSQL skipped: the server did not start ({error})"
            return self
        self.server = server
        self.note = (f"PostgreSQL: {server.bin}/postgres started on 127.0.0.1:{server.port} for this run "
                     "(fsync on, PostgreSQL's defaults otherwise; TCP with password authentication)")
        return self

    def create_database(self) -> str:
        """The URL of a new empty database on the server."""
        assert self.server is not None
        return self.server.create_database()

    def __exit__(self, *exc_info: object) -> None:
        if self.server is not None:
            self.server.remove()
            self.server = None

"""The `sqlcache` command (also `python -m sqlcache`): look inside a cache database from a shell.

Reading commands open the file with the standard library's `sqlite3`, read-only, or, with
`--url postgresql://...`, run in one read-only PostgreSQL transaction (asyncpg); they run the
statement of the same name from `SQLITE_SQL` or `POSTGRES_SQL`. The commands that remove entries
(`invalidate`, `purge`) go through `CacheManager`, so that the invalidation log tells every other
process's memory tier about the change. `check` runs the same invariants on either engine, each
the statement of one name in both tables (`INVARIANTS`), and `vacuum` runs VACUUM on either.
Every statement here is parameterised; only the user's own `sql` text is run as given, on a
read-only connection or transaction.

Exit codes (also in the README): 0 done; 1 the answer is no (`get` found no live entry,
`check` found a problem, a confirmation was declined); 2 bad arguments (including text that is
not UTF-8, an empty `sql`, or a `demo --dir` the demo did not create); 3 the database file is
missing or unusable (or cannot be read or written); 4 SQLite refused or failed a statement (a
write in `sql`, a syntax error, an invalid REGEXP pattern, a lock held too long, a demo
directory in use); 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import decimal
import functools
import itertools
import json
import math
import operator
import os
import re
import sqlite3
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

from . import __version__
from ._exceptions import CacheBusyError, CacheError, StorageError
from ._sqlite import LATEST_SCHEMA, _regexp
from ._store import literal_prefix, prefix_successor
from ._urls import DatabaseURL, parse as parse_url

EXIT_OK = 0
EXIT_NO = 1
EXIT_USAGE = 2
EXIT_DATABASE = 3
EXIT_SQL = 4
EXIT_INTERRUPTED = 130

DEFAULT_DIR = "cache"  # the library's default disk_cache_dir
PATH_ARGUMENTS = ("db", "dir")  # file names may hold any bytes; every other text argument is UTF-8
DB_NAME = "sqlcache.db"
MAX_CELL = 80  # characters of a table cell on screen; --json gives the whole value
BUSY_TIMEOUT = 5.0
READ_TIMEOUT = 60.0  # seconds a reading statement on PostgreSQL may take (vacuum has no limit)
STREAM_ROWS = 1000  # rows per fetch when a command reads a whole table from PostgreSQL (`_PgReader.stream`)
T = TypeVar("T")


class CliError(Exception):
    """A failure reported as one line on stderr and an exit code, never a traceback."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    # A path argument may hold bytes that are not UTF-8 (Python keeps them as surrogate escapes):
    # print them back as those bytes rather than fail on them.
    sys.stdout.reconfigure(errors="surrogateescape")  # type: ignore[union-attr]
    args = _parser().parse_args(argv)
    try:
        _require_text(args)
        return args.run(args)
    except CliError as error:
        print(f"sqlcache: {error}", file=sys.stderr)
        return error.code
    except sqlite3.Error as error:
        print(f"sqlcache: SQLite error: {error}", file=sys.stderr)
        return EXIT_SQL
    except KeyboardInterrupt:
        print("sqlcache: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `sqlcache keys | head`: the reader left, which is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    location = argparse.ArgumentParser(add_help=False)
    where = location.add_argument_group("database location (before or after the command)")
    where.add_argument("--db", metavar="PATH", default=argparse.SUPPRESS, help="the database file")
    where.add_argument(
        "--dir", metavar="DIR", default=argparse.SUPPRESS,
        help=f"the cache directory (disk_cache_dir) holding {DB_NAME}; default ./{DEFAULT_DIR}",
    )
    where.add_argument(
        "--url", metavar="URL", default=argparse.SUPPRESS,
        help="the disk_cache_url: postgresql://user:password@host:port/dbname (a PostgreSQL cache) "
        "or sqlite:///path (the same as --db path)",
    )
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument(
        "--json", action="store_true",
        help="print JSON for scripts instead of a table. Booleans are true/false, tag lists are arrays, "
        "times are ISO-8601 UTC text (2026-01-31T12:00:00.000Z) or null, and NaN and infinities, which "
        "JSON cannot hold, are null. `sql` prints SQLite's own values: 0/1 for a truth value, JSON "
        "columns such as cache_entries.tags as text",
    )

    parser = argparse.ArgumentParser(
        prog="sqlcache", parents=[location],
        description="Inspect and maintain a sqlcache database.",
        epilog="Exit codes: 0 done, 1 the answer is no (not found, check failed, declined), "
        "2 bad arguments (also text that is not UTF-8, an empty SQL statement, a demo --dir the demo "
        "did not create), 3 database missing or unusable (also unreadable or not writable), "
        "4 SQLite or PostgreSQL refused or failed (also an invalid REGEXP pattern, a demo directory in use), "
        "130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"sqlcache {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    def command(name: str, run: Callable[[argparse.Namespace], int], help: str, json_output: bool = True):
        parents = [location, as_json] if json_output else [location]
        sub = commands.add_parser(name, parents=parents, help=help, description=help)
        sub.set_defaults(run=run, command=name)
        return sub

    command("stats", run_stats, "entries, bytes, expiries and tags of the database")
    keys = command("keys", run_keys, "list keys with their size, expiry, reads and tags")
    keys.add_argument("--tag", help="only keys carrying this tag")
    keys.add_argument("--pattern", help="only keys re.match-ing this Python regex")
    keys.add_argument("--limit", type=_positive_int, default=100, help="most keys shown (default 100)")
    get = command("get", run_get, "show one entry and its value (exit 1 if no live entry)")
    get.add_argument("key")
    command("tags", run_tags, "tags with their entry counts and bytes, biggest first")
    invalidate = command("invalidate", run_invalidate, "remove the entries of a tag or a key pattern")
    what = invalidate.add_mutually_exclusive_group(required=True)
    what.add_argument("--tag", help="remove every entry carrying this tag")
    what.add_argument("--pattern", help="remove every key re.match-ing this Python regex")
    invalidate.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    command("purge", run_purge, "delete expired entries from disk")
    command("vacuum", run_vacuum, "rebuild the file to give freed space back to the file system")
    command("tasks", run_tasks, "the preloader's tasks: runs, errors, last error")
    command("check", run_check, "integrity check and consistency of counters, tags and statistics (exit 1 if not ok)")
    sql = command("sql", run_sql, "run one read-only SQL statement (writing statements are refused)")
    sql.add_argument("statement", metavar="SQL", help='for example "SELECT key, size FROM cache_entries"')
    demo = command("demo", run_demo, "run agents and the preloader against a local market-data server", False)
    demo.add_argument("--duration", type=_positive_float, default=20.0, help="seconds the agents run (default 20)")
    demo.add_argument("--agents", type=_positive_int, default=6, help="number of agents (default 6)")
    return parser


# How an argument is named in messages, by its argparse destination.
ARGUMENT_NAMES = {"key": "KEY", "statement": "SQL"}


def _require_text(args: argparse.Namespace) -> None:
    """Refuse a key, tag, pattern or statement holding bytes that are not UTF-8.

    Python hands such bytes over as lone surrogates, which SQLite cannot take: caught here, they
    are a usage error (exit 2) rather than a traceback, or a "not found" that was never looked up.
    """
    for name, value in vars(args).items():
        if not isinstance(value, str) or name in PATH_ARGUMENTS:
            continue
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            where = ARGUMENT_NAMES.get(name, f"--{name}")
            raise CliError(
                f"the {where} argument is not UTF-8 text: {_escaped(value[error.start])} at character "
                f"{error.start + 1}", EXIT_USAGE,
            ) from None


def _escaped(char: str) -> str:
    r"""`byte \xff` for a byte Python kept as a surrogate escape, `\ud800` for any other surrogate."""
    code = ord(char)
    return f"byte \\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


# ---------------------------------------------------------------- opening the database


def _location(args: argparse.Namespace) -> Path | DatabaseURL:
    """The database the arguments name: a SQLite file (from --db, --dir or a sqlite:/// --url) or
    a PostgreSQL URL."""
    db, directory, url = getattr(args, "db", None), getattr(args, "dir", None), getattr(args, "url", None)
    if db is not None and directory is not None:
        raise CliError("give --db PATH or --dir DIR, not both", EXIT_USAGE)
    if url is not None and (db is not None or directory is not None):
        raise CliError("give --url URL or --db/--dir, not both", EXIT_USAGE)
    if url is not None:
        try:
            parsed = parse_url(url)
        except ValueError as error:
            raise CliError(f"bad --url: {error}", EXIT_USAGE) from None
        return parsed.path if parsed.engine == "sqlite" and parsed.path is not None else parsed
    if db is not None:
        return Path(db)
    return Path(directory or DEFAULT_DIR) / DB_NAME


def _require_file(path: Path) -> None:
    if path.is_dir():
        raise CliError(f"{path} is a directory; pass it as --dir {path}", EXIT_USAGE)
    if not path.exists():
        raise CliError(
            f"no cache database at {path} (give --dir with the cache directory, or --db with the "
            f"path of its {DB_NAME})",
            EXIT_DATABASE,
        )


# PRAGMAs whose argument names what to read (a table, an index, a row limit), not a setting.
READING_PRAGMAS = frozenset({
    "table_info", "table_xinfo", "table_list", "index_info", "index_xinfo", "index_list",
    "foreign_key_list", "foreign_key_check", "integrity_check", "quick_check",
})
# PRAGMAs that act on the files even without an argument.
ACTING_PRAGMAS = frozenset({"wal_checkpoint", "optimize", "incremental_vacuum"})


def _authorize(action: int, name: str | None, argument: str | None, *_: object) -> int:
    """Authorizer of read-only connections: refuse what `mode=ro` and `query_only` let through.

    ATTACH (and VACUUM INTO) could create files; a PRAGMA that sets something (journal_mode,
    query_only, ...) or acts on the files would otherwise fail deep inside SQLite ("disk I/O
    error") or switch the protection off. Refused here, each is SQLITE_AUTH: "not authorized".
    """
    if action == sqlite3.SQLITE_ATTACH:
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_PRAGMA:
        pragma = (name or "").lower()
        if pragma in ACTING_PRAGMAS or (argument is not None and pragma not in READING_PRAGMAS):
            return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


class _Connection(sqlite3.Connection):
    """A connection of this command, with REGEXP as an SQL function.

    SQLite reports an exception raised in a function only as "user-defined function raised
    exception", so REGEXP keeps the reason here for the message.
    """

    regexp_error: str | None = None

    def regexp(self, pattern: Any, key: Any) -> bool | None:
        """`key REGEXP pattern` with `re.match` semantics; NULL on either side gives NULL."""
        if pattern is None or key is None:
            return None
        if not isinstance(pattern, str) or not isinstance(key, str):
            self.regexp_error = f"REGEXP takes text on both sides, got {type(key).__name__} REGEXP {type(pattern).__name__}"
            raise TypeError(self.regexp_error)
        try:
            return _regexp(pattern, key)
        except re.error as error:
            self.regexp_error = f"invalid regex {pattern!r} in REGEXP: {error}"
            raise


def _require_readable(path: Path) -> None:
    """SQLite says only "unable to open database file"; the file system says why."""
    try:
        os.close(os.open(path, os.O_RDONLY))
    except OSError as error:
        raise CliError(f"cannot read {path}: {error.strerror}", EXIT_DATABASE) from None


def _require_writable(path: Path) -> None:
    """Opening for writing, without creating anything: a clear message before any change."""
    try:
        os.close(os.open(path, os.O_RDWR))
    except OSError as error:
        raise CliError(f"cannot open {path} for writing: {error.strerror}", EXIT_DATABASE) from None


@contextlib.contextmanager
def _read_only(path: Path) -> Iterator[_Connection]:
    """A read-only connection to a sqlcache database (closed on exit), or a `CliError` saying why not."""
    _require_file(path)
    _require_readable(path)
    try:
        connection = sqlite3.connect(
            path.resolve().as_uri() + "?mode=ro", uri=True, timeout=BUSY_TIMEOUT, isolation_level=None,
            factory=_Connection,
        )
    except sqlite3.Error as error:
        raise CliError(f"cannot open {path}: {error}", EXIT_DATABASE) from None
    try:
        connection.execute("PRAGMA query_only = ON")
        connection.set_authorizer(_authorize)
        connection.create_function("regexp", 2, connection.regexp, deterministic=True)
        _require_schema(connection, path)
        connection.row_factory = sqlite3.Row
        yield connection
    finally:
        connection.close()


def _require_schema(connection: sqlite3.Connection, path: Path) -> None:
    try:
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        has_entries = connection.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", ("entries",)
        ).fetchone()
    except sqlite3.DatabaseError as error:
        raise CliError(f"{path} is not a readable SQLite database: {error}", EXIT_DATABASE) from None
    if version < 1 or has_entries is None:
        raise CliError(f"{path} is not a sqlcache database (it has no sqlcache schema)", EXIT_DATABASE)


def _run_with_manager(location: Path | DatabaseURL, action: Callable[[Any], Any]) -> Any:
    """Open the cache at `location` with a `CacheManager` and return `await action(manager)`.

    Removals go through the manager so the invalidation log reaches other processes (on every
    host, for a PostgreSQL cache).
    """
    config: dict[str, Any] = {"check_on_open": False, "purge_interval": 0}
    if isinstance(location, DatabaseURL):
        with _pg_read_only(location):  # a clear message for a missing server or a foreign database
            pass
        config["disk_cache_url"] = location.url
    else:
        path = location
        with _read_only(path):  # a clear message for a missing or foreign file, before any write
            pass
        if path.name != DB_NAME:
            raise CliError(
                f"this command opens a cache directory's {DB_NAME}; {path} has another name, so pass "
                f"--dir with the directory of a {DB_NAME}",
                EXIT_USAGE,
            )
        _require_writable(path)
        config["disk_cache_dir"] = path.parent
    from ._manager import CacheManager

    async def run() -> Any:
        async with CacheManager(config) as manager:
            return await action(manager)

    try:
        return asyncio.run(run())
    except (CacheBusyError, StorageError) as error:
        raise CliError(str(error), EXIT_SQL) from None
    except CacheError as error:
        raise CliError(str(error), EXIT_DATABASE) from None
    except OSError as error:  # e.g. the lock file in a directory that is not writable
        raise CliError(f"cannot use the cache at {location}: {_os_error(error)}", EXIT_DATABASE) from None


# ---------------------------------------------------------------- PostgreSQL

# SQLSTATEs of a statement refused because the transaction is read-only: 25006 (a write, or a
# function that writes, such as nextval), 25001 (SET TRANSACTION READ WRITE after the first query).
READ_ONLY_REFUSALS = ("25006", "25001")

# Makes the transaction's snapshot, so that the user's statement cannot switch it to read-write.
PG_SNAPSHOT = "SELECT 1"
# The schema version, which also tells a sqlcache database from any other.
PG_SCHEMA_VERSION = "SELECT max(version) FROM sqlcache_schema"


class _PgReader:
    """A connection to a PostgreSQL cache, driven from this synchronous command: a read-only
    transaction (`_pg_read_only`) for every command that reads, a plain session for `vacuum`.

    Each call runs one statement to completion on the command's own event loop; keys and tags go
    in and come out through the store's NUL escaping (`to_db`, `from_db`).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, connection: Any, url: DatabaseURL) -> None:
        self._loop, self._connection, self.url = loop, connection, url

    def fetch(self, statement: str, *params: Any) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Column names and rows of `statement`; a refusal or failure as a `CliError` (exit 4)."""

        async def run() -> tuple[list[str], list[tuple[Any, ...]]]:
            prepared = await self._connection.prepare(statement)
            rows = await prepared.fetch(*params)
            return _column_names(prepared), [tuple(row) for row in rows]

        return self._run(run)

    def begin_read_only(self) -> None:
        """Start the read-only transaction, with its snapshot taken, so that a statement of the
        user's cannot switch it to read-write."""
        self._run(lambda: self._connection.transaction(readonly=True).start())
        self.fetch(PG_SNAPSHOT)

    def maintain(self, statements: Sequence[str]) -> None:
        """Run each statement alone, outside any transaction (as VACUUM must be). A WARNING the
        server sends meanwhile, such as VACUUM skipping a table the role does not own, fails the
        command as an error would: nothing would have been done."""
        warnings: list[str] = []

        def listen(connection: Any, message: Any) -> None:
            if getattr(message, "severity_en", None) == "WARNING":
                warnings.append(message.message)

        self._connection.add_log_listener(listen)
        try:
            for statement in statements:
                self._run(lambda: self._connection.execute(statement))
                if warnings:
                    raise CliError(f"SQL failed: {_scrub_text(warnings[0], self.url)}", EXIT_SQL)
        finally:
            self._connection.remove_log_listener(listen)

    def _run(self, work: Callable[[], Awaitable[T]]) -> T:
        """`await work()` on the command's loop; the driver's errors as `CliError`s: a refusal or
        failure of a statement exit 4, a lost server exit 3."""
        from ._postgres import asyncpg

        try:
            return self._loop.run_until_complete(work())
        except asyncpg.PostgresError as error:
            if error.sqlstate in READ_ONLY_REFUSALS:
                raise CliError(_refusal(_scrubbed(error, self.url)), EXIT_SQL) from None
            raise CliError(f"SQL failed: {_scrubbed(error, self.url)}", EXIT_SQL) from None
        except (OSError, asyncio.TimeoutError, asyncpg.InterfaceError) as error:
            raise CliError(f"lost the PostgreSQL cache {self.url.where}: {_scrubbed(error, self.url)}",
                           EXIT_DATABASE) from None

    @property
    def name(self) -> str:
        """The database as messages name it: the server, never the password."""
        return f"the PostgreSQL cache {self.url.where}"

    @property
    def shown(self) -> str:
        """The database as `stats` shows it: its URL without the password."""
        return self.url.redacted

    def disk_bytes(self) -> int:
        """The size of the database on the server."""
        return self.records("disk_bytes")[0]["n"]

    def records(self, name: str, *params: Any) -> list[dict[str, Any]]:
        """The rows of the statement `name` of `POSTGRES_SQL` as dicts, keys and tags unescaped."""
        columns, rows = self.fetch(POSTGRES_SQL[name], *_escaped_params(params))
        return [_unescaped(columns, row) for row in rows]

    def stream(self, name: str, *params: Any) -> Iterator[dict[str, Any]]:
        """The rows of `records(name, *params)`, read `STREAM_ROWS` at a time on a cursor of the
        transaction, so that `check` reads every entry without holding them all."""

        async def open_cursor() -> tuple[list[str], Any]:
            prepared = await self._connection.prepare(POSTGRES_SQL[name])
            return _column_names(prepared), await prepared.cursor(*_escaped_params(params))

        columns, cursor = self._run(open_cursor)
        while rows := self._run(lambda: cursor.fetch(STREAM_ROWS)):
            yield from (_unescaped(columns, row) for row in rows)

    @property
    def latest_schema(self) -> int:
        """The newest PostgreSQL schema version this sqlcache knows."""
        from ._postgres import LATEST_SCHEMA

        return LATEST_SCHEMA

    def engine_check(self) -> dict[str, Any]:
        """PostgreSQL's part of `check`, in place of SQLite's integrity_check (the server keeps its
        own storage sound): the relations and triggers of the schema's version are there."""
        version = self.records("version")[0]["version"] or 0
        missing = [row["name"] for row in self.records(
            "missing_relations", list(PG_RELATIONS), list(PG_RELATIONS.values()), version)]
        missing += [f"trigger {row['name']}" for row in self.records("missing_triggers", list(PG_TRIGGERS))]
        detail = f"missing or disabled: {', '.join(missing)}" if missing else "ok"
        return {"check": "PostgreSQL schema objects present", "ok": not missing, "detail": detail}


def _column_names(prepared: Any) -> list[str]:
    return [attribute.name for attribute in prepared.get_attributes()]


def _escaped_params(params: Sequence[Any]) -> list[Any]:
    """Parameters as the store writes them: text through `to_db` (NUL escaped)."""
    from ._postgres import to_db

    return [to_db(param) if isinstance(param, str) else param for param in params]


def _unescaped(columns: Sequence[str], row: Sequence[Any]) -> dict[str, Any]:
    """A row as a dict, its keys and tags back through `from_db`."""
    from ._postgres import from_db

    return {name: from_db(value) if name in ("key", "tag") and isinstance(value, str) else value
            for name, value in zip(columns, row)}


def _scrubbed(error: BaseException, url: DatabaseURL) -> str:
    """The reason of a driver's error, with the URL redacted and its password hidden."""
    return _scrub_text(str(error) or type(error).__name__, url)


def _scrub_text(message: str, url: DatabaseURL) -> str:
    """A server's message with the URL redacted and its password hidden."""
    from ._postgres import _scrub

    return _scrub(message, url.url)


@contextlib.contextmanager
def _pg_session(url: DatabaseURL, command_timeout: float | None = READ_TIMEOUT) -> Iterator[_PgReader]:
    """A connection to the PostgreSQL server at `url` (closed on exit), or a `CliError` naming the
    server (never the password) and saying why not (exit 3)."""
    from ._postgres import asyncpg

    if asyncpg is None:  # pragma: no cover - the extra is not installed
        raise CliError("--url postgresql://... needs asyncpg: pip install 'sqlcache[postgresql]'", EXIT_DATABASE)
    loop = asyncio.new_event_loop()
    try:
        try:
            connection = loop.run_until_complete(asyncpg.connect(
                url.url, timeout=BUSY_TIMEOUT, command_timeout=command_timeout,
                server_settings={"application_name": "sqlcache-cli"},
            ))
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            reason = _scrubbed(error, url)
            raise CliError(f"cannot connect to the PostgreSQL cache {url.where}: {reason}", EXIT_DATABASE) from None
        try:
            yield _PgReader(loop, connection, url)
        finally:
            with contextlib.suppress(Exception):  # closing ends (rolls back) any transaction
                loop.run_until_complete(connection.close(timeout=BUSY_TIMEOUT))
    finally:
        loop.close()


@contextlib.contextmanager
def _pg_read_only(url: DatabaseURL) -> Iterator[_PgReader]:
    """A read-only transaction on the PostgreSQL cache at `url`, rolled back on exit, or a
    `CliError` saying why not: no server (see `_pg_session`), or no sqlcache schema (exit 3)."""
    with _pg_session(url) as reader:
        reader.begin_read_only()
        try:
            reader.fetch(PG_SCHEMA_VERSION)
        except CliError:
            raise CliError(f"the PostgreSQL database {url.where} is not a sqlcache database "
                           "(it has no sqlcache schema)", EXIT_DATABASE) from None
        yield reader


class _SqliteReader:
    """The statements of `SQLITE_SQL` on a read-only connection (see `_reading`)."""

    def __init__(self, connection: _Connection, path: Path) -> None:
        self.connection, self.name = connection, str(path)

    def records(self, name: str, *params: Any) -> list[dict[str, Any]]:
        return list(self.stream(name, *params))

    def stream(self, name: str, *params: Any) -> Iterator[dict[str, Any]]:
        """The rows of `records(name, *params)` one by one, as SQLite steps through them."""
        return (dict(row) for row in self.connection.execute(SQLITE_SQL[name], params))

    latest_schema = LATEST_SCHEMA

    def engine_check(self) -> dict[str, Any]:
        """SQLite's part of `check`: its own integrity check of the file."""
        problems = [row["integrity_check"] for row in self.records("integrity_check")]
        return {"check": "SQLite integrity_check", "ok": problems == ["ok"], "detail": "; ".join(problems[:5])}

    @property
    def shown(self) -> str:
        """The database as `stats` shows it: the file's path."""
        return self.name

    def disk_bytes(self) -> int:
        """The bytes of the database file and its write-ahead log."""
        return sum(_file_size(Path(f"{self.name}{suffix}")) for suffix in ("", "-wal"))


@contextlib.contextmanager
def _reading(args: argparse.Namespace) -> Iterator[_SqliteReader | _PgReader]:
    """A read-only view of the database the arguments name, on either engine: its `records(name,
    *params)` runs the statement of that name from `SQLITE_SQL` or `POSTGRES_SQL`."""
    location = _location(args)
    if isinstance(location, DatabaseURL):
        with _pg_read_only(location) as reader:
            yield reader
    else:
        with _read_only(location) as connection:
            yield _SqliteReader(connection, location)


def _scalar(db: _SqliteReader | _PgReader, name: str, *params: Any) -> Any:
    """The column `n` of the one row of the statement `name`."""
    return db.records(name, *params)[0]["n"]


def _os_error(error: OSError) -> str:
    """`Permission denied: 'cache/sqlcache.lock'`: the reason and the file, never a traceback."""
    reason = error.strerror or str(error)
    return f"{reason}: {error.filename!r}" if error.filename else reason


# ---------------------------------------------------------------- output


def _emit(args: argparse.Namespace, data: Any, render: Callable[[Any], str]) -> None:
    """Print `data` as JSON with --json, else as `render(data)` for a person."""
    if getattr(args, "json", False):
        print(json.dumps(_finite(data), indent=2, ensure_ascii=False, allow_nan=False))
    else:
        print(render(data))


def _finite(data: Any) -> Any:
    """`data` with NaN and infinities as None: JSON has no such numbers (a bare NaN is invalid)."""
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {name: _finite(value) for name, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(value) for value in data]
    return data


def _table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], headers: Sequence[str] | None = None) -> str:
    """A plain aligned text table; numbers right-aligned, long cells cut to `MAX_CELL`."""
    if not rows:
        return "(no rows)"
    cells = [[_cell(row[column]) for column in columns] for row in rows]
    titles = list(headers or columns)
    widths = [max(len(title), *(len(line[i]) for line in cells)) for i, title in enumerate(titles)]
    numeric = [all(isinstance(row[c], (int, float)) or row[c] is None for row in rows) for c in columns]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(titles), line(["-" * w for w in widths]), *(line(values) for values in cells)])


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return f"<blob, {len(value)} bytes>"
    text = str(value).replace("\n", " ")
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 3] + "..."


def _pairs(pairs: Iterable[tuple[str, Any]]) -> str:
    """`label: value` lines with the values aligned."""
    pairs = list(pairs)
    width = max(len(label) for label, _ in pairs)
    return "\n".join(f"{label + ':':<{width + 1}} {'' if value is None else value}" for label, value in pairs)


def _bytes(count: int) -> str:
    size, unit = float(count), "bytes"
    for bigger in ("KiB", "MiB", "GiB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{count} bytes" if unit == "bytes" else f"{size:.1f} {unit}"


def _count(number: int, one: str, many: str) -> str:
    return f"{number} {one if number == 1 else many}"


def _epoch(iso: str) -> float:
    """Epoch seconds of the views' ISO-8601 UTC text."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _relative(iso: str | None, never: str = "never") -> str:
    """'in 4m 10s' or '12s ago' for an ISO time from a view."""
    if iso is None:
        return never
    delta = _epoch(iso) - time.time()
    text = _duration(abs(delta))
    return f"in {text}" if delta > 0 else f"{text} ago"


def _duration(seconds: float) -> str:
    """The two largest non-zero units: '45s', '4m 10s', '2h 5m', '3d 1h'."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    parts = [f"{n}{unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")) if n]
    return " ".join(parts[:2]) or "0s"


# ---------------------------------------------------------------- stats

def run_stats(args: argparse.Namespace) -> int:
    with _reading(args) as db:
        _emit(args, _stats(db), _render_stats)
    return EXIT_OK


def _stats(db: _SqliteReader | _PgReader) -> dict[str, Any]:
    now = time.time()
    scalar = functools.partial(_scalar, db)
    counters = db.records("counters")[0]
    entries, expired = counters["entries"], scalar("expired", now)
    return {
        "db_path": db.shown,
        "file_bytes": db.disk_bytes(),
        "schema_version": db.records("version")[0]["version"],
        "entries": entries,
        "live_entries": entries - expired,
        "expired_entries": expired,
        "never_expiring": scalar("never_expiring"),
        "bytes": counters["bytes"],
        "tags": scalar("tag_count"),
        "reads_recorded": scalar("reads"),
        "next_expiry": _iso(scalar("next_expiry", now)),
        "last_write": _iso(scalar("last_write")),
        "invalidation_log_rows": scalar("log"),
        "preload_tasks": scalar("task_count") if db.records("has_tasks") else None,
    }


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _render_stats(stats: Mapping[str, Any]) -> str:
    return _pairs([
        ("database", stats["db_path"]),
        ("file size", _bytes(stats["file_bytes"])),
        ("schema version", stats["schema_version"]),
        ("entries", f"{stats['entries']} ({stats['live_entries']} live, {stats['expired_entries']} expired "
                    f"awaiting purge, {stats['never_expiring']} never expire)"),
        ("stored bytes", _bytes(stats["bytes"])),
        ("tags", stats["tags"]),
        ("reads recorded", stats["reads_recorded"]),
        ("next expiry", _relative(stats["next_expiry"], never="none")),
        ("last write", _relative(stats["last_write"], never="none")),
        ("invalidation log", f"{stats['invalidation_log_rows']} rows"),
        ("preload tasks", "no preload_tasks table" if stats["preload_tasks"] is None else stats["preload_tasks"]),
    ]) + "\n(hit rates belong to each process: see CacheManager.get_stats())"


# ---------------------------------------------------------------- keys

ENTRY_COLUMNS = "key, tags, size, created_at, expires_at, accessed_at, access_count, codec, expired"

def run_keys(args: argparse.Namespace) -> int:
    with _reading(args) as db:
        if args.pattern is not None:
            keys = sorted(key for key, _ in _matching_keys(db, args.tag, args.pattern))
            total = len(keys)
            rows = [row for key in keys[: args.limit] for row in db.records("listed_entry", key)]
        elif args.tag is not None:
            total = db.records("tagged_counts", time.time(), args.tag)[0]["matching"]
            rows = db.records("tagged_first_entries", args.tag, args.limit)
        else:
            total = db.records("entry_count")[0]["entries"]
            rows = db.records("first_entries", args.limit)
    entries = [_entry(row) for row in rows]
    _emit(args, {"total": total, "keys": entries}, _render_keys)
    return EXIT_OK


def _entry(row: Mapping[str, Any]) -> dict[str, Any]:
    entry = dict(row)
    entry["tags"] = json.loads(entry["tags"])
    entry["expired"] = bool(entry["expired"])
    return entry


def _render_keys(data: Mapping[str, Any]) -> str:
    rows = [
        {**entry, "tags": ", ".join(entry["tags"]),
         "expires_at": "expired" if entry["expired"] else _relative(entry["expires_at"]),
         "accessed_at": _relative(entry["accessed_at"])}
        for entry in data["keys"]
    ]
    columns = ["key", "size", "expires_at", "access_count", "accessed_at", "codec", "tags"]
    text = _table(rows, columns, ["key", "bytes", "expires", "reads", "last used", "codec", "tags"])
    hidden = data["total"] - len(rows)
    return text + (f"\n... and {hidden} more (raise --limit)" if hidden > 0 else "")


# ---------------------------------------------------------------- the statements of each engine

# The statements of `check` that read the same in both dialects (they take no parameters).
CHECK_SQL = {
    "check_missing_access": """
        SELECT count(*) AS n FROM entries AS e WHERE NOT EXISTS (SELECT 1 FROM access AS a WHERE a.entry_id = e.id)""",
    "check_orphan_access": """
        SELECT count(*) AS n FROM access AS a WHERE NOT EXISTS (SELECT 1 FROM entries AS e WHERE e.id = a.entry_id)""",
    # The log's positions run without a hole from the oldest kept row to the newest (the trim
    # removes a prefix): a missing row in between would make every process drop its memory tier.
    "check_log_gaps": "SELECT coalesce(max(seq) - min(seq) + 1, 0) - count(*) AS n FROM invalidations",
    # Tag rows of no entry.
    "check_orphan_tags": """
        SELECT count(*) AS n FROM tags AS t WHERE NOT EXISTS (SELECT 1 FROM entries AS e WHERE e.id = t.entry_id)""",
    # Every entry's tags (JSON) with its tag rows, one row per tag row (a NULL tag if it has none),
    # grouped by entry (`_tag_mismatches`).
    "entry_tag_rows": """
        SELECT e.id, e.tags, t.tag FROM entries AS e LEFT JOIN tags AS t ON t.entry_id = e.id ORDER BY e.id""",
}

# The statements of the commands that read on either engine, by name; the PostgreSQL statement of
# a name returns the same columns as the SQLite one, with $1, $2 for SQLite's ? (`_reading`).
SQLITE_SQL = {
    # One entry with its value (never decoded: a pickle is never loaded here).
    "entry": f"""SELECT {ENTRY_COLUMNS}, value_json, (SELECT value FROM entries AS e WHERE e.key = c.key) AS value
                 FROM cache_entries AS c WHERE key = ?""",
    # Tags with their entry counts and bytes, biggest first.
    "tags": "SELECT tag, entries, bytes FROM cache_tags ORDER BY bytes DESC, tag",
    # The preloader's tasks, every column of the view.
    "tasks": "SELECT * FROM preload_tasks ORDER BY name",
    # Whether the preloader's view exists (a database last opened by a sqlcache without it has none).
    "has_tasks": "SELECT 1 AS found FROM sqlite_master WHERE name = 'preload_tasks' AND type IN ('table', 'view')",
    # The schema version.
    "version": "SELECT user_version AS version FROM pragma_user_version",
    # SQLite's check of the whole file: one row "ok", or a row per problem.
    "integrity_check": "PRAGMA integrity_check",
    # The entry count and byte total.
    "counters": "SELECT entries, bytes FROM counters WHERE id = 1",
    # Expired entries still on disk (a scan: the end-of-life index orders by the stale window's end).
    "expired": "SELECT count(*) AS n FROM entries WHERE expires_at <= ?",
    "never_expiring": "SELECT count(*) AS n FROM entries WHERE expires_at IS NULL",
    # The next expiry after $now, and the latest write.
    "next_expiry": "SELECT min(expires_at) AS n FROM entries WHERE expires_at > ?",
    "last_write": "SELECT max(created_at) AS n FROM entries",
    # Distinct tags, recorded reads, rows of the invalidation log, preload tasks.
    "tag_count": "SELECT count(DISTINCT tag) AS n FROM tags",
    "reads": "SELECT coalesce(sum(access_count), 0) AS n FROM access",
    "log": "SELECT count(*) AS n FROM invalidations",
    "task_count": "SELECT count(*) AS n FROM preload_tasks",
    # How many entries carry a tag, and how many of them are live at $now, by the tags primary key.
    "tagged_counts": """SELECT count(*) AS matching, coalesce(sum(expires_at IS NULL OR expires_at > ?), 0) AS live
                        FROM entries WHERE id IN (SELECT entry_id FROM tags WHERE tag = ?)""",
    # The keys within a literal prefix's key range (by the key index), whether live at $now.
    "keys_in_range": "SELECT key, expires_at IS NULL OR expires_at > ? AS live FROM entries WHERE key >= ? AND key < ?",
    # Every key, whether live at $now (a pattern without a literal prefix).
    "all_keys": "SELECT key, expires_at IS NULL OR expires_at > ? AS live FROM entries",
    # The keys carrying a tag, whether live at $now, by the tags primary key (tag, entry_id).
    "tagged_keys": """SELECT e.key, e.expires_at IS NULL OR e.expires_at > ? AS live
                      FROM tags AS t JOIN entries AS e ON e.id = t.entry_id WHERE t.tag = ?""",
    # How many entries there are (the counters row, no scan).
    "entry_count": "SELECT entries FROM counters WHERE id = 1",
    # The first entries in key order, by the key index.
    "first_entries": f"SELECT {ENTRY_COLUMNS} FROM cache_entries ORDER BY key LIMIT ?",
    # The first entries carrying a tag, in key order.
    "tagged_first_entries": f"""SELECT {ENTRY_COLUMNS} FROM cache_entries WHERE key IN (
                                    SELECT e.key FROM tags AS t JOIN entries AS e ON e.id = t.entry_id WHERE t.tag = ?)
                                ORDER BY key LIMIT ?""",
    # One entry as `keys` lists it (without its value).
    "listed_entry": f"SELECT {ENTRY_COLUMNS} FROM cache_entries WHERE key = ?",
    # `check`: each counts what breaks the invariant named so in INVARIANTS. IS NOT, so that a
    # missing counters row fails too.
    "check_counters": """
        SELECT (SELECT entries FROM counters WHERE id = 1) IS NOT (SELECT count(*) FROM entries)
            OR (SELECT bytes FROM counters WHERE id = 1) IS NOT (SELECT coalesce(sum(size), 0) FROM entries) AS n""",
    "check_sizes": "SELECT count(*) AS n FROM entries WHERE size <> length(CAST(key AS BLOB)) + length(value)",
    **CHECK_SQL,
}
# The counter slots of a PostgreSQL cache (migrations/postgresql/0001_initial.sql: slots 0..15).
PG_COUNTER_SLOTS = 16
# What `check` requires of a PostgreSQL cache: each relation with the schema version that made it
# (migrations/postgresql/), and the triggers of 0001 that keep counters, access rows and tags in step.
PG_RELATIONS = {
    "sqlcache_schema": 1, "entries": 1, "access": 1, "tags": 1, "counters": 1, "invalidations": 1,
    "cache_entries": 1, "cache_tags": 1, "preload_task_state": 2, "preload_tasks": 2,
}
PG_TRIGGERS = ("entries_inserted", "entries_updated", "entries_deleted")
# `vacuum` on PostgreSQL: each table of the cache, one statement at a time (VACUUM cannot run in
# a transaction). The space of dead rows becomes reusable (the tables stop growing), empty pages
# at a table's end go back to the file system, and the planner's statistics are refreshed. Not
# VACUUM FULL: it would lock every host out of the cache while it rewrote the tables.
PG_VACUUM = {
    "entries": "VACUUM (ANALYZE) entries",
    "access": "VACUUM (ANALYZE) access",
    "tags": "VACUUM (ANALYZE) tags",
    "counters": "VACUUM (ANALYZE) counters",
    "invalidations": "VACUUM (ANALYZE) invalidations",
    "preload_task_state": "VACUUM (ANALYZE) preload_task_state",
}
POSTGRES_SQL = {
    "entry": f"""SELECT {ENTRY_COLUMNS}, value_json, (SELECT value FROM entries AS e WHERE e.key = c.key) AS value
                 FROM cache_entries AS c WHERE key = $1""",
    "tags": "SELECT tag, entries, bytes FROM cache_tags ORDER BY bytes DESC, tag",
    "tasks": "SELECT * FROM preload_tasks ORDER BY name",
    "has_tasks": "SELECT 1 AS found WHERE to_regclass('preload_tasks') IS NOT NULL",
    "version": "SELECT max(version) AS version FROM sqlcache_schema",
    # The sum of the 16 counter slots (see migrations/postgresql/0001_initial.sql).
    "counters": "SELECT sum(entries)::bigint AS entries, sum(bytes)::bigint AS bytes FROM counters",
    "expired": "SELECT count(*) AS n FROM entries WHERE expires_at <= $1",
    "never_expiring": "SELECT count(*) AS n FROM entries WHERE expires_at IS NULL",
    "next_expiry": "SELECT min(expires_at) AS n FROM entries WHERE expires_at > $1",
    "last_write": "SELECT max(created_at) AS n FROM entries",
    "tag_count": "SELECT count(DISTINCT tag) AS n FROM tags",
    "reads": "SELECT coalesce(sum(access_count), 0)::bigint AS n FROM access",
    "log": "SELECT count(*) AS n FROM invalidations",
    "task_count": "SELECT count(*) AS n FROM preload_tasks",
    # The size of the database on the server (its tables, indexes and dead tuples).
    "disk_bytes": "SELECT pg_database_size(current_database()) AS n",
    # The bytes of the rows of the tables named $1, of their indexes and TOAST tables: the main
    # fork of each (not the free-space and visibility maps, which the first VACUUM creates).
    "table_bytes": """
        WITH t AS (SELECT to_regclass(name) AS id FROM unnest($1::text[]) AS name)
        SELECT coalesce(sum(pg_relation_size(r.id)), 0)::bigint AS n FROM (
            SELECT id FROM t
            UNION ALL SELECT i.indexrelid::regclass FROM pg_index AS i JOIN t ON i.indrelid = t.id
            UNION ALL SELECT c.reltoastrelid::regclass FROM pg_class AS c JOIN t ON c.oid = t.id WHERE c.reltoastrelid <> 0
        ) AS r""",
    "tagged_counts": """SELECT count(*) AS matching, coalesce(sum((expires_at IS NULL OR expires_at > $1)::int), 0) AS live
                        FROM entries WHERE id IN (SELECT entry_id FROM tags WHERE tag = $2)""",
    "keys_in_range": "SELECT key, expires_at IS NULL OR expires_at > $1 AS live FROM entries WHERE key >= $2 AND key < $3",
    "all_keys": "SELECT key, expires_at IS NULL OR expires_at > $1 AS live FROM entries",
    "tagged_keys": """SELECT e.key, e.expires_at IS NULL OR e.expires_at > $1 AS live
                      FROM tags AS t JOIN entries AS e ON e.id = t.entry_id WHERE t.tag = $2""",
    "entry_count": "SELECT sum(entries)::bigint AS entries FROM counters",
    "first_entries": f"SELECT {ENTRY_COLUMNS} FROM cache_entries ORDER BY key LIMIT $1",
    "tagged_first_entries": f"""SELECT {ENTRY_COLUMNS} FROM cache_entries WHERE key IN (
                                    SELECT e.key FROM tags AS t JOIN entries AS e ON e.id = t.entry_id WHERE t.tag = $1)
                                ORDER BY key LIMIT $2""",
    "listed_entry": f"SELECT {ENTRY_COLUMNS} FROM cache_entries WHERE key = $1",
    # Every counter slot is there (a writer adds its deltas to its own slot: one missing would
    # lose them), and the slots add up to the entries.
    "check_counters": f"""
        SELECT ((SELECT count(*) FROM counters) <> {PG_COUNTER_SLOTS}
             OR (SELECT sum(entries) FROM counters) IS DISTINCT FROM (SELECT count(*) FROM entries)
             OR (SELECT sum(bytes) FROM counters) IS DISTINCT FROM (SELECT coalesce(sum(size), 0) FROM entries))::int AS n""",
    # The key's own bytes: as stored, NUL and \x01 are escaped as two bytes each (`to_db`).
    "check_sizes": """
        SELECT count(*) AS n FROM entries
        WHERE size <> octet_length(regexp_replace(key, E'\\x01[\\x01\\x02]', E'\\x01', 'g')) + octet_length(value)""",
    **CHECK_SQL,
    # `check` on PostgreSQL, in place of SQLite's integrity_check: which relations (tables and
    # views; $1 their names, $2 the schema version that made each) a database at version $3 lacks ...
    "missing_relations": """
        SELECT r.name FROM unnest($1::text[], $2::int[]) AS r (name, since)
        WHERE r.since <= $3 AND to_regclass(r.name) IS NULL ORDER BY r.name""",
    # ... and which of the triggers on entries that keep counters, access rows and tags in step
    # are missing or disabled.
    "missing_triggers": """
        SELECT r.name FROM unnest($1::text[]) AS r (name)
        WHERE NOT EXISTS (SELECT 1 FROM pg_trigger AS t
                          WHERE t.tgrelid = to_regclass('entries') AND t.tgname = r.name AND t.tgenabled <> 'D')
        ORDER BY r.name""",
}


# ---------------------------------------------------------------- get


def run_get(args: argparse.Namespace) -> int:
    with _reading(args) as db:
        found = db.records("entry", args.key)
    if not found:
        raise CliError(f"no entry for key {args.key!r}", EXIT_NO)
    entry = _entry(found[0])
    raw, value_json = entry.pop("value"), entry.pop("value_json")
    entry["value"] = json.loads(value_json) if value_json is not None else None
    if entry["codec"] == "bytes":
        entry["value_base64"] = base64.b64encode(raw).decode()
    _emit(args, entry, lambda e: _render_entry(e, value_json, raw))
    if entry["expired"]:
        print(f"sqlcache: {args.key!r} expired at {entry['expires_at']} (on disk until purged)", file=sys.stderr)
        return EXIT_NO
    return EXIT_OK


def _render_entry(entry: Mapping[str, Any], value_json: str | None, raw: bytes) -> str:
    header = _pairs([
        ("key", entry["key"]),
        ("tags", ", ".join(entry["tags"]) or "(none)"),
        ("size", _bytes(entry["size"])),
        ("written", f"{entry['created_at']} ({_relative(entry['created_at'])})"),
        ("expires", "never" if entry["expires_at"] is None
         else f"{entry['expires_at']} ({'expired ' if entry['expired'] else ''}{_relative(entry['expires_at'])})"),
        ("reads", f"{entry['access_count']}, last used {_relative(entry['accessed_at'])}"),
        ("codec", entry["codec"]),
    ])
    if value_json is not None:
        value = json.dumps(json.loads(value_json), indent=2, ensure_ascii=False)
    elif entry["codec"] == "bytes":
        preview = repr(raw[:64]) + (" ..." if len(raw) > 64 else "")
        value = f"<bytes, {len(raw)} bytes> {preview}"
    else:
        value = f"<{entry['codec']}, {len(raw)} bytes>"  # pickle is never loaded here
    return f"{header}\n\n{value}"


# ---------------------------------------------------------------- tags


def run_tags(args: argparse.Namespace) -> int:
    with _reading(args) as db:
        rows = db.records("tags")
    _emit(args, rows, lambda r: _table(r, ["tag", "entries", "bytes"]))
    return EXIT_OK


# ---------------------------------------------------------------- invalidate, purge, vacuum


def run_invalidate(args: argparse.Namespace) -> int:
    location = _location(args)
    with _reading(args) as db:
        matching, live = _matching(db, args.tag, args.pattern)
        name = db.name
    what = f"tagged {args.tag!r}" if args.tag is not None else f"matching {args.pattern!r}"
    question = f"Remove {_count(matching, 'entry', 'entries')} {what} ({live} live) from {name}?"
    if matching and not args.yes and not _confirm(question):
        raise CliError("nothing removed (answer y, or pass --yes)", EXIT_NO)
    if not matching:
        removed = 0
    elif args.tag is not None:
        removed = _run_with_manager(location, lambda manager: manager.invalidate_by_tag(args.tag))
    else:
        removed = _run_with_manager(location, lambda manager: manager.invalidate_by_pattern(args.pattern))
    result = {"removed": removed, "tag": args.tag, "pattern": args.pattern}
    _emit(args, result, lambda r: f"removed {_count(r['removed'], 'live entry', 'live entries')} {what}")
    return EXIT_OK


def _matching(db: _SqliteReader | _PgReader, tag: str | None, pattern: str | None) -> tuple[int, int]:
    """How many entries a tag or a pattern removes, and how many of them are live."""
    if tag is not None:
        counts = db.records("tagged_counts", time.time(), tag)[0]
        return counts["matching"], counts["live"]
    found = [live for _, live in _matching_keys(db, None, pattern)]
    return len(found), sum(bool(live) for live in found)


def _matching_keys(db: _SqliteReader | _PgReader, tag: str | None, pattern: str | None) -> list[tuple[str, Any]]:
    """The keys (and whether each is live) carrying `tag` and `re.match`-ing `pattern`, as the
    manager's invalidation matches them: the tag's keys by the tag index, else a pattern's keys
    within its literal prefix's key range by the key index; the regex is applied here, in Python."""
    now = time.time()
    try:
        if pattern is not None:
            re.compile(pattern)
        prefix = literal_prefix(pattern) if pattern is not None else ""
    except re.error as error:
        raise CliError(f"invalid --pattern {pattern!r}: {error}", EXIT_USAGE) from None
    upper = prefix_successor(prefix) if prefix else None
    if tag is not None:
        rows = db.records("tagged_keys", now, tag)
    elif upper is not None:
        rows = db.records("keys_in_range", now, prefix, upper)
    else:
        rows = db.records("all_keys", now)
    return [(row["key"], row["live"]) for row in rows if pattern is None or _regexp(pattern, row["key"])]


def _confirm(question: str) -> bool:
    """Ask on stderr (stdout stays clean for --json); only 'y' or 'yes' agrees, end of input declines."""
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def run_purge(args: argparse.Namespace) -> int:
    purged = _run_with_manager(_location(args), lambda manager: manager.purge_expired())
    with _reading(args) as db:
        counters = db.records("counters")[0]
    result = {"purged": purged, "entries": counters["entries"], "bytes": counters["bytes"]}
    _emit(args, result, lambda r: f"purged {_count(r['purged'], 'expired entry', 'expired entries')}; "
                                  f"{_count(r['entries'], 'entry', 'entries')} ({_bytes(r['bytes'])}) remain")
    return EXIT_OK


def run_vacuum(args: argparse.Namespace) -> int:
    location = _location(args)
    name = f"the PostgreSQL cache {location.where}" if isinstance(location, DatabaseURL) else str(location)
    before, after = _vacuum_postgres(location) if isinstance(location, DatabaseURL) else _vacuum_sqlite(location)
    result = {"bytes_before": before, "bytes_after": after}
    _emit(args, result, lambda r: f"vacuumed {name}: {_bytes(before)} -> {_bytes(after)}")
    return EXIT_OK


def _vacuum_sqlite(path: Path) -> tuple[int, int]:
    """VACUUM rebuilds the file without the free pages of deleted entries; the WAL is emptied.
    The bytes of the file and its WAL before and after."""
    with _read_only(path):  # the same checks and messages as every other command
        pass
    _require_writable(path)
    before = _file_size(path) + _file_size(Path(f"{path}-wal"))
    connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
    try:
        connection.execute("VACUUM")
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.OperationalError as error:
        raise CliError(f"cannot vacuum {path}: {error}", EXIT_SQL) from None
    finally:
        connection.close()
    return before, _file_size(path) + _file_size(Path(f"{path}-wal"))


def _vacuum_postgres(url: DatabaseURL) -> tuple[int, int]:
    """VACUUM (ANALYZE) of each table of the cache (see `PG_VACUUM`); the bytes of those tables
    (with their indexes) before and after."""
    with _pg_read_only(url) as reader:  # the same checks and messages as every other command
        version = reader.records("version")[0]["version"]
    tables = [table for table in PG_VACUUM if PG_RELATIONS[table] <= version]
    with _pg_session(url, command_timeout=None) as db:
        before = _scalar(db, "table_bytes", tables)
        db.maintain([PG_VACUUM[table] for table in tables])
        return before, _scalar(db, "table_bytes", tables)


# ---------------------------------------------------------------- tasks


# Columns of the `preload_tasks` view shown on screen (--json gives every column).
TASK_COLUMNS = {
    "name": "name", "enabled": "enabled", "interval": "interval", "last_run": "last run",
    "next_run": "next run", "run_count": "runs", "error_count": "errors", "last_error": "last error",
}


def run_tasks(args: argparse.Namespace) -> int:
    with _reading(args) as db:
        if db.records("has_tasks"):
            rows = [_task(row) for row in db.records("tasks")]
        else:
            version = db.records("version")[0]["version"]
            print(f"sqlcache: {db.name} has no preload_tasks table (schema version {version}): it was last opened "
                  "by a sqlcache without the preloader, so it holds no preload tasks", file=sys.stderr)
            rows = []
    _emit(args, rows, _render_tasks)
    return EXIT_OK


def _task(row: Mapping[str, Any]) -> dict[str, Any]:
    """A `preload_tasks` row with its truth value as a boolean and its tags as a list."""
    task = dict(row)
    task["enabled"] = bool(task["enabled"])
    if "tags" in task:
        task["tags"] = json.loads(task["tags"])
    return task


def _render_tasks(rows: Sequence[Mapping[str, Any]]) -> str:
    shown = [
        {**row, "enabled": "yes" if row["enabled"] else "no", "last_run": _relative(row["last_run"]),
         "next_run": _relative(row.get("next_run"), never="due now")}
        for row in rows
    ]
    columns = [column for column in TASK_COLUMNS if not rows or column in rows[0]]
    return _table(shown, columns, [TASK_COLUMNS[column] for column in columns])


# ---------------------------------------------------------------- check

# The invariants `check` tests on either engine, each by the statement of the same name in
# `SQLITE_SQL` and `POSTGRES_SQL`: it counts what breaks the invariant (rows, or 1 for mismatched
# counters), so the report and its verdict are the same code on both. The tag index is compared
# in Python (`_tag_index`) on both, since neither engine's JSON functions can take every tag:
# SQLite's json_each cuts a tag at an escaped NUL, PostgreSQL's cannot turn one into text.
INVARIANTS = {
    "counters match entries": "check_counters",
    "sizes match keys and values": "check_sizes",
    "every entry has access statistics": "check_missing_access",
    "no orphan access statistics": "check_orphan_access",
    "invalidation log has no gaps": "check_log_gaps",
}
TAG_INDEX_HAS_EVERY_TAG = "tag index has every entry tag"
TAG_INDEX_HAS_NOTHING_ELSE = "tag index has nothing else"


def run_check(args: argparse.Namespace) -> int:
    with _reading(args) as db:
        results = [db.engine_check(), _schema_version(db)]
        results += [_invariant(name, functools.partial(_scalar, db, statement)) for name, statement in INVARIANTS.items()]
        results += _tag_index(db)
    ok = all(result["ok"] for result in results)
    _emit(args, {"ok": ok, "checks": results}, _render_check)
    return EXIT_OK if ok else EXIT_NO


def _schema_version(db: _SqliteReader | _PgReader) -> dict[str, Any]:
    version = db.records("version")[0]["version"]
    detail = f"version {version}, this sqlcache knows up to {db.latest_schema}"
    return {"check": "schema version known", "ok": version is not None and version <= db.latest_schema, "detail": detail}


def _invariant(name: str, count: Callable[[], int]) -> dict[str, Any]:
    """The result of the invariant `name`, `count()` being its number of inconsistencies."""
    try:
        return _verdict(name, count())
    except (sqlite3.DatabaseError, CliError) as error:
        return _unchecked(name, error)


def _tag_index(db: _SqliteReader | _PgReader) -> list[dict[str, Any]]:
    """Both directions of the tag index against `entries.tags` (see `_tag_mismatches`)."""
    names = (TAG_INDEX_HAS_EVERY_TAG, TAG_INDEX_HAS_NOTHING_ELSE)
    try:
        counts = _tag_mismatches(db)
    except (sqlite3.DatabaseError, CliError) as error:
        return [_unchecked(name, error) for name in names]
    return [_verdict(name, count) for name, count in zip(names, counts)]


def _tag_mismatches(db: _SqliteReader | _PgReader) -> tuple[int, int]:
    """Entries carrying a tag the index lacks, and index rows naming no tag of their entry (or
    no entry at all); tags compared whole, in Python."""
    missing = extra = 0
    for _, rows in itertools.groupby(db.stream("entry_tag_rows"), key=operator.itemgetter("id")):
        first, *others = rows
        indexed = [row["tag"] for row in (first, *others) if row["tag"] is not None]
        tags = _tag_list(first["tags"])
        if tags is None:  # no index row can match it
            missing, extra = missing + 1, extra + len(indexed)
            continue
        missing += not tags <= frozenset(indexed)
        extra += sum(tag not in tags for tag in indexed)
    return missing, extra + db.records("check_orphan_tags")[0]["n"]


def _tag_list(tags_json: Any) -> frozenset[str] | None:
    """The tags of an `entries.tags` cell, or None if it is not a JSON array of text."""
    try:
        tags = json.loads(tags_json)
    except (ValueError, TypeError):
        return None
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        return None
    return frozenset(tags)


def _verdict(name: str, broken: int) -> dict[str, Any]:
    detail = "ok" if not broken else _count(broken, "inconsistency", "inconsistencies")
    return {"check": name, "ok": not broken, "detail": detail}


def _unchecked(name: str, error: sqlite3.DatabaseError | CliError) -> dict[str, Any]:
    """A check the database could not answer (a table dropped by hand, say): a failed check.
    A lost server is no finding about the cache: that error goes on to end the command."""
    if isinstance(error, CliError) and error.code != EXIT_SQL:
        raise error
    return {"check": name, "ok": False, "detail": f"could not be checked: {error}"}


def _render_check(data: Mapping[str, Any]) -> str:
    rows = [{**result, "ok": "ok" if result["ok"] else "FAILED"} for result in data["checks"]]
    verdict = "all checks passed" if data["ok"] else "PROBLEMS FOUND"
    return _table(rows, ["check", "ok", "detail"], ["check", "result", "detail"]) + f"\n{verdict}"


# ---------------------------------------------------------------- sql


def run_sql(args: argparse.Namespace) -> int:
    if not _has_statement(args.statement):
        raise CliError("no SQL statement given (the SQL argument is empty or only comments)", EXIT_USAGE)
    location = _location(args)
    if isinstance(location, DatabaseURL):
        with _pg_read_only(location) as reader:
            names, rows = reader.fetch(args.statement)
        columns = _unique(names)
    else:
        with _read_only(location) as db:
            try:
                cursor = db.execute(args.statement)
                rows = cursor.fetchall()
            except (sqlite3.DatabaseError, sqlite3.ProgrammingError, sqlite3.Warning) as error:
                raise CliError(db.regexp_error or _sql_failure(error), EXIT_SQL) from None
            columns = _unique([column[0] for column in cursor.description or ()])
    records = [dict(zip(columns, (_json_cell(value) for value in row))) for row in rows]
    _emit(args, records, lambda r: _table(r, columns) if columns else "(no result columns)")
    return EXIT_OK


def _has_statement(text: str) -> bool:
    """Whether `text` holds anything but blanks, `;` and comments: what SQLite would run.

    Only the start needs reading: the first other character begins a statement.
    """
    position = 0
    while position < len(text):
        if text[position].isspace() or text[position] == ";":
            position += 1
        elif text.startswith("--", position):
            end = text.find("\n", position)
            position = len(text) if end < 0 else end + 1
        elif text.startswith("/*", position):
            end = text.find("*/", position + 2)
            position = len(text) if end < 0 else end + 2
        else:
            return True
    return False


def _sql_failure(error: Exception) -> str:
    name = getattr(error, "sqlite_errorname", "")
    if name in ("SQLITE_READONLY", "SQLITE_AUTH"):
        return _refusal(str(error))
    return f"SQL failed: {error}"


def _refusal(reason: str) -> str:
    """The message of a writing statement refused by `sql`, on either engine."""
    return (f"refused: `sqlcache sql` opens the database read-only, so statements that write are not "
            f"allowed ({reason}); nothing was changed. Use invalidate, purge or vacuum to change the cache.")


def _json_cell(value: Any) -> Any:
    """A cell as JSON can hold it: a blob by its size; PostgreSQL's other types (numeric,
    timestamps, arrays, ...) as numbers or as their text."""
    if isinstance(value, (bytes, memoryview)):
        return f"<blob, {len(value)} bytes>"
    if isinstance(value, decimal.Decimal):
        return int(value) if value.is_finite() and value == value.to_integral_value() else float(value)
    if value is None or isinstance(value, (str, int, float)):
        return value
    return str(value)


def _unique(names: Sequence[str]) -> list[str]:
    """Column names made distinct (`key`, `key:2`) so no JSON field hides another."""
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}:{seen[name]}")
    return unique


# ---------------------------------------------------------------- demo


def run_demo(args: argparse.Namespace) -> int:
    if getattr(args, "db", None) is not None:
        raise CliError("the demo writes a fresh cache directory: give --dir DIR, not --db", EXIT_USAGE)
    from ._demo import DEFAULT_DIR, DirectoryInUse, ForeignDirectory, run

    directory = Path(getattr(args, "dir", None) or DEFAULT_DIR)
    try:
        finished = run(directory, duration=args.duration, agents=args.agents)
    except ForeignDirectory as error:
        raise CliError(str(error), EXIT_USAGE) from None
    except DirectoryInUse as error:
        raise CliError(str(error), EXIT_SQL) from None
    except CacheError as error:
        raise CliError(f"the demo cannot use {directory}: {error}", EXIT_DATABASE) from None
    except OSError as error:
        raise CliError(f"the demo cannot use {directory}: {_os_error(error)}", EXIT_DATABASE) from None
    return EXIT_OK if finished else EXIT_INTERRUPTED

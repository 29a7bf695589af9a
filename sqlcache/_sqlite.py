"""The disk tier on one SQLite file, through aiosqlite.

Two connections: a writer, through which every write batch runs as one `BEGIN IMMEDIATE`
transaction (so concurrent sets share a commit), and a reader in autocommit mode, so that
reads and the coherence check never queue behind a write waiting for another process's lock.
The schema is in `migrations/`; each statement below is named and says what it does. Every
statement is parameterised, and every one that touches many rows walks an index.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import itertools
import logging
import os
import re
import sqlite3
import time
import warnings
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

import aiosqlite
import orjson

from ._config import Durability, InvalidationStrategy
from ._exceptions import (
    CacheBusyError,
    CacheError,
    CacheDirectoryError,
    DamagedCacheWarning,
    SchemaVersionError,
    StorageError,
)
from ._store import (
    Change,
    Changes,
    FlushReads,
    PurgeExpired,
    Put,
    ReadCounts,
    Remove,
    RemoveAll,
    Removed,
    RemovePattern,
    RemoveTag,
    StoredRow,
    TrimLog,
    WriteOp,
    WriteResult,
    prefix_successor,
)

logger = logging.getLogger("sqlcache")

SQLITE_MAGIC = b"SQLite format 3\x00"
T = TypeVar("T")

# ---------------------------------------------------------------- reads (reader connection)

# One key, by the unique index on entries.key.
READ_ONE = "SELECT key, value, codec, expires_at, tags FROM entries WHERE key = ?"

# Many keys in one query (coalesced concurrent gets): probes the key index once per key.
READ_MANY = """
SELECT key, value, codec, expires_at, tags FROM entries
WHERE key IN (SELECT value FROM json_each(?))
"""

# Entry count and bytes, kept by triggers so that this is O(1).
READ_SIZE = "SELECT entries, bytes FROM counters WHERE id = 1"

# The invalidation log after the last row this process has applied.
READ_CHANGES = "SELECT seq, origin, kind, arg FROM invalidations WHERE seq > ? ORDER BY seq"

# The newest log position, so a fresh process starts reading after it.
READ_LAST_SEQ = "SELECT coalesce(max(seq), 0) FROM invalidations"

# ---------------------------------------------------------------- writes (writer connection)

# Insert an entry or replace the one under its key; the triggers keep tags, access rows and
# counters in step, and keep the read statistics of a replaced entry.
UPSERT_ENTRY = """
INSERT INTO entries (key, value, codec, size, tags, created_at, expires_at)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (key) DO UPDATE SET
    value = excluded.value, codec = excluded.codec, size = excluded.size, tags = excluded.tags,
    created_at = excluded.created_at, expires_at = excluded.expires_at
"""

# Add a batch of reads made in memory or on disk to an entry's statistics.
RECORD_READS = """
UPDATE access SET access_count = access_count + ?, accessed_at = max(accessed_at, ?)
WHERE entry_id = (SELECT id FROM entries WHERE key = ?)
"""

# Delete the given keys, by the key index.
DELETE_KEYS = """
DELETE FROM entries WHERE key IN (SELECT value FROM json_each(?))
RETURNING key, expires_at
"""

# Delete every entry carrying a tag, by the tags primary key (tag, entry_id).
DELETE_TAG = """
DELETE FROM entries WHERE id IN (SELECT entry_id FROM tags WHERE tag = ?)
RETURNING key, expires_at
"""

# Delete the keys matching a regex among those in the key range of its literal prefix.
DELETE_PATTERN_IN_RANGE = """
DELETE FROM entries WHERE key >= ? AND key < ? AND key REGEXP ?
RETURNING key, expires_at
"""

# A pattern with no literal prefix has no range to narrow by: this one scans the keys.
DELETE_PATTERN_ANYWHERE = "DELETE FROM entries WHERE key REGEXP ? RETURNING key, expires_at"

DELETE_ALL = "DELETE FROM entries RETURNING key, expires_at"

# Delete up to N expired entries, soonest expired first, by the partial expiry index.
DELETE_EXPIRED = """
DELETE FROM entries WHERE id IN (
    SELECT id FROM entries WHERE expires_at <= ? ORDER BY expires_at LIMIT ?
)
RETURNING size
"""

# Eviction candidates in the order each strategy gives them up, by the index serving it.
VICTIMS = {
    InvalidationStrategy.LRU: """
        SELECT e.id, e.key, e.size FROM access AS a JOIN entries AS e ON e.id = a.entry_id
        ORDER BY a.accessed_at LIMIT ?""",
    InvalidationStrategy.LFU: """
        SELECT e.id, e.key, e.size FROM access AS a JOIN entries AS e ON e.id = a.entry_id
        ORDER BY a.access_count, a.accessed_at LIMIT ?""",
    InvalidationStrategy.FIFO: "SELECT id, key, size FROM entries ORDER BY created_at LIMIT ?",
    InvalidationStrategy.TTL: """
        SELECT id, key, size FROM entries WHERE expires_at IS NOT NULL
        ORDER BY expires_at LIMIT ?""",
}

DELETE_IDS = "DELETE FROM entries WHERE id IN (SELECT value FROM json_each(?))"

# Append to the log other processes read to drop stale memory copies.
LOG_CHANGE = "INSERT INTO invalidations (origin, kind, arg, logged_at) VALUES (?, ?, ?, ?)"

# Forget log rows older than a time, always keeping the newest row.
TRIM_LOG = """
DELETE FROM invalidations
WHERE logged_at < ? AND seq < (SELECT max(seq) FROM invalidations)
"""


@functools.lru_cache(maxsize=128)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _regexp(pattern: str, key: str) -> bool:
    """SQLite's `key REGEXP pattern`, with Python's `re.match` semantics."""
    return _compiled(pattern).match(key) is not None


def _migrations() -> list[tuple[int, str]]:
    """The numbered `.sql` files shipped in `sqlcache.migrations`, in order."""
    found = []
    for item in resources.files("sqlcache.migrations").iterdir():
        number, _, rest = item.name.partition("_")
        if number.isdigit() and rest.endswith(".sql"):
            found.append((int(number), item.read_text(encoding="utf-8")))
    return sorted(found)


LATEST_SCHEMA = _migrations()[-1][0]


async def connect(path: Path, *, busy_timeout: float, isolation_level: str | None) -> aiosqlite.Connection:
    """An aiosqlite connection whose worker is a daemon thread, so a program that forgets
    `close()` still exits; SQLite treats a transaction cut short at exit like a crash:
    rolled back, committed data intact."""
    connection = aiosqlite.connect(path, timeout=busy_timeout, isolation_level=isolation_level, cached_statements=64)
    getattr(connection, "_thread", connection).daemon = True  # type: ignore[union-attr]  # < 0.20 was the Thread
    return await connection


async def in_thread(connection: aiosqlite.Connection, function: Callable[..., T], *args: Any) -> T:
    """Run `function(sqlite3_connection, *args)` in the connection's worker thread, in one hop.

    aiosqlite sends each call to its thread and back; a transaction of several statements
    written as plain sqlite3 code pays that round trip once. This uses aiosqlite's `_execute`
    and `_conn`, the two names its own public methods are built on.
    """
    return await connection._execute(function, connection._conn, *args)


class SQLiteStore:
    """A `Store` on a SQLite file in WAL mode, shared by every process that opens it."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int,
        strategy: InvalidationStrategy,
        origin: str,
        busy_timeout: float = 5.0,
        durability: Durability = Durability.NORMAL,
        check_on_open: bool = True,
    ):
        self.path = path
        self.max_bytes = max_bytes
        self._strategy = strategy
        self._origin = origin
        self._busy_timeout = busy_timeout
        self._durability = durability
        self._check_on_open = check_on_open
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._data_version = -1
        self._last_seq = 0

    # ------------------------------------------------------------ opening and closing

    async def open(self) -> None:
        """Create the directory and file, set a damaged file aside, migrate, connect."""
        await asyncio.to_thread(self._prepare_directory)
        lock = await asyncio.to_thread(self._lock_file)
        try:
            try:
                await self._connect_and_migrate()
            except sqlite3.DatabaseError as error:
                if not _is_damage(error):
                    raise
                await self._close_connections()
                self._set_aside(str(error))
                await self._connect_and_migrate()
        except sqlite3.OperationalError as error:
            await self._close_connections()
            if getattr(error, "sqlite_errorname", "").startswith(("SQLITE_CANTOPEN", "SQLITE_READONLY")):
                raise CacheDirectoryError(f"cannot open cache database {self.path}: {error}") from error
            raise _translate(error, self.path, self._busy_timeout) from error  # e.g. locked while migrating
        except BaseException:
            await self._close_connections()
            raise
        finally:
            lock.close()  # releases the flock

    def _prepare_directory(self) -> None:
        directory = self.path.parent
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
        except OSError as error:
            raise CacheDirectoryError(f"cannot create cache database {self.path}: {error.strerror or error}") from error

    def _lock_file(self):
        """An exclusive flock that serialises opening, migrating and setting aside between processes."""
        handle = open(self.path.parent / "sqlcache.lock", "a+b")
        try:
            os.chmod(handle.name, 0o600)
            fcntl.flock(handle, fcntl.LOCK_EX)
        except BaseException:
            handle.close()
            raise
        return handle

    async def _connect_and_migrate(self) -> None:
        if self.path.stat().st_size > 0:
            with open(self.path, "rb") as file:
                if file.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
                    raise sqlite3.DatabaseError("file is not a database (bad header)")
        self._writer = await self._connect(isolation_level="IMMEDIATE")
        writer = self._writer
        version = await self._scalar(writer, "PRAGMA user_version")
        if version > LATEST_SCHEMA:
            raise SchemaVersionError(
                f"{self.path} has schema version {version}, newer than this sqlcache knows "
                f"({LATEST_SCHEMA}); upgrade sqlcache or use another cache directory (file left untouched)"
            )
        if self._check_on_open and version > 0:
            problems = [tuple(row) for row in await writer.execute_fetchall("PRAGMA quick_check")]
            if problems != [("ok",)]:
                raise sqlite3.DatabaseError(f"quick_check failed: {problems[0][0]}")
        await writer.execute_fetchall("PRAGMA journal_mode = WAL")
        for number, script in _migrations():
            if number > version:
                # The number comes from a file name we ship, so formatting it in is safe;
                # PRAGMA takes no parameters.
                await writer.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number:d};\nCOMMIT;")
        self._reader = await self._connect(isolation_level=None)
        self._data_version = await self._scalar(self._reader, "PRAGMA data_version")
        self._last_seq = await self._scalar(self._reader, READ_LAST_SEQ)

    async def _connect(self, isolation_level: str | None) -> aiosqlite.Connection:
        connection = await connect(self.path, busy_timeout=self._busy_timeout, isolation_level=isolation_level)
        await connection.execute_fetchall(f"PRAGMA synchronous = {self._durability.value.upper()}")
        await connection.create_function("regexp", 2, _regexp, deterministic=True)
        return connection

    @staticmethod
    async def _scalar(connection: aiosqlite.Connection, sql: str) -> Any:
        [row] = await connection.execute_fetchall(sql)
        return row[0]

    def _set_aside(self, reason: str) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = self.path.with_name(f"{self.path.name}.damaged-{stamp}-{os.getpid()}")
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{self.path}{suffix}")
            if source.exists():
                source.rename(f"{target}{suffix}")
        message = f"sqlcache: damaged cache database set aside as {target} ({reason}); starting a fresh cache"
        logger.warning(message)
        warnings.warn(message, DamagedCacheWarning, stacklevel=2)
        self._prepare_directory()

    async def close(self) -> None:
        async with self._write_lock:
            await self._close_connections()

    async def _close_connections(self) -> None:
        for connection in (self._writer, self._reader):
            if connection is not None:
                try:
                    await connection.close()
                except sqlite3.Error:
                    pass
        self._writer = self._reader = None

    # ------------------------------------------------------------ reads

    async def read(self, keys: Sequence[str]) -> dict[str, StoredRow]:
        """The stored rows of `keys` that exist (expired ones included: the caller decides)."""
        if len(keys) == 1:
            rows = await _opened(self._reader).execute_fetchall(READ_ONE, (keys[0],))
        else:
            rows = await _opened(self._reader).execute_fetchall(READ_MANY, (orjson.dumps(list(keys)).decode(),))
        return {key: StoredRow(data, codec, expires_at, _tags(tags)) for key, data, codec, expires_at, tags in rows}

    async def size(self) -> tuple[int, int]:
        [(entries, size)] = await _opened(self._reader).execute_fetchall(READ_SIZE)
        return entries, size

    async def changes(self) -> Changes | None:
        """Log rows other processes wrote since the last call; None when nothing was committed."""
        return await in_thread(_opened(self._reader), self._read_changes)

    def _read_changes(self, db: sqlite3.Connection) -> Changes | None:
        version = db.execute("PRAGMA data_version").fetchone()[0]
        if version == self._data_version:
            return None
        self._data_version = version
        rows = db.execute(READ_CHANGES, (self._last_seq,)).fetchall()
        if not rows:
            return Changes([], complete=True)
        complete = rows[0][0] == self._last_seq + 1
        self._last_seq = rows[-1][0]
        return Changes([Change(kind, arg or "") for _, origin, kind, arg in rows if origin != self._origin], complete)

    # ------------------------------------------------------------ writes

    async def write(self, ops: Sequence[WriteOp], reads: Mapping[str, ReadCounts], now: float) -> WriteResult:
        """Apply `ops` (and the pending read statistics) in one transaction, then evict if over.

        The whole transaction runs in the writer's thread in one hop, so a batch costs one
        round trip to the event loop however many statements it takes.
        """
        async with self._write_lock:
            try:
                return await in_thread(_opened(self._writer), self._write_batch, ops, reads, now)
            except sqlite3.Error as error:
                raise _translate(error, self.path, self._busy_timeout) from error

    def _write_batch(
        self, db: sqlite3.Connection, ops: Sequence[WriteOp], reads: Mapping[str, ReadCounts], now: float
    ) -> WriteResult:
        try:
            if reads:
                db.executemany(RECORD_READS, [(count, last, key) for key, (count, last) in reads.items()])
            results: list[Any] = []
            log: list[tuple[str, str, str, float]] = []
            wall = time.time()
            for op_type, group in itertools.groupby(ops, key=type):
                members = list(group)
                puts = [op for op in members if isinstance(op, Put)]
                if op_type is Put:
                    db.executemany(UPSERT_ENTRY, [_entry_row(put) for put in puts])
                    results.extend(None for _ in puts)
                    log.extend((self._origin, "key", put.key, wall) for put in puts)
                else:
                    for op in members:
                        results.append(self._apply(db, op))
                        log.extend(_log_rows(op, self._origin, wall))
            if log:
                db.executemany(LOG_CHANGE, log)
            written = {op.key for op in ops if isinstance(op, Put)}
            expired, evicted = self._evict_if_over(db, now, written) if written else (0, 0)
            db.commit()
        except BaseException:
            if db.in_transaction:
                db.rollback()
            raise
        return WriteResult(results, evicted=evicted, expired=expired)

    def _apply(self, db: sqlite3.Connection, op: WriteOp) -> Any:
        if isinstance(op, Remove):
            rows = db.execute(DELETE_KEYS, (orjson.dumps(op.keys).decode(),)).fetchall()
        elif isinstance(op, RemoveTag):
            rows = db.execute(DELETE_TAG, (op.tag,)).fetchall()
        elif isinstance(op, RemovePattern):
            upper = prefix_successor(op.prefix) if op.prefix else None
            if upper is None:
                rows = db.execute(DELETE_PATTERN_ANYWHERE, (op.pattern,)).fetchall()
            else:
                rows = db.execute(DELETE_PATTERN_IN_RANGE, (op.prefix, upper, op.pattern)).fetchall()
        elif isinstance(op, RemoveAll):
            rows = db.execute(DELETE_ALL).fetchall()
        elif isinstance(op, PurgeExpired):
            return len(db.execute(DELETE_EXPIRED, (op.now, op.limit)).fetchall())
        elif isinstance(op, FlushReads):
            return None
        elif isinstance(op, TrimLog):
            db.execute(TRIM_LOG, (op.before,))
            return None
        else:
            raise TypeError(f"unknown write operation {op!r}")
        return [Removed(key, expires_at) for key, expires_at in rows]

    def _evict_if_over(self, db: sqlite3.Connection, now: float, written: set[str]) -> tuple[int, int]:
        """Bring the bytes back under `max_bytes`: expired entries first, then the strategy's
        victims, never an entry written in this batch. Returns (expired, evicted) counts."""
        excess = db.execute(READ_SIZE).fetchone()[1] - self.max_bytes
        expired = evicted = 0
        while excess > 0:
            freed = [size for (size,) in db.execute(DELETE_EXPIRED, (now, 64)).fetchall()]
            if not freed:
                break
            expired += len(freed)
            excess -= sum(freed)
        for victims_sql in self._victim_queries():
            while excess > 0:
                candidates = db.execute(victims_sql, (len(written) + 32,)).fetchall()
                chosen = []
                for entry_id, key, size in candidates:
                    if key not in written:
                        chosen.append(entry_id)
                        excess -= size
                        if excess <= 0:
                            break
                if not chosen:
                    break
                db.execute(DELETE_IDS, (orjson.dumps(chosen).decode(),))
                evicted += len(chosen)
        return expired, evicted

    def _victim_queries(self) -> list[str]:
        if self._strategy is InvalidationStrategy.TTL:
            # Entries that never expire come after every entry that does, oldest written first.
            return [VICTIMS[InvalidationStrategy.TTL], VICTIMS[InvalidationStrategy.FIFO]]
        return [VICTIMS[self._strategy]]


def _entry_row(op: Put) -> tuple[Any, ...]:
    size = len(op.key.encode()) + len(op.data)
    tags = orjson.dumps(op.tags).decode() if op.tags else "[]"
    return (op.key, op.data, op.codec, size, tags, op.created_at, op.expires_at)


def _log_rows(op: WriteOp, origin: str, wall: float) -> list[tuple[str, str, str, float]]:
    if isinstance(op, Remove):
        return [(origin, "key", key, wall) for key in op.keys]
    if isinstance(op, RemoveTag):
        return [(origin, "tag", op.tag, wall)]
    if isinstance(op, RemovePattern):
        return [(origin, "pattern", op.pattern, wall)]
    if isinstance(op, RemoveAll):
        return [(origin, "clear", "", wall)]
    return []  # purges and log trims change no live value


def _opened(connection: aiosqlite.Connection | None) -> aiosqlite.Connection:
    if connection is None:
        raise CacheError("the cache database is closed")
    return connection


def _tags(text: str) -> tuple[str, ...]:
    return () if text == "[]" else tuple(orjson.loads(text))


def _is_damage(error: sqlite3.DatabaseError) -> bool:
    if isinstance(error, sqlite3.OperationalError):
        return False
    name = getattr(error, "sqlite_errorname", "")
    return name in ("SQLITE_CORRUPT", "SQLITE_NOTADB", "") or "malformed" in str(error)


def _translate(error: sqlite3.Error, path: Path, busy_timeout: float) -> Exception:
    name = getattr(error, "sqlite_errorname", "")
    if name.startswith("SQLITE_BUSY") or name.startswith("SQLITE_LOCKED") or "locked" in str(error):
        return CacheBusyError(f"{path} stayed locked by another process for over {busy_timeout:g}s: {error}")
    if name.startswith("SQLITE_FULL"):
        return StorageError(f"disk full while writing {path}: {error}")
    return StorageError(f"cannot write {path}: {error}")

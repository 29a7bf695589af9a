"""The disk tier on one SQLite file in WAL mode, shared by every process that opens it.

Where the time goes decides the design. A point read on this schema costs a few microseconds;
a hop to a worker thread and back costs 90 to 150 on a 2-core machine. So what is fast runs on
the event loop's thread, and only what can wait goes to the worker:

- **Reads on the loop.** The loop's connection (`_loop_db`), a stdlib `sqlite3` connection in
  autocommit mode with the file memory-mapped, answers point reads, small `IN` batches, the
  size and the coherence check (`PRAGMA data_version`, about a microsecond). In WAL mode a
  reader takes no lock and never waits for a writer. A batch of more than `LOOP_READ_MAX_KEYS`
  keys goes to the worker.
- **Writes on the loop when nothing is in the way.** The same connection tries `BEGIN
  IMMEDIATE` with a zero busy timeout. If another process holds the write lock
  (`SQLITE_BUSY`), or the batch may be slow (a tag, pattern or clear that can remove any number
  of rows, many bytes, many read statistics) or must fsync (`durability=full`), the batch goes
  to the worker thread instead, whose connection waits up to `busy_timeout`. Once `BEGIN
  IMMEDIATE` succeeded nothing in the transaction waits on a lock, and with
  `synchronous=NORMAL` the commit only appends to the WAL. Reads and writes share the
  connection because SQLite drops a connection's page cache whenever another connection
  changed the file: with a reader apart from the writer, every read after a set walked the
  b-tree again through the WAL (a read in the Zipf mix: 42.8 µs median, 17.1 on the shared
  connection). Nothing on the loop awaits inside a transaction, so a read never sees one open.
- **Checkpoints off the loop, two per cycle of the WAL.** No connection checkpoints
  automatically (`wal_autocheckpoint=0`). Once a commit left the WAL over
  `CHECKPOINT_WAL_BYTES`, the worker runs a passive checkpoint while writes on the loop go on
  beside it. Those writes append frames it does not copy, so it cannot let the WAL start over
  (only a write that finds every frame copied does, and `journal_size_limit` then truncates the
  file); the next checkpoint is due at `WAL_HARD_BYTES`, where writes queue behind it in the
  worker, so it copies the rest and the WAL starts over. Starting the next checkpoint as soon as
  the last one ended, as this store did, ran one every 11 sets in a stream of sets, each with
  two fsyncs (437 checkpoints for 5,000 sets).
- **The file looked at once per `FILE_CHECK_INTERVAL`**, not per write: its WAL's size (for the
  checkpoint) and its inode (was it set aside by another process?) cost a `stat` each, some
  6 us apiece on this machine. A write within that interval of another process setting the file
  aside lands in the old file, as it would had it committed just before: a set-aside discards
  everything the old file holds.

- **Deleted content zeroed only where that costs no I/O** (`secure_delete = FAST`). Debian's
  build of SQLite (this machine's) defaults to `secure_delete = ON`, which also overwrites every
  page a delete frees, so the commit writes those pages to the WAL too: deleting 1,000 tagged entries
  among 100,000 took 5.4 ms with its commit under ON and 4.2 ms under FAST (median of 30, a
  stdlib script on a copy of the file). Under FAST a deleted row's bytes are still zeroed in its
  b-tree page; only pages moved to the freelist keep their old bytes until reused.

What a commit writes decides a set's cost (each page is a WAL frame): a refresh of an entry
writes about three pages (its row, the log's newest page, now and then the log's oldest), not the
seven it wrote while every set also moved the entry's access row, its recency index and the
counters row (migration 0006; `_plan`'s docstring says how eviction stays exact without them).

The worker is a one-thread `ThreadPoolExecutor` with its own connection, so no connection is
ever used by two threads, and the executor belongs to no event loop: one store serves
successive loops. The write algorithm itself is `_plan.write_batch`, shared with every engine;
this module gives its statements their SQLite text, and runs it.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import logging
import math
import os
import re
import sqlite3
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

import aiosqlite

from . import _plan
from ._config import Durability, InvalidationStrategy
from ._exceptions import (
    CacheBusyError,
    CacheDirectoryError,
    CacheError,
    DamagedCacheWarning,
    SchemaVersionError,
    StorageError,
)
from ._store import (
    Changes,
    FlushReads,
    Put,
    PutMany,
    PurgeExpired,
    ReadCounts,
    Remove,
    StoredRow,
    Touch,
    WriteOp,
    WriteResult,
)

logger = logging.getLogger("sqlcache")

SQLITE_MAGIC = b"SQLite format 3\x00"
T = TypeVar("T")

LOOP_READ_MAX_KEYS = 64
"""Keys a read answers on the loop: 64 point reads take about 0.3 ms, under the 5 ms stall
budget of the benchmarks with room to spare; a larger batch goes to the worker thread."""

LOOP_WRITE_MAX_BYTES = 64 * 1024
"""Bytes of values a batch may write on the loop. Eviction frees as many bytes as the batch
brings, and a small entry's delete costs about 20 us with its triggers: 64 KiB of 600-byte
entries is about 110 deletes, some 2 ms, inside the 5 ms stall budget. A larger batch goes to the
worker thread."""

LOOP_WRITE_MAX_PUTS = 16
"""Entries a batch may write on the loop: at 40 to 60 us a row (upsert, tags, log) on an idle
machine, 16 are about a millisecond; 100 batches of 64 on the loop were measured at a median of
8 ms under load (benchmarks/RESULTS.md). A larger batch goes to the worker, one hop for all."""

LOOP_WRITE_MAX_READS = 1000
"""Read statistics a batch may flush on the loop (about 3 us each)."""

CHECKPOINT_WAL_BYTES = 4 * 1024 * 1024
"""WAL size that triggers a checkpoint: SQLite's own default (1000 pages of 4 KiB)."""

WAL_HARD_BYTES = 2 * CHECKPOINT_WAL_BYTES
"""WAL size past which writes queue behind a running checkpoint (see `_checkpoint_holds_writes`)."""

FILE_CHECK_INTERVAL = 0.001
"""Seconds between two looks at the file's inode and its WAL's size (`_check_file`): at most one
`stat` pair per millisecond. A millisecond of quick commits adds well under a MiB to the WAL,
inside the slack between `CHECKPOINT_WAL_BYTES` and `WAL_HARD_BYTES`."""

MMAP_BYTES = 256 * 1024 * 1024
"""`mmap_size` of each connection: a hot read is a memory access (measured in perf-floors.md)."""

# Statements a batch can run on the loop: their work is bounded by the batch's own size.
_QUICK_OPS = (Put, PutMany, Touch, Remove, PurgeExpired, FlushReads)

# ---------------------------------------------------------------- reads

# One key, by the unique index on entries.key.
READ_ONE = "SELECT value, codec, expires_at, tags, stale_until FROM entries WHERE key = ?"

# Entry count and bytes, kept by triggers so that this is O(1).
READ_SIZE = "SELECT entries, bytes FROM counters WHERE id = 1"

# The invalidation log after the last row this process has applied.
READ_CHANGES = "SELECT seq, origin, kind, arg FROM invalidations WHERE seq > ? ORDER BY seq"

# The newest log position, so a fresh process starts reading after it.
READ_LAST_SEQ = "SELECT coalesce(max(seq), 0) FROM invalidations"

# ---------------------------------------------------------------- eviction indexes

# The index each strategy's victims query walks, made on open by the store that evicts by it
# (migration 0004 explains why they are not all kept); TTL falls back to FIFO for entries that
# never expire, and its own order is the end-of-life index every strategy has (entries_by_end).
STRATEGY_INDEXES = {
    InvalidationStrategy.LRU: ("CREATE INDEX IF NOT EXISTS access_by_recency ON access (accessed_at)",),
    InvalidationStrategy.LFU: ("CREATE INDEX IF NOT EXISTS access_by_frequency ON access (access_count, accessed_at)",),
    InvalidationStrategy.FIFO: ("CREATE INDEX IF NOT EXISTS entries_by_creation ON entries (created_at)",),
    InvalidationStrategy.TTL: ("CREATE INDEX IF NOT EXISTS entries_by_creation ON entries (created_at)",),
}

# ---------------------------------------------------------------- the write plan's statements

STATEMENTS = {
    # Add a batch of reads made in memory or on disk to an entry's statistics.
    "record_reads": """
        UPDATE access SET access_count = access_count + ?, accessed_at = max(accessed_at, ?)
        WHERE entry_id = (SELECT id FROM entries WHERE key = ?)""",
    # Insert an entry or replace the one under its key; the triggers (migrations 0003 and 0006)
    # keep the counters in step, give a new entry its access row and leave a replaced entry's
    # read statistics as they were (its write's use is its created_at: see the victim queries).
    "upsert_entry": """
        INSERT INTO entries (key, value, codec, size, tags, created_at, expires_at)
        VALUES (?, ?, ?, ?, ?, ?, ?)
        ON CONFLICT (key) DO UPDATE SET
            value = excluded.value, codec = excluded.codec, size = excluded.size, tags = excluded.tags,
            created_at = excluded.created_at, expires_at = excluded.expires_at, stale_until = NULL
        RETURNING id""",
    # Give the entry just written a stale window: its row outlives expires_at until then.
    "set_stale_until": "UPDATE entries SET stale_until = ? WHERE id = ?",
    # A new expiry for a live entry, by the key index; its stale window (if any) moves with it.
    # The right-hand sides read the old row, so the window keeps its length.
    "touch_entry": """
        UPDATE entries SET stale_until = ? + (stale_until - expires_at), expires_at = ?
        WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)
        RETURNING key""",
    # Index one tag of an entry (already indexed when a set keeps the same tags).
    "insert_tag": "INSERT OR IGNORE INTO tags (tag, entry_id) VALUES (?, ?)",
    # Delete one key, by the key index.
    "delete_key": "DELETE FROM entries WHERE key = ? RETURNING key, expires_at",
    # Delete every entry carrying a tag, by the tags primary key (tag, entry_id).
    "delete_tag": """
        DELETE FROM entries WHERE id IN (SELECT entry_id FROM tags WHERE tag = ?)
        RETURNING key, expires_at""",
    # Delete the keys matching a regex among those in the key range of its literal prefix.
    "delete_pattern_in_range": """
        DELETE FROM entries WHERE key >= ? AND key < ? AND key REGEXP ?
        RETURNING key, expires_at""",
    # A pattern with no literal prefix has no range to narrow by: this one scans the keys.
    "delete_pattern_anywhere": "DELETE FROM entries WHERE key REGEXP ? RETURNING key, expires_at",
    "delete_all": "DELETE FROM entries RETURNING key, expires_at",
    # Delete up to N entries whose life ended (the stale window's end, else the expiry), soonest
    # ended first, by the partial index entries_by_end (migration 0005).
    "delete_expired": """
        DELETE FROM entries WHERE id IN (
            SELECT id FROM entries
            WHERE expires_at IS NOT NULL AND coalesce(stale_until, expires_at) <= ?
            ORDER BY coalesce(stale_until, expires_at) LIMIT ?)
        RETURNING size""",
    # Entry count and bytes, and when the soonest entry's life ends (NULL: none ever does), by
    # the end-of-life index: eviction looks for expired entries only when there are some. And
    # the log's newest position (as `last_seq`), which a batch that wrote entries needs too.
    "read_fill": """
        SELECT entries, bytes, (
            SELECT coalesce(stale_until, expires_at) FROM entries WHERE expires_at IS NOT NULL
            ORDER BY coalesce(stale_until, expires_at) LIMIT 1), (
            SELECT coalesce(max(seq), 0) FROM invalidations)
        FROM counters WHERE id = 1""",
    # Eviction candidates in the order each strategy gives them up, by the index serving it, as
    # (id, key, size, count, used_at, written_at): the plan ranks them by (count, max(used_at,
    # written_at)), since a set leaves `access` alone (migration 0006); FIFO and TTL store their
    # whole order, so their written_at is their used_at.
    "victims_lru": """
        SELECT e.id, e.key, e.size, 0, a.accessed_at, e.created_at
        FROM access AS a JOIN entries AS e ON e.id = a.entry_id
        ORDER BY a.accessed_at LIMIT ?""",
    "victims_lfu": """
        SELECT e.id, e.key, e.size, a.access_count, a.accessed_at, e.created_at
        FROM access AS a JOIN entries AS e ON e.id = a.entry_id
        ORDER BY a.access_count, a.accessed_at LIMIT ?""",
    "victims_fifo": "SELECT id, key, size, 0, created_at, created_at FROM entries ORDER BY created_at LIMIT ?",
    "victims_ttl": """
        SELECT id, key, size, 0, coalesce(stale_until, expires_at), coalesce(stale_until, expires_at)
        FROM entries WHERE expires_at IS NOT NULL
        ORDER BY coalesce(stale_until, expires_at) LIMIT ?""",
    # A rewritten eviction candidate's write, stored as its last use (see `_plan._choose`).
    "catch_up_access": "UPDATE access SET accessed_at = max(accessed_at, ?) WHERE entry_id = ?",
    "delete_id": "DELETE FROM entries WHERE id = ?",
    # Append to the log other processes read to drop stale memory copies. A seq is max+1 and
    # the trim keeps the newest rows, so seqs are never reused and never skip a number.
    "log_changes": "INSERT INTO invalidations (origin, kind, arg, logged_at) VALUES (?, ?, ?, ?)",
    "read_log_since": READ_CHANGES,
    "last_seq": READ_LAST_SEQ,
    # Forget the oldest log rows, by the primary key (a prefix of the sequence, so no holes).
    "trim_log": "DELETE FROM invalidations WHERE seq <= ?",
}


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


def open_connection(path: Path, *, busy_timeout: float, durability: Durability = Durability.NORMAL) -> sqlite3.Connection:
    """A stdlib connection in autocommit mode (transactions are begun explicitly), with the
    file memory-mapped, no automatic checkpoints, deleted content zeroed where that costs no
    I/O and Python's `re.match` as REGEXP (the module docstring says why each).

    `check_same_thread=False` because connections are made in the worker thread; each one is
    then used by one thread only (see the module docstring)."""
    db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False, cached_statements=64)
    try:
        db.execute(f"PRAGMA synchronous = {durability.value.upper()}")  # an enum value, not user text
        db.execute(f"PRAGMA mmap_size = {MMAP_BYTES:d}")
        db.execute("PRAGMA wal_autocheckpoint = 0")
        db.execute("PRAGMA secure_delete = FAST")
        db.execute(f"PRAGMA journal_size_limit = {CHECKPOINT_WAL_BYTES:d}")
        db.create_function("regexp", 2, _regexp, deterministic=True)
    except BaseException:
        db.close()
        raise
    return db


async def connect(path: Path, *, busy_timeout: float, isolation_level: str | None) -> aiosqlite.Connection:
    """An aiosqlite connection (the preloader's) whose worker is a daemon thread, so a program
    that forgets `close()` still exits; SQLite treats a transaction cut short at exit like a
    crash: rolled back, committed data intact."""
    connection = aiosqlite.connect(path, timeout=busy_timeout, isolation_level=isolation_level, cached_statements=64)
    getattr(connection, "_thread", connection).daemon = True  # type: ignore[union-attr]  # < 0.20 was the Thread
    return await connection


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
        self._worker_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlcache-worker")
        self._loop_db: sqlite3.Connection | None = None
        self._worker: sqlite3.Connection | None = None  # used in the worker thread only
        self._inode = 0
        self._replaced = False
        self._data_version = -1
        self._last_seq = 0
        self._checkpointing = False
        self._wal_bytes = 0
        self._checkpoint_due_at = CHECKPOINT_WAL_BYTES  # WAL bytes that start the next checkpoint
        self._file_checked_at = -math.inf  # time.monotonic() of the last `_check_file`
        self._file_replaced = False  # what that check found

    # ------------------------------------------------------------ opening and closing

    async def open(self) -> None:
        """Create the directory and file, set a damaged file aside, migrate, connect."""
        await self._in_worker(self._open)

    def _open(self) -> None:
        self._prepare_directory()
        with self._locked():
            try:
                try:
                    self._connect_and_migrate()
                except sqlite3.DatabaseError as error:
                    if not _is_damage(error):
                        raise
                    self._close_connections()
                    self._set_aside(str(error))
                    self._connect_and_migrate()
            except sqlite3.OperationalError as error:
                self._close_connections()
                if getattr(error, "sqlite_errorname", "").startswith(("SQLITE_CANTOPEN", "SQLITE_READONLY")):
                    raise CacheDirectoryError(f"cannot open cache database {self.path}: {error}") from error
                raise _translate(error, self.path, self._busy_timeout) from error  # e.g. locked while migrating
            except BaseException:
                self._close_connections()
                raise

    def _prepare_directory(self) -> None:
        directory = self.path.parent
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as error:
            raise CacheDirectoryError(f"cannot create cache directory {directory}: {error.strerror or error}") from error
        verb = "open" if self.path.exists() else "create"
        try:
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        except OSError as error:
            raise CacheDirectoryError(f"cannot {verb} cache database {self.path}: {error.strerror or error}") from error

    def _locked(self) -> Any:
        """An exclusive flock that serialises opening, migrating and setting aside between processes."""
        path = self.path.parent / "sqlcache.lock"
        try:
            handle = open(path, "a+b")
        except OSError as error:
            raise CacheDirectoryError(f"cannot open lock file {path}: {error.strerror or error}") from error
        try:
            os.chmod(handle.name, 0o600)
            fcntl.flock(handle, fcntl.LOCK_EX)
        except BaseException:
            handle.close()
            raise
        return handle  # closing it (the `with` block's end) releases the flock

    def _connect_and_migrate(self) -> None:
        if self.path.stat().st_size > 0:
            with open(self.path, "rb") as file:
                if file.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
                    raise sqlite3.DatabaseError("file is not a database (bad header)")
        self._worker = worker = open_connection(self.path, busy_timeout=self._busy_timeout, durability=self._durability)
        version = worker.execute("PRAGMA user_version").fetchone()[0]
        if version > LATEST_SCHEMA:
            raise SchemaVersionError(
                f"{self.path} has schema version {version}, newer than this sqlcache knows "
                f"({LATEST_SCHEMA}); upgrade sqlcache or use another cache directory (file left untouched)"
            )
        if self._check_on_open and version > 0:
            problems = worker.execute("PRAGMA quick_check").fetchall()
            if problems != [("ok",)]:
                raise sqlite3.DatabaseError(f"quick_check failed: {problems[0][0]}")
        worker.execute("PRAGMA journal_mode = WAL")
        for number, script in _migrations():
            if number > version:
                # The number comes from a file name we ship, so formatting it in is safe;
                # PRAGMA takes no parameters.
                worker.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number:d};\nCOMMIT;")
        for statement in STRATEGY_INDEXES[self._strategy]:
            worker.execute(statement)
        self._loop_db = open_connection(self.path, busy_timeout=0, durability=self._durability)
        self._inode = os.stat(self.path).st_ino
        self._data_version = self._loop_db.execute("PRAGMA data_version").fetchone()[0]
        self._last_seq = self._loop_db.execute(READ_LAST_SEQ).fetchone()[0]

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
        await self._in_worker(self._close_connections)
        self._worker_thread.shutdown(wait=False)

    def _close_connections(self) -> None:
        for db in (self._loop_db, self._worker):
            if db is not None:
                db.close()
        self._loop_db = self._worker = None

    async def _follow_if_replaced(self) -> None:
        """If the file was set aside (renamed) by another process, reconnect to the new one.

        A process that found the file damaged renames it and starts a fresh one; every other
        process must follow it there, or it would go on reading and writing a file nobody else
        sees. One `stat` (about a microsecond) per check; the reopening runs in the worker."""
        if self._was_replaced():
            logger.warning("sqlcache: %s was replaced by another process; reopening it", self.path)
            await self._in_worker(self._reopen)

    def _was_replaced(self) -> bool:
        try:
            return os.stat(self.path).st_ino != self._inode
        except FileNotFoundError:
            return True

    def _reopen(self) -> None:
        self._close_connections()
        self._open()
        self._replaced = True
        self._file_replaced = False

    # ------------------------------------------------------------ reads

    async def read(self, keys: Sequence[str]) -> dict[str, StoredRow]:
        """The stored rows of `keys` that exist (expired ones included: the caller decides)."""
        rows = self.read_now(keys)
        if rows is None:
            rows = await self._in_worker(self._read_rows, _opened(self._worker), keys)
        return rows

    def read_now(self, keys: Sequence[str]) -> dict[str, StoredRow] | None:
        """`read` on the loop's connection; None for a large batch, or when the loop's connection
        cannot answer now (busy in a WAL recovery by another process, or being reopened after
        the file was replaced: rare, so that read waits in the worker, which reports a lasting
        error as it is)."""
        if len(keys) > LOOP_READ_MAX_KEYS:
            return None
        try:
            return self._read_rows(_opened(self._loop_db), keys)
        except sqlite3.Error:
            return None

    @staticmethod
    def _read_rows(db: sqlite3.Connection, keys: Sequence[str]) -> dict[str, StoredRow]:
        found = {}
        for key in keys:
            row = db.execute(READ_ONE, (key,)).fetchone()
            if row is not None:
                data, codec, expires_at, tags, stale_until = row
                found[key] = StoredRow(data, codec, expires_at, _plan.decode_tags(tags), stale_until)
        return found

    async def size(self) -> tuple[int, int]:
        entries, size = _opened(self._loop_db).execute(READ_SIZE).fetchone()
        return entries, size

    async def log_position(self) -> int:
        return _opened(self._loop_db).execute(READ_LAST_SEQ).fetchone()[0]

    async def changes(self) -> Changes | None:
        """Log rows other processes wrote since the last call; None when nothing was committed.

        Only after the rows were read does the store move its position, so a failed read is
        read again next time."""
        await self._follow_if_replaced()
        if self._replaced:
            self._replaced = False
            return Changes([], complete=False)
        reader = _opened(self._loop_db)
        version = reader.execute("PRAGMA data_version").fetchone()[0]
        if version == self._data_version:
            return None
        rows = reader.execute(READ_CHANGES, (self._last_seq,)).fetchall()
        changes = _plan.changes_from_log(rows, self._last_seq, self._origin)
        self._data_version = version
        if rows:
            self._last_seq = rows[-1][0]
        return changes

    # ------------------------------------------------------------ writes

    async def write(self, ops: Sequence[WriteOp], reads: Mapping[str, ReadCounts], now: float) -> WriteResult:
        """Apply `ops` (and the pending read statistics) in one transaction, then evict if over:
        on the loop if the lock is free and the batch is quick, else in the worker thread."""
        await self._follow_if_replaced()
        result = self.write_now(ops, reads, now)
        if result is None:
            try:
                result = await self._in_worker(self._write_waiting, ops, reads, now)
            except sqlite3.Error as error:
                raise _translate(error, self.path, self._busy_timeout) from error
            self._committed(result)
        return result

    def write_now(self, ops: Sequence[WriteOp], reads: Mapping[str, ReadCounts], now: float) -> WriteResult | None:
        """`write` on the loop's connection, or None if it would have to wait: another process
        holds the lock, a checkpoint must finish first, the batch is slow, or the file was replaced."""
        self._check_file()
        if self._file_replaced or self._checkpoint_holds_writes() or not self._is_quick(ops, reads):
            return None
        try:
            result = self._write_now(_opened(self._loop_db), ops, reads, now)
        except sqlite3.Error as error:
            raise _translate(error, self.path, self._busy_timeout) from error
        if result is not None:
            self._committed(result)
        return result

    def _committed(self, result: WriteResult) -> None:
        """After a commit: skip the log rows it wrote when no other process's rows came between
        (a process writing more than the log keeps between two checks would otherwise find
        its position trimmed away and empty its memory tier for nothing); checkpoint if due."""
        if result.logged and result.seq - result.logged == self._last_seq:
            self._last_seq = result.seq
        self._check_file()  # a batch that took over `FILE_CHECK_INTERVAL` is measured at once
        if not self._checkpointing and self._wal_bytes > self._checkpoint_due_at:
            self._checkpointing = True
            self._worker_thread.submit(self._checkpoint)

    def _check_file(self) -> None:
        """Look at the file's inode and its WAL's size, unless done in the last
        `FILE_CHECK_INTERVAL` (see the module docstring)."""
        now = time.monotonic()
        if now - self._file_checked_at < FILE_CHECK_INTERVAL:
            return
        self._file_checked_at = now
        self._file_replaced = self._was_replaced()
        try:
            self._wal_bytes = os.stat(f"{self.path}-wal").st_size
        except FileNotFoundError:
            self._wal_bytes = 0
        if self._wal_bytes <= CHECKPOINT_WAL_BYTES:  # started over (and truncated): a new cycle
            self._checkpoint_due_at = CHECKPOINT_WAL_BYTES

    def _checkpoint_holds_writes(self) -> bool:
        """Whether writes must queue behind the running checkpoint. A passive checkpoint with
        writes appending beside it cannot reach the WAL's end, so the WAL cannot start over;
        up to `WAL_HARD_BYTES` the writes go on, past it they wait in the worker, and the
        checkpoint finishes (see the module docstring)."""
        return self._checkpointing and self._wal_bytes > WAL_HARD_BYTES

    def _is_quick(self, ops: Sequence[WriteOp], reads: Mapping[str, ReadCounts]) -> bool:
        if self._durability is not Durability.NORMAL or len(reads) > LOOP_WRITE_MAX_READS:
            return False
        puts = values = 0
        for op in ops:
            if not isinstance(op, _QUICK_OPS):
                return False
            for put in _puts(op):
                puts += 1
                values += len(put.data)
        return puts <= LOOP_WRITE_MAX_PUTS and values <= LOOP_WRITE_MAX_BYTES

    def _write_now(
        self, db: sqlite3.Connection, ops: Sequence[WriteOp], reads: Mapping[str, ReadCounts], now: float
    ) -> WriteResult | None:
        """The batch, committed on this thread; None if another process holds the write lock."""
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as error:
            if _is_busy(error):
                return None
            raise
        return self._run_batch(db, ops, reads, now)

    def _write_waiting(self, ops: Sequence[WriteOp], reads: Mapping[str, ReadCounts], now: float) -> WriteResult:
        """The batch in the worker thread, waiting up to `busy_timeout` for the write lock."""
        db = _opened(self._worker)
        db.execute("BEGIN IMMEDIATE")
        return self._run_batch(db, ops, reads, now)

    def _run_batch(
        self, db: sqlite3.Connection, ops: Sequence[WriteOp], reads: Mapping[str, ReadCounts], now: float
    ) -> WriteResult:
        try:
            plan = _plan.write_batch(
                ops, reads, now=now, origin=self._origin, max_bytes=self.max_bytes, strategy=self._strategy
            )
            result = _plan.run(plan, functools.partial(_execute, db))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.rollback()
            raise
        return result

    def _checkpoint(self) -> None:
        """A passive checkpoint, in the worker; the next one is due at `WAL_HARD_BYTES`, or at
        `CHECKPOINT_WAL_BYTES` again once the WAL started over (see `_check_file`)."""
        try:
            if self._worker is not None:
                self._worker.execute("PRAGMA wal_checkpoint(PASSIVE)")
                self._checkpoint_due_at = WAL_HARD_BYTES
        except sqlite3.Error as error:  # busy or failing: the next commit tries again
            logger.debug("sqlcache: checkpoint of %s deferred: %s", self.path, error)
        finally:
            self._checkpointing = False

    async def _in_worker(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._worker_thread, function, *args)


def _execute(db: sqlite3.Connection, query: _plan.Query) -> list[Any]:
    sql = STATEMENTS[query.name]
    if query.many:
        db.executemany(sql, query.params)
        return []
    return db.execute(sql, query.params).fetchall()


def _puts(op: WriteOp) -> Sequence[Put]:
    """The entries `op` writes."""
    if isinstance(op, PutMany):
        return op.puts
    return (op,) if isinstance(op, Put) else ()


def _opened(connection: sqlite3.Connection | None) -> sqlite3.Connection:
    if connection is None:
        raise CacheError("the cache database is closed")
    return connection


def _is_damage(error: sqlite3.DatabaseError) -> bool:
    if isinstance(error, sqlite3.OperationalError):
        return False
    name = getattr(error, "sqlite_errorname", "")
    return name in ("SQLITE_CORRUPT", "SQLITE_NOTADB", "") or "malformed" in str(error)


def _is_busy(error: sqlite3.Error) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED (Python 3.10 has no `sqlite_errorname`: read the message)."""
    name = getattr(error, "sqlite_errorname", "")
    return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in str(error)


def _translate(error: sqlite3.Error, path: Path, busy_timeout: float) -> Exception:
    name = getattr(error, "sqlite_errorname", "")
    if _is_busy(error):
        return CacheBusyError(f"{path} stayed locked by another process for over {busy_timeout:g}s: {error}")
    if name.startswith("SQLITE_FULL"):
        return StorageError(f"disk full while writing {path}: {error}")
    return StorageError(f"cannot write {path}: {error}")

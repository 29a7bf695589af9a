"""The disk tier on PostgreSQL, through asyncpg: one database shared by every process on every host.

Connections. A *session* connection of our own serves reads (`read`, `size`, the invalidation
log) and LISTENs for the wake-up of the coherence check; a small asyncpg pool serves write
batches, each one transaction (group commit: the manager's `GroupCommitter` sends every write
submitted while one is in flight as the next batch). Nothing runs in a thread.

Writes are serialised per database by a transaction-scoped advisory lock, taken first thing in
every write transaction (`BEGIN_WRITE`), as SQLite serialises its writers. That one choice
makes three things simple and correct:
- the invalidation log is in commit order and gapless: `seq` is `max(seq)+1` assigned under the
  lock, so a reader at any snapshot sees a prefix of the log, and a row it lacks between its last
  seen position and the first row it gets was trimmed (a sequence would leave a hole on every
  rolled-back transaction, and a later-committing transaction could hold a smaller number than
  one already read: continuity could not be judged by the numbers);
- no deadlock between writers (a transaction that waits for the lock holds no row lock yet);
- eviction sees the true total under the lock, so concurrent writers never over-evict.
A write batch holds the lock for a few statements plus its commit; group commit amortises that
over every op in the batch. Other processes' reads never wait on it (MVCC).

Coherence. Each write that logs a change also `pg_notify`s the channel with `origin first last`
(delivered at commit, in commit order, to every session LISTENing on this database). `changes()`
makes no round trip unless a notification from another origin arrived since the last look; it
then reads the log after the last seen position. NOTIFY is lost while a session is disconnected,
so after every reconnect the log is read again and reported incomplete: the manager empties its
memory tier (the server may also have lost the log's tail, for example restored from a backup).

Size. `counters` holds the entry count and bytes in 16 slots, each trigger run adding its
statement's deltas to slot `pg_backend_pid() % 16`, and `size()` reads

    entries = sum(counters.entries over the 16 slots),  bytes = sum(counters.bytes over them)

which is exact and O(1) (16 rows by the primary key). A sharded counter rather than a sampled
estimate (Solid Cache estimates `bytes ~ (max(id) - min(id)) x mean size of a sample`) because it
is exact and the eviction bound must be; rather than one row because one row every writer on
every host updates would be the hot spot should writes ever stop being serialised, and HOT
updates of 16 narrow unindexed rows leave almost no dead tuples for autovacuum.

Patterns. PostgreSQL's `~` is POSIX ARE, not Python's `re` (lookarounds, `\\d` in classes, flags
and `re.match`'s anchoring differ), so the regex is applied in Python, with `re.match`, to the
keys of the narrowed rows only: those in the key range of the pattern's literal prefix, walked in
the key index (the "C" collation orders keys as Python compares them). A pattern with no literal
prefix reads every key, as on SQLite.

Limits. LISTEN needs a session of its own: behind PgBouncer in transaction (or statement)
pooling mode notifications do not arrive, so other hosts would see changes only after a
reconnect; point `disk_cache_url` at PostgreSQL itself or at a session-mode pool. Keys and tags
cannot contain NUL characters (PostgreSQL text cannot hold them; values can).

The statements are named below, each with what it does; every one is parameterised.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import re
import time
from importlib import resources
from typing import Any, Awaitable, Callable, Mapping, Sequence, TypeVar

import orjson

from ._config import Durability, InvalidationStrategy
from ._exceptions import CacheBusyError, CacheError, DatabaseUnavailableError, SchemaVersionError, StorageError
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
from ._postgres_preload import PostgresDatabase
from ._sqlite import _log_rows as log_rows  # the same log rows as SQLite's, one definition
from ._urls import describe_server, passwords, redact

try:
    import asyncpg
except ImportError:  # pragma: no cover - the extra is not installed
    asyncpg = None

logger = logging.getLogger("sqlcache")
T = TypeVar("T")

CHANNEL = "sqlcache_invalidations"
WRITE_LOCK = 0x73716C6361636865  # 'sqlcache': serialises write transactions on one database
MIGRATION_LOCK = 0x73716C6D69677261  # 'sqlmigra': serialises applying the schema
_TRIM_BATCH = 10_000  # most log rows one TrimLog deletes

# What a committed set survives, as on SQLite. NORMAL: a crash or kill -9 of any client, but a
# crash of the server or of its machine may lose the last ~0.6 s of commits (3 x wal_writer_delay;
# never corrupts; every host then reconnects and drops its memory tier). FULL: those too, at a
# WAL flush per commit. Set per session, so other users of the server keep their own setting.
_SYNCHRONOUS_COMMIT = {Durability.NORMAL: "off", Durability.FULL: "on"}

# ---------------------------------------------------------------- schema

# The schema version table, created by the first process to open the database.
CREATE_VERSION_TABLE = "CREATE TABLE IF NOT EXISTS sqlcache_schema (version integer NOT NULL)"

# The latest schema version applied (NULL on a fresh database).
READ_VERSION = "SELECT max(version) FROM sqlcache_schema"

# Record that one migration was applied.
RECORD_VERSION = "INSERT INTO sqlcache_schema (version) VALUES ($1)"

# Serialise migrations between processes; released at commit.
TAKE_MIGRATION_LOCK = "SELECT pg_advisory_xact_lock($1)"

# ---------------------------------------------------------------- reads (session connection)

# One key, by the unique index on entries.key.
READ_ONE = "SELECT key, value, codec, expires_at, tags FROM entries WHERE key = $1"

# Many keys in one query (coalesced concurrent gets): probes the key index once per key.
READ_MANY = "SELECT key, value, codec, expires_at, tags FROM entries WHERE key = ANY($1::text[])"

# Entry count and bytes: the 16 counter slots, by the primary key.
READ_SIZE = "SELECT coalesce(sum(entries), 0)::bigint, coalesce(sum(bytes), 0)::bigint FROM counters"

# The invalidation log after the last row this process has seen, by the primary key.
READ_CHANGES = "SELECT seq, origin, kind, arg FROM invalidations WHERE seq > $1 ORDER BY seq"

# The newest log position, so a fresh process starts reading after it.
READ_LAST_SEQ = "SELECT coalesce(max(seq), 0)::bigint FROM invalidations"

# ---------------------------------------------------------------- writes (a pool connection)

# Start a write transaction and wait for the other writers of this database (the lock is held
# until the transaction ends). One round trip: two statements in one simple-protocol query, which
# takes no parameters; the lock number is our constant.
BEGIN_WRITE = f"BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK:d})"

COMMIT = "COMMIT"
ROLLBACK = "ROLLBACK"

# Insert entries or replace those under their keys (keys unique within the call); the triggers
# keep tags, access rows and counters in step, and keep the read statistics of a replaced entry.
UPSERT_ENTRIES = """
INSERT INTO entries AS e (key, value, codec, size, tags, created_at, expires_at)
SELECT * FROM unnest($1::text[], $2::bytea[], $3::smallint[], $4::integer[], $5::text[],
                     $6::double precision[], $7::double precision[])
ON CONFLICT (key) DO UPDATE SET
    value = excluded.value, codec = excluded.codec, size = excluded.size, tags = excluded.tags,
    created_at = excluded.created_at, expires_at = excluded.expires_at
"""

# Add the batched reads made in memory or on disk to the entries' statistics, by the key index
# and the access primary key.
RECORD_READS = """
UPDATE access AS a
SET access_count = a.access_count + r.count, accessed_at = greatest(a.accessed_at, r.last)
FROM entries AS e, unnest($1::text[], $2::bigint[], $3::double precision[]) AS r (key, count, last)
WHERE e.key = r.key AND a.entry_id = e.id
"""

# Delete the given keys, by the key index.
DELETE_KEYS = "DELETE FROM entries WHERE key = ANY($1::text[]) RETURNING key, expires_at"

# Delete every entry carrying a tag, by the tags primary key (tag, entry_id).
DELETE_TAG = """
DELETE FROM entries WHERE id IN (SELECT entry_id FROM tags WHERE tag = $1)
RETURNING key, expires_at
"""

# The keys in the range of a pattern's literal prefix, by the key index ("C" collation); the
# regex is then applied in Python. With no upper bound ($2 NULL) the range is open-ended.
KEYS_IN_RANGE = "SELECT id, key FROM entries WHERE key >= $1 AND ($2::text IS NULL OR key < $2)"

# A pattern with no literal prefix has no range to narrow by: every key.
ALL_KEYS = "SELECT id, key FROM entries"

# Delete entries by id (pattern matches, eviction victims), by the primary key.
DELETE_IDS = "DELETE FROM entries WHERE id = ANY($1::bigint[]) RETURNING key, expires_at, size"

DELETE_ALL = "DELETE FROM entries RETURNING key, expires_at"

# Delete up to N expired entries, soonest expired first, by the partial expiry index.
DELETE_EXPIRED = """
DELETE FROM entries WHERE id IN (
    SELECT id FROM entries WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2
)
RETURNING size
"""

# Eviction candidates in the order each strategy gives them up, by the index serving it.
VICTIMS = {
    InvalidationStrategy.LRU: """
        SELECT e.id, e.key, e.size FROM access AS a JOIN entries AS e ON e.id = a.entry_id
        ORDER BY a.accessed_at LIMIT $1""",
    InvalidationStrategy.LFU: """
        SELECT e.id, e.key, e.size FROM access AS a JOIN entries AS e ON e.id = a.entry_id
        ORDER BY a.access_count, a.accessed_at LIMIT $1""",
    InvalidationStrategy.FIFO: "SELECT id, key, size FROM entries ORDER BY created_at LIMIT $1",
    InvalidationStrategy.TTL: """
        SELECT id, key, size FROM entries WHERE expires_at IS NOT NULL
        ORDER BY expires_at LIMIT $1""",
}

# Append to the log other hosts read to drop stale memory copies (positions max+1.., gapless
# under the write lock), wake their sessions at commit with `origin first last`, and return the
# bytes now stored (this transaction's sets included), for eviction, in the same round trip.
LOG_CHANGES = """
WITH logged AS (
    INSERT INTO invalidations (seq, origin, kind, arg, logged_at)
    SELECT last.seq + r.n, $1, r.kind, r.arg, $4
    FROM (SELECT coalesce(max(seq), 0) AS seq FROM invalidations) AS last,
         unnest($2::text[], $3::text[]) WITH ORDINALITY AS r (kind, arg, n)
    RETURNING seq
)
SELECT pg_notify($5, $1 || ' ' || min(seq) || ' ' || max(seq)),
       (SELECT coalesce(sum(bytes), 0)::bigint FROM counters)
FROM logged
"""

# Forget up to N log rows older than a time, oldest first by the primary key, always keeping
# the newest row (so a position is never reused).
TRIM_LOG = """
DELETE FROM invalidations WHERE seq IN (
    SELECT seq FROM invalidations
    WHERE logged_at < $1 AND seq < (SELECT max(seq) FROM invalidations)
    ORDER BY seq LIMIT $2
)
"""


_MIGRATION_FILE = re.compile(r"(\d+)_\w+\.sql")


def migrations() -> list[tuple[int, str]]:
    """The numbered `.sql` files shipped in `sqlcache.migrations/postgresql`, in order."""
    folder = resources.files("sqlcache.migrations").joinpath("postgresql")
    return sorted(
        (int(match.group(1)), item.read_text(encoding="utf-8"))
        for item in folder.iterdir()
        if (match := _MIGRATION_FILE.fullmatch(item.name))
    )


LATEST_SCHEMA = migrations()[-1][0]


@functools.lru_cache(maxsize=128)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


async def _reset(connection: Any) -> None:
    """Pool connections keep no session state (locks are transaction-scoped, nothing LISTENs on
    them), so releasing one needs none of asyncpg's reset round trip, unless a write was cut
    short inside its transaction (asyncpg knows from the server's last status byte)."""
    if connection.is_in_transaction():
        await connection.execute(ROLLBACK)


class PostgresStore:
    """A `Store` on a PostgreSQL database, shared by every process on every host that opens it."""

    def __init__(
        self,
        url: str,
        *,
        max_bytes: int,
        strategy: InvalidationStrategy,
        origin: str,
        busy_timeout: float = 5.0,
        durability: Durability = Durability.NORMAL,
        pool_size: int = 4,
    ):
        if asyncpg is None:
            raise CacheError("disk_cache_url is a PostgreSQL URL but asyncpg is not installed: pip install 'sqlcache[postgresql]'")
        self.url = url
        self.where = describe_server(url)
        self.max_bytes = max_bytes
        self._strategy = strategy
        self._origin = origin
        self._busy_timeout = busy_timeout
        self._durability = durability
        self._pool_size = pool_size
        self._pool: Any = None
        self._session: Any = None
        self._session_lock = asyncio.Lock()
        self._reconnecting: asyncio.Task[None] | None = None
        self._closed = True
        self._last_seq = 0
        self._notified = False
        self._resync = False  # the session was lost: read the log again and report it incomplete
        self._outage_logged = False

    # ------------------------------------------------------------ opening and closing

    def _connect_options(self) -> dict[str, Any]:
        """Connect within the busy timeout; a statement waiting for a lock (the write lock
        included) gives up after it (`lock_timeout`, then `CacheBusyError`); a server that stops
        answering fails a statement a few seconds later instead of hanging it; `durability` as
        `synchronous_commit` (see `_SYNCHRONOUS_COMMIT`)."""
        return {
            "timeout": self._busy_timeout,
            "command_timeout": self._busy_timeout + 5.0,
            "server_settings": {
                "application_name": "sqlcache",
                "lock_timeout": str(int(self._busy_timeout * 1000)),
                "synchronous_commit": _SYNCHRONOUS_COMMIT[self._durability],
            },
        }

    async def open(self) -> None:
        """Connect, apply the schema (once, under the migration lock), start listening."""
        try:
            self._pool = await asyncpg.create_pool(
                self.url, min_size=1, max_size=self._pool_size, reset=_reset, **self._connect_options()
            )
            async with self._pool.acquire() as connection:
                await self._migrate(connection)
            await self._open_session()
            self._last_seq = await self._session.fetchval(READ_LAST_SEQ)
        except BaseException as error:
            await self._close_connections()
            if isinstance(error, Exception) and not isinstance(error, CacheError):
                raise self._translate(error, "open") from None
            raise
        self._closed = False

    async def _migrate(self, connection: Any) -> None:
        async with connection.transaction():
            await connection.execute(TAKE_MIGRATION_LOCK, MIGRATION_LOCK)
            await connection.execute(CREATE_VERSION_TABLE)
            version = await connection.fetchval(READ_VERSION) or 0
            if version > LATEST_SCHEMA:
                raise SchemaVersionError(
                    f"the database {self.where} has sqlcache schema version {version}, newer than this "
                    f"sqlcache knows ({LATEST_SCHEMA}); upgrade sqlcache or use another database (left untouched)"
                )
            for number, script in migrations():
                if number > version:
                    await connection.execute(script)
                    await connection.execute(RECORD_VERSION, number)

    async def _open_session(self) -> None:
        session = await asyncpg.connect(self.url, **self._connect_options())
        try:
            await session.add_listener(CHANNEL, self._on_notify)
        except BaseException:
            session.terminate()
            raise
        session.add_termination_listener(self._on_session_lost)
        self._session = session
        if not self._closed:
            self._resync = True  # a reconnect: notifications were lost while it was away

    def _on_notify(self, connection: Any, pid: int, channel: str, payload: str) -> None:
        """A write committed. Our own rows right after the last seen position need no read:
        notifications come in commit order, so the position just moves on."""
        origin, _, span = payload.partition(" ")
        first, _, last = span.partition(" ")
        if not (first.isdigit() and last.isdigit()):
            self._notified = True  # not ours to parse: look anyway
        elif int(last) <= self._last_seq:
            pass  # rows already read (the notification came after the read that got them)
        elif origin == self._origin and int(first) == self._last_seq + 1:
            self._last_seq = int(last)
        else:
            self._notified = True

    def _on_session_lost(self, connection: Any) -> None:
        if connection is self._session:
            self._session = None
            self._resync = True

    async def close(self) -> None:
        self._closed = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            self._reconnecting = None
        await self._close_connections()

    async def _close_connections(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            try:
                await asyncio.wait_for(session.close(), timeout=2.0)
            except Exception:
                session.terminate()
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), timeout=2.0)
            except Exception:
                pool.terminate()

    # ------------------------------------------------------------ the session: reads and coherence

    async def _on_session(self, work: Callable[[Any], Awaitable[T]], what: str) -> T:
        """Run `work(session)`, reconnecting the session first if it was lost."""
        if self._closed:
            raise CacheError("the cache database is closed")
        async with self._session_lock:
            try:
                if self._session is None:
                    await self._open_session()
                return await work(self._session)
            except Exception as error:
                if isinstance(error, CacheError):
                    raise
                if self._session is not None and self._session.is_closed():
                    self._session = None  # the next call reconnects (and resyncs)
                raise self._translate(error, what) from None

    async def read(self, keys: Sequence[str]) -> dict[str, StoredRow]:
        """The stored rows of `keys` that exist (expired ones included: the caller decides)."""
        if len(keys) == 1:
            rows = await self._on_session(lambda session: session.fetch(READ_ONE, keys[0]), "read from")
        else:
            rows = await self._on_session(lambda session: session.fetch(READ_MANY, list(keys)), "read from")
        return {
            key: StoredRow(data, codec, expires_at, () if tags == "[]" else tuple(orjson.loads(tags)))
            for key, data, codec, expires_at, tags in rows
        }

    async def size(self) -> tuple[int, int]:
        entries, size = await self._on_session(lambda session: session.fetchrow(READ_SIZE), "read from")
        return entries, size

    async def changes(self) -> Changes | None:
        """Log rows other processes wrote since the last call; None (no round trip) when no
        notification came. Without a session it reconnects in the background and returns None;
        once reconnected, it reads the log after the last seen position and reports it
        incomplete, since notifications were lost meanwhile."""
        if self._closed:
            raise CacheError("the cache database is closed")
        if self._session is None:
            if self._reconnecting is None:
                self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())
            return None
        if not (self._notified or self._resync):
            return None
        self._notified = False
        resync, self._resync = self._resync, False
        start = self._last_seq
        try:
            rows = await self._on_session(lambda session: session.fetch(READ_CHANGES, start), "read the log of")
            if resync and not rows:
                # A server restored from a backup or crashed with asynchronous commit may have
                # lost the log's tail: continue from its newest row (the memory tier is dropped).
                self._last_seq = min(start, await self._on_session(lambda s: s.fetchval(READ_LAST_SEQ), "read"))
        except BaseException:
            self._notified, self._resync = True, self._resync or resync
            raise
        complete = not resync and (not rows or rows[0][0] == start + 1)
        if rows:
            self._last_seq = max(self._last_seq, rows[-1][0])
        return Changes([Change(kind, arg or "") for _, origin, kind, arg in rows if origin != self._origin], complete)

    async def _reconnect(self) -> None:
        """One attempt; the first failure of an outage is logged as a warning, later ones at
        debug level (the manager tries every `sync_interval`), the recovery as info."""
        try:
            async with self._session_lock:
                if self._session is None and not self._closed:
                    await self._open_session()
                    if self._outage_logged:
                        logger.info("sqlcache: reconnected to the PostgreSQL cache %s", self.where)
                    self._outage_logged = False
        except Exception as error:
            logger.log(logging.DEBUG if self._outage_logged else logging.WARNING, "sqlcache: %s; retrying", self._translate(error, "reconnect to"))
            self._outage_logged = True
        finally:
            self._reconnecting = None

    # ------------------------------------------------------------ writes

    async def run(self, work: Callable[[Any], Awaitable[T]], what: str) -> T:
        """`work(connection)` on a pool connection; errors become `CacheError`s naming the server."""
        if self._closed or self._pool is None:
            raise CacheError("the cache database is closed")
        try:
            async with self._pool.acquire() as connection:
                return await work(connection)
        except Exception as error:
            if isinstance(error, CacheError):
                raise
            raise self._translate(error, what) from None

    def preloader_database(self) -> PostgresDatabase:
        """The preloader's `_Database` on this store's pool."""
        return PostgresDatabase(self)

    async def write(self, ops: Sequence[WriteOp], reads: Mapping[str, ReadCounts], now: float) -> WriteResult:
        """Apply `ops` (and the pending read statistics) in one transaction, then evict if over."""
        return await self.run(lambda connection: self._write_batch(connection, ops, reads, now), "write to")

    async def _write_batch(
        self, connection: Any, ops: Sequence[WriteOp], reads: Mapping[str, ReadCounts], now: float
    ) -> WriteResult:
        await connection.execute(BEGIN_WRITE)
        try:
            result = await self._write_ops(connection, ops, reads, now)
            await connection.execute(COMMIT)
        except BaseException:
            if connection.is_in_transaction():
                try:
                    await connection.execute(ROLLBACK)
                except Exception:
                    connection.terminate()  # cut off mid-statement: the server rolls back
            raise
        return result

    async def _write_ops(self, db: Any, ops: Sequence[WriteOp], reads: Mapping[str, ReadCounts], now: float) -> WriteResult:
        if reads:
            await self._record_reads(db, reads)
        results: list[Any] = []
        log: list[tuple[str, str]] = []
        for op_type, group in itertools.groupby(ops, key=type):
            members = list(group)
            if op_type is Put:
                await self._put(db, members)
                results.extend(None for _ in members)
                log.extend(("key", put.key) for put in members)
            else:
                for op in members:
                    results.append(await self._APPLY[op_type](self, db, op))
                    log.extend((kind, arg) for _, kind, arg, _ in log_rows(op, self._origin, 0.0))
        stored = None
        if log:
            _, stored = await db.fetchrow(
                LOG_CHANGES, self._origin, [kind for kind, _ in log], [arg for _, arg in log], time.time(), CHANNEL
            )
        written = {op.key for op in ops if isinstance(op, Put)}  # every set is logged: `stored` is known
        expired, evicted = await self._evict_if_over(db, now, written, stored) if written else (0, 0)
        return WriteResult(results, evicted=evicted, expired=expired)

    async def _record_reads(self, db: Any, reads: Mapping[str, ReadCounts]) -> None:
        """`RECORD_READS` for every key read since the last batch."""
        keys = list(reads)
        await db.execute(RECORD_READS, keys, [int(reads[key][0]) for key in keys], [float(reads[key][1]) for key in keys])

    async def _put(self, db: Any, puts: list[Put]) -> None:
        """`UPSERT_ENTRIES` for a run of sets; of several sets of one key the last wins (one
        statement may not update a row twice)."""
        latest = sorted({put.key: put for put in puts}.values(), key=lambda put: put.key)
        await db.execute(
            UPSERT_ENTRIES,
            [put.key for put in latest],
            [put.data for put in latest],
            [put.codec for put in latest],
            [len(put.key.encode()) + len(put.data) for put in latest],
            [orjson.dumps(put.tags).decode() if put.tags else "[]" for put in latest],
            [put.created_at for put in latest],
            [put.expires_at for put in latest],
        )

    async def _remove(self, db: Any, op: Remove) -> list[Removed]:
        """`DELETE_KEYS`."""
        return _removed(await db.fetch(DELETE_KEYS, list(op.keys)))

    async def _remove_tag(self, db: Any, op: RemoveTag) -> list[Removed]:
        """`DELETE_TAG`."""
        return _removed(await db.fetch(DELETE_TAG, op.tag))

    async def _remove_pattern(self, db: Any, op: RemovePattern) -> list[Removed]:
        """`KEYS_IN_RANGE` of the literal prefix (or `ALL_KEYS`), `re.match` here, `DELETE_IDS`."""
        if op.prefix:
            candidates = await db.fetch(KEYS_IN_RANGE, op.prefix, prefix_successor(op.prefix))
        else:
            candidates = await db.fetch(ALL_KEYS)
        match = _compiled(op.pattern).match
        ids = [entry_id for entry_id, key in candidates if match(key)]
        return _removed(await db.fetch(DELETE_IDS, ids)) if ids else []

    async def _remove_all(self, db: Any, op: RemoveAll) -> list[Removed]:
        """`DELETE_ALL`."""
        return _removed(await db.fetch(DELETE_ALL))

    async def _purge_expired(self, db: Any, op: PurgeExpired) -> int:
        """`DELETE_EXPIRED`: at most `op.limit` rows."""
        return len(await db.fetch(DELETE_EXPIRED, op.now, op.limit))

    async def _flush_reads(self, db: Any, op: FlushReads) -> None:
        """Nothing: the reads ride along with every batch."""

    async def _trim_log(self, db: Any, op: TrimLog) -> None:
        """`TRIM_LOG`: at most `_TRIM_BATCH` rows."""
        await db.execute(TRIM_LOG, op.before, _TRIM_BATCH)

    _APPLY: dict[type, Callable[..., Awaitable[Any]]] = {
        Remove: _remove,
        RemoveTag: _remove_tag,
        RemovePattern: _remove_pattern,
        RemoveAll: _remove_all,
        PurgeExpired: _purge_expired,
        FlushReads: _flush_reads,
        TrimLog: _trim_log,
    }

    async def _evict_if_over(self, db: Any, now: float, written: set[str], stored: int) -> tuple[int, int]:
        """Bring the `stored` bytes back under `max_bytes`: expired entries first, then the
        strategy's victims, never an entry written in this batch, no more than needed.
        Returns (expired, evicted) counts."""
        excess = stored - self.max_bytes
        expired = evicted = 0
        while excess > 0:
            freed = [size for (size,) in await db.fetch(DELETE_EXPIRED, now, 64)]
            if not freed:
                break
            expired += len(freed)
            excess -= sum(freed)
        queries = [VICTIMS[self._strategy]]
        if self._strategy is InvalidationStrategy.TTL:
            queries.append(VICTIMS[InvalidationStrategy.FIFO])  # entries that never expire come last
        for victims_sql in queries:
            while excess > 0:
                chosen = []
                for entry_id, key, size in await db.fetch(victims_sql, len(written) + 32):
                    if key not in written:
                        chosen.append(entry_id)
                        excess -= size
                        if excess <= 0:
                            break
                if not chosen:
                    break
                await db.execute(DELETE_IDS, chosen)
                evicted += len(chosen)
        return expired, evicted

    # ------------------------------------------------------------ errors

    def _translate(self, error: BaseException, action: str) -> CacheError:
        """A `CacheError` naming the server, never the password."""
        reason = _scrub(str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__, self.url)
        if isinstance(error, asyncpg.exceptions.LockNotAvailableError):
            return CacheBusyError(f"the PostgreSQL cache {self.where} stayed locked for over {self._busy_timeout:g}s: {reason}")
        if _is_unavailable(error):
            self._resync = True
            return DatabaseUnavailableError(f"cannot {action} the PostgreSQL cache {self.where}: {reason}")
        return StorageError(f"cannot {action} the PostgreSQL cache {self.where}: {reason}")


def _is_unavailable(error: BaseException) -> bool:
    """The server cannot be reached, refused us, or went away (not a problem of the statement)."""
    exceptions = asyncpg.exceptions
    return isinstance(
        error,
        (
            OSError,
            asyncio.TimeoutError,
            exceptions.PostgresConnectionError,  # 08xxx, connection does not exist / failure
            exceptions.InterfaceError,  # "connection is closed", pool closing
            exceptions.CannotConnectNowError,  # starting up or shutting down
            exceptions.OperatorInterventionError,  # 57xxx: admin shutdown, crash shutdown
            exceptions.InvalidAuthorizationSpecificationError,  # 28xxx: bad user or password
            exceptions.InvalidCatalogNameError,  # 3D000: no such database
            exceptions.TooManyConnectionsError,
        ),
    )


def _scrub(message: str, url: str) -> str:
    """`message` with the URL redacted and its password, should it appear alone, hidden."""
    message = message.replace(url, redact(url))
    for password in passwords(url):
        message = message.replace(password, "***")
    return message


def _removed(rows: Sequence[Any]) -> list[Removed]:
    return [Removed(row[0], row[1]) for row in rows]

"""The disk tier on PostgreSQL, through asyncpg: one database shared by every process on every host.

Connections. A *session* connection of our own serves reads (`read`, `size`, the invalidation
log) and LISTENs for the wake-up of the coherence check; a small asyncpg pool serves write
batches, each one transaction (group commit: the manager's `GroupCommitter` sends every write
submitted while one is in flight as the next batch). Nothing runs in a thread. asyncpg
connections belong to the loop that made them: a manager used from a new loop reconnects.

The write algorithm is SQLite's, `sqlcache._plan.write_batch`; this module gives it its
statements (`STATEMENTS`, by the plan's names) and an async driver (`_run_plan`) with steps of
its own, all to save round trips but one: the puts of a batch go as one statement (`_PutBuffer`);
the log statement also trims the log, sends the wake-up of other hosts and reads what the plan
asks next, the log position and the size (`_LogAnswers`); pattern deletions apply the regex in
Python (below). A batch of sets is then four round trips: begin with the write lock, the puts,
the log, the commit.

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
reconnect; point `disk_cache_url` at PostgreSQL itself or at a session-mode pool. Keys, tags
and logged patterns are stored with NUL (which PostgreSQL text cannot hold) escaped: see `to_db`.

The statements are named below, each with what it does; every one is parameterised.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import socket
import weakref
from importlib import resources
from typing import Any, Awaitable, Callable, Mapping, Sequence, TypeVar

from . import _plan
from ._config import Durability, InvalidationStrategy
from ._exceptions import CacheBusyError, CacheError, DatabaseUnavailableError, SchemaVersionError, StorageError
from ._store import Changes, ReadCounts, StoredRow, WriteOp, WriteResult
from ._postgres_preload import PostgresDatabase
from ._urls import describe_server, passwords, redact

try:
    import asyncpg  # type: ignore[import-untyped]  # ships no type information
except ImportError:  # pragma: no cover - the extra is not installed
    asyncpg = None

logger = logging.getLogger("sqlcache")
T = TypeVar("T")

CHANNEL = "sqlcache_invalidations"
WRITE_LOCK = 0x73716C6361636865  # 'sqlcache': serialises write transactions on one database
MIGRATION_LOCK = 0x73716C6D69677261  # 'sqlmigra': serialises applying the schema

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

# The index each strategy's victims query walks, made on open by the store that evicts by it, as
# on SQLite (its migration 0004): an index on `access` makes every read-statistics update
# non-HOT (a dead heap tuple and index entries per key per flush), so a database used only with
# FIFO or TTL has none and those updates stay on their page. TTL's own order is the end-of-life
# index every strategy has (entries_by_end, migration 0003); it falls back to FIFO for entries
# that never expire. (CREATE INDEX blocks writes while it builds: the first open with a new
# strategy on a large cache waits for it.)
STRATEGY_INDEXES = {
    InvalidationStrategy.LRU: "CREATE INDEX IF NOT EXISTS access_by_recency ON access (accessed_at)",
    InvalidationStrategy.LFU: "CREATE INDEX IF NOT EXISTS access_by_frequency ON access (access_count, accessed_at)",
    InvalidationStrategy.FIFO: "CREATE INDEX IF NOT EXISTS entries_by_creation ON entries (created_at)",
    InvalidationStrategy.TTL: "CREATE INDEX IF NOT EXISTS entries_by_creation ON entries (created_at)",
}

# ---------------------------------------------------------------- reads (session connection)

# One key, by the unique index on entries.key.
READ_ONE = "SELECT key, value, codec, expires_at, tags, stale_until FROM entries WHERE key = $1"

# Many keys in one query (coalesced concurrent gets): probes the key index once per key.
READ_MANY = "SELECT key, value, codec, expires_at, tags, stale_until FROM entries WHERE key = ANY($1::text[])"

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

# The write plan's statements (`sqlcache._plan`: names, parameters and results), in PostgreSQL.
STATEMENTS = {
    # Add a batch of reads made in memory or on disk to the entries' statistics, by the key index
    # and the access primary key. (Columnar: one array per parameter, see COLUMNAR.)
    "record_reads": """
        UPDATE access AS a
        SET access_count = a.access_count + r.count, accessed_at = greatest(a.accessed_at, r.last)
        FROM entries AS e, unnest($1::bigint[], $2::double precision[], $3::text[]) AS r (count, last, key)
        WHERE e.key = r.key AND a.entry_id = e.id""",
    # Insert an entry or replace the one under its key; the triggers keep the counters in step,
    # give a new entry its access row, leave a replaced entry's read statistics as they were (its
    # write's use is its created_at: see the victim queries) and drop its tag rows if they changed;
    # a replaced entry's stale window ends. (The driver sends runs of these as `UPSERT_ENTRIES`.)
    "upsert_entry": """
        INSERT INTO entries (key, value, codec, size, tags, created_at, expires_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        ON CONFLICT (key) DO UPDATE SET
            value = excluded.value, codec = excluded.codec, size = excluded.size, tags = excluded.tags,
            created_at = excluded.created_at, expires_at = excluded.expires_at, stale_until = NULL
        RETURNING id""",
    # Give the entry just written a stale window: its row outlives expires_at until then.
    "set_stale_until": "UPDATE entries SET stale_until = $1 WHERE id = $2",
    # A new expiry for a live entry, by the key index; its stale window (if any) moves with it
    # (the right-hand sides read the old row, so the window keeps its length).
    "touch_entry": """
        UPDATE entries SET stale_until = $1 + (stale_until - expires_at), expires_at = $2
        WHERE key = $3 AND (expires_at IS NULL OR expires_at > $4)
        RETURNING key""",
    # Index one tag of an entry (already indexed when a set keeps the same tags).
    "insert_tag": "INSERT INTO tags (tag, entry_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    # Delete one key, by the key index.
    "delete_key": "DELETE FROM entries WHERE key = $1 RETURNING key, expires_at",
    # Delete every entry carrying a tag, by the tags primary key (tag, entry_id).
    "delete_tag": """
        DELETE FROM entries WHERE id IN (SELECT entry_id FROM tags WHERE tag = $1)
        RETURNING key, expires_at""",
    "delete_all": "DELETE FROM entries RETURNING key, expires_at",
    # Delete up to N entries whose life ended (the stale window's end, else the expiry), soonest
    # ended first, by the partial expression index entries_by_end (migration 0003).
    "delete_expired": """
        DELETE FROM entries WHERE id IN (
            SELECT id FROM entries
            WHERE expires_at IS NOT NULL AND coalesce(stale_until, expires_at) <= $1
            ORDER BY coalesce(stale_until, expires_at) LIMIT $2)
        RETURNING size""",
    # Entry count and bytes, and when the soonest entry's life ends (NULL: none ever does), by
    # the end-of-life index: eviction looks for expired entries only when there are some. And
    # the log's newest position (as `last_seq`), which a batch that wrote entries needs too.
    "read_fill": """
        SELECT coalesce(sum(entries), 0)::bigint, coalesce(sum(bytes), 0)::bigint, (
            SELECT coalesce(stale_until, expires_at) FROM entries WHERE expires_at IS NOT NULL
            ORDER BY coalesce(stale_until, expires_at) LIMIT 1), (
            SELECT coalesce(max(seq), 0)::bigint FROM invalidations)
        FROM counters""",
    # Eviction candidates in the order each strategy gives them up, by the index serving it, as
    # (id, key, size, count, used_at, written_at): the plan ranks them by (count, greatest(used_at,
    # written_at)), since a set leaves `access` alone (migration 0004); FIFO and TTL store their
    # whole order, so their written_at is their used_at.
    "victims_lru": """
        SELECT e.id, e.key, e.size, 0::bigint, a.accessed_at, e.created_at
        FROM access AS a JOIN entries AS e ON e.id = a.entry_id
        ORDER BY a.accessed_at LIMIT $1""",
    "victims_lfu": """
        SELECT e.id, e.key, e.size, a.access_count, a.accessed_at, e.created_at
        FROM access AS a JOIN entries AS e ON e.id = a.entry_id
        ORDER BY a.access_count, a.accessed_at LIMIT $1""",
    "victims_fifo": "SELECT id, key, size, 0::bigint, created_at, created_at FROM entries ORDER BY created_at LIMIT $1",
    "victims_ttl": """
        SELECT id, key, size, 0::bigint, coalesce(stale_until, expires_at), coalesce(stale_until, expires_at)
        FROM entries WHERE expires_at IS NOT NULL
        ORDER BY coalesce(stale_until, expires_at) LIMIT $1""",
    # A rewritten eviction candidate's write, stored as its last use (see `_plan._choose`).
    "catch_up_access": "UPDATE access SET accessed_at = greatest(accessed_at, $1) WHERE entry_id = $2",
    "delete_id": "DELETE FROM entries WHERE id = $1",
    # Append to the log other hosts read to drop stale memory copies: max+1.. under the write
    # lock, so positions are gapless in commit order. Columnar ($1-$4), and in the same round trip
    # what the plan asks next (see `_LogAnswers`): trim the log to its newest $5 rows (the rows
    # appended here are not in the statement's snapshot, so they stay), send the wake-up of every
    # session LISTENing on this database on channel $6 (delivered at commit: `origin first last`
    # of these rows, origin $7), and return those positions and the fill (`read_fill`: the
    # entries this batch wrote are counted, their triggers ran with the statement before). With
    # the tags of the puts just written, as `INSERT_TAGS_BY_KEY` ($8 tags, $9 keys; see `_PutBuffer`).
    "log_changes": """
        WITH last AS (SELECT coalesce(max(seq), 0)::bigint AS seq FROM invalidations),
        tagged AS (
            INSERT INTO tags (tag, entry_id)
            SELECT t.tag, e.id FROM unnest($8::text[], $9::text[]) AS t (tag, key) JOIN entries AS e ON e.key = t.key
            ON CONFLICT DO NOTHING),
        appended AS (
            INSERT INTO invalidations (seq, origin, kind, arg, logged_at)
            SELECT last.seq + r.n, r.origin, r.kind, r.arg, r.logged_at
            FROM last, unnest($1::text[], $2::text[], $3::text[], $4::double precision[])
                 WITH ORDINALITY AS r (origin, kind, arg, logged_at, n)),
        reached AS (SELECT seq + 1 AS first, seq + cardinality($1::text[]) AS last FROM last),
        trimmed AS (DELETE FROM invalidations WHERE seq <= (SELECT last FROM reached) - $5::bigint)
        SELECT reached.first, reached.last, fill.entries, fill.bytes, fill.soonest_end,
               pg_notify($6, $7 || ' ' || reached.first || ' ' || reached.last)
        FROM reached, (
            SELECT coalesce(sum(entries), 0)::bigint AS entries, coalesce(sum(bytes), 0)::bigint AS bytes, (
                SELECT coalesce(stale_until, expires_at) FROM entries WHERE expires_at IS NOT NULL
                ORDER BY coalesce(stale_until, expires_at) LIMIT 1) AS soonest_end
            FROM counters) AS fill""",
    "read_log_since": READ_CHANGES,
    "last_seq": READ_LAST_SEQ,
    # Forget the oldest log rows, by the primary key (a prefix of the sequence, so no holes).
    "trim_log": "DELETE FROM invalidations WHERE seq <= $1",
}

# Which parameters of a plan statement (by position in a row) are keys, tags or log arguments
# (`log_changes`: its third, see `_LogAnswers`), and which column of its result is: text that
# goes through `to_db` / `from_db` (NUL escaped).
TEXT_PARAMS = {"record_reads": 2, "touch_entry": 2, "delete_key": 0, "delete_tag": 0}
TEXT_RESULTS = {
    "touch_entry": 0, "delete_key": 0, "delete_tag": 0, "delete_all": 0, "read_log_since": 3,
    "victims_lru": 1, "victims_lfu": 1, "victims_fifo": 1, "victims_ttl": 1,
}

# The plan's `many` statements written as one statement over arrays (a parameter per column of
# the plan's rows) rather than run once per row (`log_changes` too, by `_LogAnswers.append`).
COLUMNAR = frozenset({"record_reads"})

# The plan's pattern deletions, in two steps, since PostgreSQL's `~` is not Python's `re`: the
# keys in the range of the literal prefix (by the key index, "C" collation) or every key, then,
# of those `re.match` accepts, a delete by the primary key.
KEYS_IN_RANGE = "SELECT id, key FROM entries WHERE key >= $1 AND key < $2"
ALL_KEYS = "SELECT id, key FROM entries"
DELETE_IDS = "DELETE FROM entries WHERE id = ANY($1::bigint[]) RETURNING key, expires_at"

# A run of the plan's `upsert_entry`s (each with its `set_stale_until`, if any) as one statement
# (keys unique within it), and their `insert_tag`s as another, by key, unless they go with the
# log statement that follows (see `_PutBuffer`).
UPSERT_ENTRIES = """
INSERT INTO entries (key, value, codec, size, tags, created_at, expires_at, stale_until)
SELECT * FROM unnest($1::text[], $2::bytea[], $3::smallint[], $4::integer[], $5::text[],
                     $6::double precision[], $7::double precision[], $8::double precision[])
ON CONFLICT (key) DO UPDATE SET
    value = excluded.value, codec = excluded.codec, size = excluded.size, tags = excluded.tags,
    created_at = excluded.created_at, expires_at = excluded.expires_at, stale_until = excluded.stale_until
"""
INSERT_TAGS_BY_KEY = """
INSERT INTO tags (tag, entry_id)
SELECT t.tag, e.id FROM unnest($1::text[], $2::text[]) AS t (tag, key) JOIN entries AS e ON e.key = t.key
ON CONFLICT DO NOTHING
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


def _cut(connection: Any) -> None:
    """End a connection of a loop that is gone. Its socket is shut down first, since asyncpg's
    `terminate` cannot run once that loop is closed (it schedules the close on it): so the server
    ends the session now, rolling back a write cut short by the loop's end, which would otherwise
    hold the write lock against every writer until the garbage collector closed the socket."""
    transport = connection._transport  # asyncpg keeps no public handle on it
    sock = transport.get_extra_info("socket") if transport is not None else None
    try:
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
        connection.terminate()
    except Exception:  # already closed, or its loop is: the server has seen the socket close
        pass


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
        self._connections: weakref.WeakSet[Any] = weakref.WeakSet()  # the session and pool connections of this loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session_lock: asyncio.Lock = None  # type: ignore[assignment]  # made per loop by _bind_to_loop
        self._pool_lock: asyncio.Lock = None  # type: ignore[assignment]
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
        self._bind_to_loop()
        try:
            async with (await self._opened_pool()).acquire() as connection:
                await self._migrate(connection)
            await self._open_session()
            self._last_seq = await self._session.fetchval(READ_LAST_SEQ)
        except BaseException as error:
            await self._close_connections()
            if isinstance(error, Exception) and not isinstance(error, CacheError):
                raise self._translate(error, "open") from None
            raise
        self._closed = False

    def _bind_to_loop(self) -> None:
        """Make this store's connections belong to the running loop. asyncpg connections are
        bound to the loop that made them; a manager used from a new loop (a second
        `asyncio.run`) keeps its store, so the store cuts the old loop's connections (see
        `_cut`) and reconnects, reporting the log incomplete."""
        loop = asyncio.get_running_loop()
        if loop is self._loop:
            return
        if self._loop is not None:
            for connection in list(self._connections):
                _cut(connection)
            self._resync = True
        self._loop = loop
        self._session = self._pool = self._reconnecting = None
        self._connections = weakref.WeakSet()
        self._session_lock = asyncio.Lock()
        self._pool_lock = asyncio.Lock()

    async def _opened_pool(self) -> Any:
        if self._pool is None:
            async with self._pool_lock:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(
                        self.url, min_size=1, max_size=self._pool_size, reset=_reset, init=self._track,
                        **self._connect_options(),
                    )
        return self._pool

    async def _track(self, connection: Any) -> None:
        """The pool's `init`: note each new connection, to cut it should the loop change."""
        self._connections.add(connection)

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
            await connection.execute(STRATEGY_INDEXES[self._strategy])

    async def _open_session(self) -> None:
        session = await asyncpg.connect(self.url, **self._connect_options())
        try:
            await session.add_listener(CHANNEL, self._on_notify)
        except BaseException:
            session.terminate()
            raise
        session.add_termination_listener(self._on_session_lost)
        self._session = session
        self._connections.add(session)
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
        self._bind_to_loop()  # connections of a finished loop are only left behind
        self._closed = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            self._reconnecting = None
        await self._close_connections()

    async def _close_connections(self) -> None:
        session, self._session = self._session, None
        pool, self._pool = self._pool, None
        for closable in (session, pool):
            if closable is not None:
                await _close_or_terminate(closable)

    # ------------------------------------------------------------ the session: reads and coherence

    async def _on_session(self, work: Callable[[Any], Awaitable[T]], what: str) -> T:
        """Run `work(session)`, reconnecting the session first if it was lost."""
        if self._closed:
            raise CacheError("the cache database is closed")
        self._bind_to_loop()
        async with self._session_lock:
            return await self._twice(lambda: self._on_open_session(work), what)

    async def _on_open_session(self, work: Callable[[Any], Awaitable[T]]) -> T:
        """`work(session)`, connecting first if need be. A session the server dropped while it was
        idle (see `_DroppedWhileIdle`) is let go, for the caller to try once more on a new one."""
        if self._session is None:
            await self._open_session()
        session = self._session
        try:
            return await work(session)
        except Exception as error:
            if _dropped(error):
                session.terminate()
                if session is self._session:
                    self._session, self._resync = None, True
                raise _DroppedWhileIdle(str(error)) from None
            if session.is_closed() and session is self._session:
                self._session = None  # the next call reconnects (and resyncs)
            raise

    async def read(self, keys: Sequence[str]) -> dict[str, StoredRow]:
        """The stored rows of `keys` that exist (expired ones included: the caller decides)."""
        if len(keys) == 1:
            rows = await self._on_session(lambda session: session.fetch(READ_ONE, to_db(keys[0])), "read from")
        else:
            rows = await self._on_session(lambda session: session.fetch(READ_MANY, [to_db(key) for key in keys]), "read from")
        return {
            from_db(key): StoredRow(data, codec, expires_at, _plan.decode_tags(tags), stale_until)
            for key, data, codec, expires_at, tags, stale_until in rows
        }

    def read_now(self, keys: Sequence[str]) -> None:
        """Never at once: every read is a round trip (the manager then awaits `read`)."""
        return None

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
        self._bind_to_loop()
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
        changes = _plan.changes_from_log(_text_out(rows, 3), start, self._origin)
        if rows:
            self._last_seq = max(self._last_seq, rows[-1][0])
        return Changes(changes.changes, changes.complete and not resync)

    async def log_position(self) -> int:
        """The newest log position: a change committed after this call is logged after it."""
        return await self._on_session(lambda session: session.fetchval(READ_LAST_SEQ), "read the log of")

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
        """`work(connection)` on a pool connection; errors become `CacheError`s naming the server.
        A write whose pool connection the server had dropped (`_DroppedWhileIdle`: the write did
        not begin) is tried once more, on a new connection."""
        if self._closed:
            raise CacheError("the cache database is closed")
        self._bind_to_loop()
        return await self._twice(lambda: self._on_pool(work), what)

    async def _twice(self, attempt: Callable[[], Awaitable[T]], what: str) -> T:
        """`attempt()`, and once more if it found its connection dropped by the server (a new
        connection, or the server's refusal); errors become `CacheError`s naming the server."""
        try:
            try:
                return await attempt()
            except _DroppedWhileIdle:
                return await attempt()
        except Exception as error:
            if isinstance(error, CacheError):
                raise
            raise self._translate(error, what) from None

    async def _on_pool(self, work: Callable[[Any], Awaitable[T]]) -> T:
        async with (await self._opened_pool()).acquire() as connection:
            return await work(connection)

    def preloader_database(self) -> PostgresDatabase:
        """The preloader's `_Database` on this store's pool."""
        return PostgresDatabase(self)

    def write_now(self, ops: Sequence[WriteOp], reads: Mapping[str, ReadCounts], now: float) -> None:
        """Never at once: every write is a transaction over the network (the manager then awaits `write`)."""
        return None

    async def write(self, ops: Sequence[WriteOp], reads: Mapping[str, ReadCounts], now: float) -> WriteResult:
        """Apply `ops` (and the pending read statistics) in one transaction: the shared write
        plan (`sqlcache._plan.write_batch`) run on a pool connection."""
        return await self.run(lambda connection: self._write_batch(connection, ops, reads, now), "write to")

    async def _write_batch(
        self, connection: Any, ops: Sequence[WriteOp], reads: Mapping[str, ReadCounts], now: float
    ) -> WriteResult:
        """Begin (`BEGIN_WRITE`), run the plan, commit. BEGIN is sent first and answered while the
        plan runs up to its first statement (its puts are buffered: see `_PutBuffer`), so the
        server takes the write lock while this process prepares the batch's rows."""
        plan = _plan.write_batch(ops, reads, now=now, origin=self._origin, max_bytes=self.max_bytes, strategy=self._strategy)
        begun = asyncio.ensure_future(self._begin(connection))
        await asyncio.sleep(0)  # the loop's turn in which `begun` sends BEGIN
        try:
            result = await self._run_plan(connection, plan, begun)
            await connection.execute(COMMIT)
        except BaseException:
            await self._abandon(connection, begun)
            raise
        return result

    async def _begin(self, connection: Any) -> None:
        try:
            await connection.execute(BEGIN_WRITE)
        except Exception as error:
            if not _dropped(error):
                raise
            _terminate(connection)
            raise _DroppedWhileIdle(str(error)) from None

    async def _abandon(self, connection: Any, begun: asyncio.Future[None]) -> None:
        """Roll back a write that failed, once its BEGIN has been answered (the connection takes
        one statement at a time); a connection cut off mid-statement is terminated instead."""
        try:
            await asyncio.wait([begun])
        except BaseException:
            _terminate(connection)
            raise
        if not begun.cancelled():
            begun.exception()  # seen here if the plan failed before it awaited `begun`
        try:
            if connection.is_in_transaction():
                await connection.execute(ROLLBACK)
        except asyncpg.InterfaceError:
            pass  # the pool was closed under the write (a reconnect): it ended the session
        except Exception:
            _terminate(connection)  # the server rolls back

    async def _run_plan(self, db: Any, plan: _plan.Plan[T], begun: asyncio.Future[None]) -> T:
        """The plan's driver (`_plan.run` with `await`), its first statement sent once `begun`
        (the transaction's start) is done. Consecutive puts are combined (see `_PutBuffer`); what
        the log statement already read is answered without a round trip (see `_LogAnswers`)."""
        puts = _PutBuffer()
        logged = _LogAnswers(self._origin)
        try:
            query = next(plan)
            while True:
                rows = logged.answer(query)
                if rows is None and query.name in _PutBuffer.NAMES:
                    rows = puts.add(query)
                elif rows is None:
                    await begun
                    await puts.flush(db, before=query.name)
                    if query.name == "log_changes":
                        rows = await logged.append(db, query.params, puts.take_tags())
                    else:
                        rows = await self._execute(db, query)
                query = plan.send(rows)
        except StopIteration as done:
            await begun
            await puts.flush(db, before="commit")
            return done.value

    async def _execute(self, db: Any, query: _plan.Query) -> list[Any]:
        if query.name in ("delete_pattern_in_range", "delete_pattern_anywhere"):
            return await self._delete_pattern(db, *query.params)
        sql, params = STATEMENTS[query.name], query.params
        if query.name in TEXT_PARAMS:
            index = TEXT_PARAMS[query.name]
            params = [_text_in(row, index) for row in params] if query.many else _text_in(params, index)
        if query.many and query.name in COLUMNAR:
            await db.execute(sql, *(list(column) for column in zip(*params)))
            return []
        if query.many:
            await db.executemany(sql, params)
            return []
        rows = await db.fetch(sql, *params)
        return _text_out(rows, TEXT_RESULTS[query.name]) if query.name in TEXT_RESULTS else rows

    async def _delete_pattern(self, db: Any, *params: str) -> list[Any]:
        """`KEYS_IN_RANGE` of the literal prefix (or `ALL_KEYS`), `re.match` here, `DELETE_IDS`."""
        *bounds, pattern = params
        candidates = await db.fetch(KEYS_IN_RANGE, *map(to_db, bounds)) if bounds else await db.fetch(ALL_KEYS)
        match = _compiled(pattern).match
        ids = [entry_id for entry_id, key in candidates if match(from_db(key))]
        return _text_out(await db.fetch(DELETE_IDS, ids), 0) if ids else []

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


class _PutBuffer:
    """The plan's `upsert_entry`, `set_stale_until` and `insert_tag` queries of a run of puts
    (single sets, `set_many`'s `PutMany`), sent as one statement instead of a round trip each,
    and their tags with the next (64 sets: 1 round trip and a part of the log's, not 128).

    The plan needs an entry id back from each upsert only to give it to that entry's
    `set_stale_until` and `insert_tag`; so an upsert is answered at once with a placeholder (a
    negative number, never a real id), the stale window is written with the entry, and the
    buffer inserts the tags by key once the entries are written. Of several puts of one key the
    last wins, window and tags included, as the one-by-one statements would have it. Any other
    statement of the plan flushes the buffer first, so it sees every earlier put.
    """

    NAMES = frozenset({"upsert_entry", "set_stale_until", "insert_tag"})

    def __init__(self) -> None:
        self._rows: dict[str, list[Any]] = {}  # key -> UPSERT_ENTRIES columns of its last put
        self._tags: dict[str, list[str]] = {}  # key -> tags of its last put
        self._keys: list[str] = []  # placeholder -(i + 1) -> key
        self._unwritten: list[list[str]] = [[], []]  # tags and keys of written entries, by key

    def add(self, query: _plan.Query) -> list[Any]:
        if query.name == "upsert_entry":
            key = query.params[0]
            self._keys.append(key)
            placeholder = -len(self._keys)
            self._rows.pop(key, None)
            self._rows[key] = [*query.params, None]  # no stale window unless set_stale_until follows
            self._tags[key] = []  # a later put's tags replace an earlier one's (the plan tags right after)
            return [(placeholder,)]
        if query.name == "set_stale_until":
            stale_until, placeholder = query.params
            self._rows[self._keys[-placeholder - 1]][-1] = stale_until
            return []
        for tag, placeholder in query.params:
            self._tags[self._keys[-placeholder - 1]].append(tag)
        return []

    async def flush(self, db: Any, before: str) -> None:
        """Write the buffered puts before the plan's query `before`. Their tags go with it if it
        is the log statement (`take_tags`), else by `INSERT_TAGS_BY_KEY` now."""
        if self._rows:
            columns = list(zip(*(_text_in(row, 0) for row in self._rows.values())))
            await db.execute(UPSERT_ENTRIES, *(list(column) for column in columns))
            pairs = [(to_db(tag), to_db(key)) for key, tags in self._tags.items() for tag in tags]
            self._unwritten = [[tag for tag, _ in pairs], [key for _, key in pairs]]
            self._rows, self._tags, self._keys = {}, {}, []
        if self._unwritten[0] and before != "log_changes":
            await db.execute(INSERT_TAGS_BY_KEY, *self.take_tags())

    def take_tags(self) -> list[list[str]]:
        """The tags (and their keys) of the entries written and not yet tagged; forgotten here."""
        unwritten, self._unwritten = self._unwritten, [[], []]
        return unwritten


class _LogAnswers:
    """The plan's `log_changes` as one statement that also does or reads what the plan asks after
    it, and the answers to those queries without a round trip:
    - `last_seq`: the position the log reached. Only `log_changes` appends to the log, under the
      write lock, so it stays the newest for the rest of the batch;
    - `trim_log`: the log statement trimmed it to its newest `LOG_KEEP_ROWS` rows, as the plan
      then asks, unless the batch logged more than that (its own rows were not in the
      statement's snapshot), and then the trim runs as asked;
    - `read_fill`, the query right after it in a batch that wrote entries: the fill it read, if
      nothing ran in between (the log statement changes no entry).
    The wake-up of other hosts goes with it too (delivered at commit), and the tags of the puts
    written just before it."""

    def __init__(self, origin: str) -> None:
        self._origin = origin
        self._first = self._last = 0  # this batch's log rows; 0: none logged yet
        self._fill: tuple[int, int, float | None, int] | None = None  # what read_fill would read now, if known

    async def append(self, db: Any, rows: Sequence[tuple[str, str, str, float]], tags: list[list[str]]) -> list[Any]:
        """Run the log statement for the plan's log `rows`, with the `tags` (and keys) of the
        entries just written (`_PutBuffer.take_tags`)."""
        columns = [list(column) for column in zip(*(_text_in(row, 2) for row in rows))]
        [(first, last, entries, size, soonest_end, _)] = await db.fetch(
            STATEMENTS["log_changes"], *columns, _plan.LOG_KEEP_ROWS, CHANNEL, self._origin, *tags
        )
        self._first, self._last, self._fill = first, last, (entries, size, soonest_end, last)
        return []

    def answer(self, query: _plan.Query) -> list[Any] | None:
        """The rows of `query` if known here; None: run it."""
        fill, self._fill = self._fill, None  # known for the next query only
        if query.name == "read_fill" and fill is not None:
            return [fill]
        if query.name == "last_seq" and self._last:
            return [(self._last,)]
        if query.name == "trim_log" and self._last:
            [below] = query.params
            if below <= self._last - _plan.LOG_KEEP_ROWS and below < self._first:
                return []
        return None


_ESCAPES = str.maketrans({"\x01": "\x01\x02", "\x00": "\x01\x01"})
_ESCAPED = re.compile("\x01([\x01\x02])")


def to_db(text: str) -> str:
    """A key, tag or log argument as stored. PostgreSQL text cannot hold NUL, so NUL becomes
    `\\x01\\x01` and `\\x01` becomes `\\x01\\x02`: a prefix code that keeps code-point order and
    prefixes (so key ranges still find a prefix's keys); any other text is stored as it is."""
    return text.translate(_ESCAPES) if "\x00" in text or "\x01" in text else text


def from_db(text: str) -> str:
    """The inverse of `to_db`."""
    return _ESCAPED.sub(lambda match: "\x00" if match.group(1) == "\x01" else "\x01", text) if "\x01" in text else text


def _text_in(row: Sequence[Any], index: int) -> tuple[Any, ...]:
    return (*row[:index], to_db(row[index]), *row[index + 1 :])


def _text_out(rows: Sequence[Any], index: int) -> list[tuple[Any, ...]]:
    return [(*row[:index], from_db(row[index]) if row[index] is not None else None, *row[index + 1 :]) for row in rows]


class _DroppedWhileIdle(Exception):
    """A connection the server dropped while it sat idle (a shutdown or restart, an idle timeout,
    `pg_terminate_backend`), found by the first statement sent on it: the server's FATAL message
    arrived unasked (asyncpg then refuses every statement with "another operation is in
    progress") and its close is not seen yet, or it is closed. Nothing began on it, so a read or a
    write is tried again on a new connection."""


def _dropped(error: BaseException) -> bool:
    """`error`, from the first statement on an idle connection, says the server dropped it."""
    return isinstance(error, (asyncpg.exceptions.InternalClientError, asyncpg.exceptions.ConnectionDoesNotExistError))


def _is_unavailable(error: BaseException) -> bool:
    """The server cannot be reached, refused us, or went away (not a problem of the statement)."""
    exceptions = asyncpg.exceptions
    return isinstance(
        error,
        (
            _DroppedWhileIdle,
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


CLOSE_GRACE = 2.0
"""Seconds a connection or pool gets to close politely before it is terminated: a server that
went away never answers the goodbye, and closing must not hang on it."""


def _terminate(connection: Any) -> None:
    """End a pool connection now. One the pool already took back (the pool was closed under a
    write, by a reconnect) is ended already; asyncpg then refuses the call, and saying so would
    hide the error that brought the caller here."""
    try:
        connection.terminate()
    except asyncpg.InterfaceError:
        pass


async def _close_or_terminate(closable: Any) -> None:
    """Close an asyncpg connection or pool, or terminate it if that fails or takes too long."""
    try:
        await asyncio.wait_for(closable.close(), timeout=CLOSE_GRACE)
    except Exception:
        closable.terminate()

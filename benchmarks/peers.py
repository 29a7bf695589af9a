"""Adapters: every cache behind the same small async interface.

A workload only ever calls `open`, `get`, `set`, `load`, `invalidate_tag`, `invalidate_prefix`,
`reopen`, `bound_here` and `unbound`, so each peer is measured doing the same thing. Each
adapter uses its library the way its documentation shows, with its defaults unless the label
says otherwise; synchronous libraries (diskcache, sqlite3) are called directly from the event
loop, as they are in practice, and any loop stall that causes is measured like everyone else's.
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
import sqlite3
from pathlib import Path
from typing import Any, Iterable

from . import data
from .data import Item

GiB = 1024**3
UNBOUNDED_BYTES = 64 * GiB
LOAD_CHUNK = 1_000
WRITER_URL = "SQLCACHE_BENCH_URL"
"""Environment variable giving `child.py writer` the PostgreSQL URL (kept off its command line)."""


class Unsupported(Exception):
    """The peer has no such operation (reported as a note, not as a number)."""


class Peer:
    """One cache under test. Subclasses override what their library offers."""

    family = "peer"
    requires: tuple[str, ...] = ()
    """Modules that must be importable for the peer to run."""

    def __init__(self, label: str):
        self.label = label
        self.directory: Path | None = None
        self.started = 0.0  # when the harness opened it (for progress lines)

    @classmethod
    def missing(cls) -> str | None:
        """Why the peer cannot run here, or None when it can."""
        absent = [name for name in cls.requires if importlib.util.find_spec(name) is None]
        return f"not installed: {', '.join(absent)} (pip install -e \".[bench]\")" if absent else None

    async def open(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        await self._open()

    async def _open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def reopen(self) -> None:
        """Close and open again on the same data: the state a freshly started process sees."""
        await self.close()
        await self._open()

    async def get(self, key: str) -> Any:
        raise NotImplementedError

    async def set(self, key: str, value: Any, tags: tuple[str, ...] = ()) -> None:
        raise NotImplementedError

    async def load(self, items: Iterable[Item]) -> None:
        """Store many entries, untimed, by the fastest public path the library offers."""
        for item in items:
            await self.set(*item)

    async def invalidate_tag(self, tag: str) -> int:
        raise Unsupported("no tags")

    async def invalidate_prefix(self, prefix: str) -> int:
        raise Unsupported("no prefix invalidation")

    async def bound_here(self) -> None:
        """From now on hold no more than is held now (byte-bounded peers); entry-bounded peers
        are bounded when built."""

    async def unbound(self) -> None:
        """Lift a bound set by `bound_here`."""


# ---------------------------------------------------------------------------- sqlcache


class SqlcachePeer(Peer):
    """sqlcache's public API. `memory_max_size=0` turns the memory tier off, so every get is
    answered by the disk tier (the honest way to time disk hits: no entry is ever promoted)."""

    family = "sqlcache"
    requires = ("sqlcache",)

    def __init__(
        self,
        label: str = "sqlcache",
        *,
        memory_max_size: int = 10_000,
        strategy: str = "lru",
        default_ttl: float = 0,
    ):
        super().__init__(label)
        self._settings = {
            "memory_max_size": memory_max_size,
            "invalidation_strategy": strategy,
            "default_ttl": default_ttl,
            "disk_max_size": UNBOUNDED_BYTES,
        }
        self._cache: Any = None

    async def _open(self) -> None:
        from sqlcache import CacheManager

        self._cache = CacheManager({**self._settings, "disk_cache_dir": str(self.directory)})
        await self._cache.open()

    async def close(self) -> None:
        await self._cache.close()

    async def get(self, key: str) -> Any:
        return await self._cache.get(key)

    async def set(self, key: str, value: Any, tags: tuple[str, ...] = ()) -> None:
        await self._cache.set(key, value, tags=tags)

    async def load(self, items: Iterable[Item]) -> None:
        """Concurrent public sets, so group commit writes each chunk in one transaction."""
        for chunk in data.chunks(items, LOAD_CHUNK):
            await asyncio.gather(*(self._cache.set(key, value, tags=tags) for key, value, tags in chunk))

    async def invalidate_tag(self, tag: str) -> int:
        return await self._cache.invalidate_by_tag(tag)

    async def invalidate_prefix(self, prefix: str) -> int:
        return await self._cache.invalidate_by_pattern(re.escape(prefix) + ".*")

    def writer_env(self) -> dict[str, str]:
        """Environment of a `child.py writer` on this cache's disk tier (beside its directory)."""
        return {}

    @property
    def sync_interval(self) -> float:
        """Seconds within which this cache sees another process's change (its configuration)."""
        return self._cache.config.sync_interval

    async def holds_in_memory(self, key: str) -> bool:
        """Whether a get of `key` is answered by the memory tier (counted by `get_stats`)."""
        before = (await self._cache.get_stats())["memory_hits"]
        await self._cache.get(key)
        return (await self._cache.get_stats())["memory_hits"] > before

    async def bound_here(self) -> None:
        stats = await self._cache.get_stats()
        await self._resize(stats["disk_size"])

    async def unbound(self) -> None:
        await self._resize(UNBOUNDED_BYTES)

    async def _resize(self, max_bytes: int) -> None:
        self._settings["disk_max_size"] = max_bytes
        await self.reopen()


class SqlcacheFileFloor(SqlcachePeer):
    """Floor: sqlcache's own file, filled through sqlcache, then read by one stdlib `sqlite3`
    point SELECT: sqlcache's statement on a connection set up as sqlcache's loop reader is
    (`_sqlite.open_connection`: memory-mapped, autocommit), no decoding. What a disk hit costs
    if the cache around the SQL cost nothing."""

    family = "sqlite3"

    def __init__(self, label: str = "floor: stdlib sqlite3 on sqlcache's file"):
        super().__init__(label, memory_max_size=0)
        self._db: sqlite3.Connection | None = None
        self._read_one = ""

    async def reopen(self) -> None:
        """Close the manager (its writes committed) and open the file with stdlib sqlite3."""
        from sqlcache._sqlite import READ_ONE, open_connection

        await self.close()
        self._db = open_connection(self._cache.config.db_path, busy_timeout=0)
        self._read_one = READ_ONE

    async def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        else:
            await super().close()

    async def get(self, key: str) -> Any:
        if self._db is None:
            return await super().get(key)
        return self._db.execute(self._read_one, (key,)).fetchone()


class SqlcacheBesideWriter(SqlcachePeer):
    """sqlcache while another process (`child.py writer`) keeps setting other keys of the same
    file every `every` seconds: each coherence check then finds log rows to read."""

    def __init__(self, label: str, every: float):
        super().__init__(label)
        self._every = every
        self._writer: Any = None

    async def _open(self) -> None:
        from .child import Child

        await super()._open()
        self._writer = await Child.start("writer", str(self.directory))
        await self._writer.answer()  # ready
        await self._writer.ask(f"churn other: {self._every}")

    async def close(self) -> None:
        if self._writer is not None:
            await self._writer.stop()
            self._writer = None
        await super().close()


# ---------------------------------------------------------------------------- PostgreSQL


class OnPostgres:
    """A peer on a database of its own on the harness's PostgreSQL server (see `pg_server`)."""

    cluster: Any = None
    """Set by the harness once it has started a server (a `pg_server.PostgresCluster`)."""

    @classmethod
    def missing(cls) -> str | None:
        return super().missing() or (None if cls.cluster else "no PostgreSQL server (see the note below)")  # type: ignore[misc]


class SqlcachePgPeer(OnPostgres, SqlcachePeer):
    """sqlcache with its disk tier on PostgreSQL (`disk_cache_url`); `durability` as configured."""

    requires = ("sqlcache", "asyncpg")

    def __init__(self, label: str, *, durability: str = "normal", **settings: Any):
        super().__init__(label, **settings)
        self._settings["durability"] = durability

    async def open(self, directory: Path) -> None:
        self._settings["disk_cache_url"] = self.url = self.cluster.create_database()
        await super().open(directory)

    def writer_env(self) -> dict[str, str]:
        return {WRITER_URL: self.url}


class AsyncpgFloor(SqlcachePgPeer):
    """Floor: sqlcache's table, filled through sqlcache, then read by one raw asyncpg `fetchrow`
    of sqlcache's own point query (`_postgres.READ_ONE`, by the key index) on a connection of
    its own, no decoding. What a disk hit costs if the cache around the SQL cost nothing."""

    family = "asyncpg"

    def __init__(self, label: str = "floor: raw asyncpg fetchrow on sqlcache's table"):
        super().__init__(label, memory_max_size=0)
        self._connection: Any = None

    async def reopen(self) -> None:
        """Close the manager (its writes committed) and connect with asyncpg alone."""
        import asyncpg

        await self.close()
        self._connection = await asyncpg.connect(self.url)

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None
        else:
            await super().close()

    async def get(self, key: str) -> Any:
        from sqlcache._postgres import READ_ONE

        if self._connection is None:
            return await super().get(key)
        return await self._connection.fetchrow(READ_ONE, key)


_KV_SCHEMA = "CREATE TABLE IF NOT EXISTS kv (key text PRIMARY KEY, value bytea NOT NULL)"
_KV_GET = "SELECT value FROM kv WHERE key = $1"
_KV_PUT = "INSERT INTO kv (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value"


class AsyncpgUpserts(OnPostgres, Peer):
    """What a caller writes without a cache: one upsert of the value's bytes (orjson) into a plain
    key-value table, `pool.execute` on an asyncpg pool of `connections` (asyncpg's defaults
    otherwise), each its own transaction and commit; `synchronous_commit` as given."""

    family = "asyncpg"
    requires = ("asyncpg", "orjson")

    def __init__(self, label: str, *, synchronous_commit: str, connections: int):
        super().__init__(label)
        self._settings = {"synchronous_commit": synchronous_commit}
        self._connections = connections
        self._pool: Any = None
        self.url = ""

    async def open(self, directory: Path) -> None:
        self.url = self.cluster.create_database()
        await super().open(directory)

    async def _open(self) -> None:
        import asyncpg

        self._pool = await asyncpg.create_pool(
            self.url, min_size=self._connections, max_size=self._connections, server_settings=self._settings
        )
        await self._pool.execute(_KV_SCHEMA)

    async def close(self) -> None:
        await self._pool.close()

    async def get(self, key: str) -> Any:
        return await self._pool.fetchval(_KV_GET, key)

    async def set(self, key: str, value: Any, tags: tuple[str, ...] = ()) -> None:
        import orjson

        await self._pool.execute(_KV_PUT, key, orjson.dumps(value))

    async def load(self, items: Iterable[Item]) -> None:
        import orjson

        for chunk in data.chunks(items, LOAD_CHUNK):
            async with self._pool.acquire() as connection, connection.transaction():
                await connection.executemany(_KV_PUT, [(key, orjson.dumps(value)) for key, value, _ in chunk])


# ---------------------------------------------------------------------------- diskcache


class DiskcachePeer(Peer):
    """`diskcache.Cache`: SQLite too, one transaction per set, values pickled."""

    family = "diskcache"
    requires = ("diskcache",)

    def __init__(self, label: str = "diskcache", *, policy: str = "least-recently-stored", tag_index: bool = False):
        super().__init__(label)
        self._options: dict[str, Any] = {"eviction_policy": policy, "tag_index": tag_index}
        self._cache: Any = None

    async def _open(self) -> None:
        import diskcache

        self._cache = diskcache.Cache(str(self.directory), **self._options)

    async def close(self) -> None:
        self._cache.close()

    async def get(self, key: str) -> Any:
        return self._cache.get(key)

    async def set(self, key: str, value: Any, tags: tuple[str, ...] = ()) -> None:
        self._cache.set(key, value, tag=tags[0] if tags else None)

    async def load(self, items: Iterable[Item]) -> None:
        """Sets in transactions of a thousand (`Cache.transact`)."""
        for chunk in data.chunks(items, LOAD_CHUNK):
            with self._cache.transact():
                for key, value, tags in chunk:
                    self._cache.set(key, value, tag=tags[0] if tags else None)
            await asyncio.sleep(0)

    async def invalidate_tag(self, tag: str) -> int:
        return self._cache.evict(tag)

    async def invalidate_prefix(self, prefix: str) -> int:
        """diskcache has no prefix query: what a user does is scan the keys."""
        doomed = [key for key in self._cache.iterkeys() if key.startswith(prefix)]
        return sum(self._cache.delete(key) for key in doomed)

    async def bound_here(self) -> None:
        self._options["size_limit"] = int(self._cache.volume())
        self._cache.reset("size_limit", self._options["size_limit"])

    async def unbound(self) -> None:
        self._options["size_limit"] = UNBOUNDED_BYTES
        self._cache.reset("size_limit", UNBOUNDED_BYTES)


# ---------------------------------------------------------------------------- in-memory peers


class CachetoolsPeer(Peer):
    """A bare `cachetools` cache behind an `async def`: the floor of any awaited memory hit."""

    family = "cachetools"
    requires = ("cachetools",)

    def __init__(self, label: str = "cachetools", *, strategy: str = "lru", maxsize: int = 10_000_000):
        super().__init__(label)
        self._strategy = strategy
        self._maxsize = maxsize
        self._cache: Any = None

    async def _open(self) -> None:
        import cachetools

        kinds = {"lru": cachetools.LRUCache, "lfu": cachetools.LFUCache, "fifo": cachetools.FIFOCache}
        self._cache = kinds[self._strategy](self._maxsize)

    async def close(self) -> None:
        self._cache = None

    async def reopen(self) -> None:
        """In-process only: there is no file to reopen, the contents stay."""

    async def get(self, key: str) -> Any:
        return self._cache.get(key)

    async def set(self, key: str, value: Any, tags: tuple[str, ...] = ()) -> None:
        self._cache[key] = value

    async def invalidate_prefix(self, prefix: str) -> int:
        doomed = [key for key in self._cache if key.startswith(prefix)]
        for key in doomed:
            del self._cache[key]
        return len(doomed)


class CashewsPeer(Peer):
    """cashews with its `mem://` or `disk://` backend; tags are registered as key templates."""

    family = "cashews"
    requires = ("cashews",)

    def __init__(self, label: str, *, backend: str, size: int = 10_000_000, expiry_scan: bool = True):
        """`expiry_scan=False`: no once-a-second scan of every key for expired ones (mem://), which
        runs on the loop without yielding, some 100 ms at 100,000 keys; in a workload where
        peers take turns it would stall whichever peer's turn it fell in."""
        super().__init__(label)
        self._backend = backend
        self._size = size
        self._expiry_scan = expiry_scan
        self._cache: Any = None
        self._tags: set[str] = set()

    def _url(self) -> str:
        if self._backend == "mem":
            return f"mem://?size={self._size}" + ("" if self._expiry_scan else "&check_interval=0")
        return f"disk://?directory={self.directory}&shards=0"  # sharded: delete_match fails

    async def _open(self) -> None:
        from cashews import Cache

        self._cache = Cache()
        self._cache.setup(self._url())
        for tag in self._tags:
            self._cache.register_tag(tag, data.key_template(tag))

    async def close(self) -> None:
        await self._cache.close()  # mem:// too: it stops the backend's once-a-second expiry scan

    async def reopen(self) -> None:
        if self._backend != "mem":  # in-process only: nothing to reopen, the contents stay
            await super().reopen()

    async def get(self, key: str) -> Any:
        return await self._cache.get(key)

    async def set(self, key: str, value: Any, tags: tuple[str, ...] = ()) -> None:
        for tag in tags:
            if tag not in self._tags:
                self._tags.add(tag)
                self._cache.register_tag(tag, data.key_template(tag))
        await self._cache.set(key, value, tags=tags)

    async def invalidate_tag(self, tag: str) -> int:
        await self._cache.delete_tags(tag)
        return 0  # cashews does not say how many

    async def invalidate_prefix(self, prefix: str) -> int:
        await self._cache.delete_match(prefix + "*")
        return 0


class AiocachePeer(Peer):
    """aiocache's `SimpleMemoryCache` with its defaults."""

    family = "aiocache"
    requires = ("aiocache",)

    def __init__(self, label: str = "aiocache SimpleMemoryCache"):
        super().__init__(label)
        self._cache: Any = None

    async def _open(self) -> None:
        from aiocache import SimpleMemoryCache

        self._cache = SimpleMemoryCache()

    async def close(self) -> None:
        await self._cache.close()

    async def reopen(self) -> None:
        """In-process only: there is no file to reopen, the contents stay."""

    async def get(self, key: str) -> Any:
        return await self._cache.get(key)

    async def set(self, key: str, value: Any, tags: tuple[str, ...] = ()) -> None:
        await self._cache.set(key, value)


# ---------------------------------------------------------------------------- redis


class RedisPeer(Peer):
    """redis.asyncio against a local redis-server; values as orjson, tags as Redis sets."""

    family = "redis"
    requires = ("redis", "orjson")
    address: tuple[str, int] | None = None
    """Set by the harness once it has started a server (see `redis_server`)."""

    def __init__(self, label: str = "redis (redis.asyncio, AOF everysec)"):
        super().__init__(label)
        self._client: Any = None

    @classmethod
    def missing(cls) -> str | None:
        return super().missing() or (None if cls.address else "no redis-server running (see the note below)")

    async def open(self, directory: Path) -> None:
        await super().open(directory)
        await self._client.flushdb()

    async def _open(self) -> None:
        import redis.asyncio

        assert self.address is not None
        host, port = self.address
        self._client = redis.asyncio.Redis(host=host, port=port)

    async def close(self) -> None:
        await self._client.aclose()

    async def get(self, key: str) -> Any:
        import orjson

        raw = await self._client.get(key)
        return None if raw is None else orjson.loads(raw)

    async def set(self, key: str, value: Any, tags: tuple[str, ...] = ()) -> None:
        import orjson

        if not tags:
            await self._client.set(key, orjson.dumps(value))
            return
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.set(key, orjson.dumps(value))
            for tag in tags:
                pipe.sadd(f"tag:{tag}", key)
            await pipe.execute()

    async def load(self, items: Iterable[Item]) -> None:
        import orjson

        for chunk in data.chunks(items, LOAD_CHUNK):
            async with self._client.pipeline(transaction=False) as pipe:
                for key, value, tags in chunk:
                    pipe.set(key, orjson.dumps(value))
                    for tag in tags:
                        pipe.sadd(f"tag:{tag}", key)
                await pipe.execute()

    async def invalidate_tag(self, tag: str) -> int:
        members = await self._client.smembers(f"tag:{tag}")
        async with self._client.pipeline(transaction=True) as pipe:
            if members:
                pipe.unlink(*members)
            pipe.unlink(f"tag:{tag}")
            results = await pipe.execute()
        return results[0] if members else 0

    async def invalidate_prefix(self, prefix: str) -> int:
        doomed = [key async for key in self._client.scan_iter(match=prefix + "*", count=1_000)]
        return await self._client.unlink(*doomed) if doomed else 0


# ---------------------------------------------------------------------------- floors


_FLOOR_SCHEMA = "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL)"
_FLOOR_GET = "SELECT value FROM kv WHERE key = ?"
_FLOOR_PUT = "INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)"


class SqliteFloor(Peer):
    """Floor: one stdlib `sqlite3` point read (or autocommitted upsert) of raw bytes, no decoding,
    WAL and synchronous=NORMAL like sqlcache. No cache does less."""

    family = "sqlite3"
    requires = ("orjson",)

    def __init__(self, label: str = "floor: stdlib sqlite3"):
        super().__init__(label)
        self._db: sqlite3.Connection | None = None

    async def _open(self) -> None:
        self._db = sqlite3.connect(self.directory / "floor.db", isolation_level=None)
        for statement in ("PRAGMA journal_mode = WAL", "PRAGMA synchronous = NORMAL", _FLOOR_SCHEMA):
            self._db.execute(statement)

    async def close(self) -> None:
        self._db.close()

    async def get(self, key: str) -> Any:
        row = self._db.execute(_FLOOR_GET, (key,)).fetchone()
        return None if row is None else row[0]

    async def set(self, key: str, value: Any, tags: tuple[str, ...] = ()) -> None:
        import orjson

        self._db.execute(_FLOOR_PUT, (key, orjson.dumps(value)))

    async def load(self, items: Iterable[Item]) -> None:
        import orjson

        for chunk in data.chunks(items, LOAD_CHUNK):
            self._db.execute("BEGIN")
            self._db.executemany(_FLOOR_PUT, [(key, orjson.dumps(value)) for key, value, _ in chunk])
            self._db.execute("COMMIT")


class AiosqliteFloor(Peer):
    """Floor: one raw aiosqlite round trip (the thread hop every async SQLite cache pays)."""

    family = "aiosqlite"
    requires = ("aiosqlite", "orjson")

    def __init__(self, label: str = "floor: raw aiosqlite"):
        super().__init__(label)
        self._db: Any = None

    async def _open(self) -> None:
        import aiosqlite

        self._db = await aiosqlite.connect(self.directory / "floor.db", isolation_level=None)
        for statement in ("PRAGMA journal_mode = WAL", "PRAGMA synchronous = NORMAL", _FLOOR_SCHEMA):
            await self._db.execute(statement)

    async def close(self) -> None:
        await self._db.close()

    async def get(self, key: str) -> Any:
        rows = await self._db.execute_fetchall(_FLOOR_GET, (key,))
        return rows[0][0] if rows else None

    async def set(self, key: str, value: Any, tags: tuple[str, ...] = ()) -> None:
        import orjson

        await self._db.execute(_FLOOR_PUT, (key, orjson.dumps(value)))

    async def load(self, items: Iterable[Item]) -> None:
        import orjson

        for chunk in data.chunks(items, LOAD_CHUNK):
            await self._db.execute("BEGIN")
            await self._db.executemany(_FLOOR_PUT, [(key, orjson.dumps(value)) for key, value, _ in chunk])
            await self._db.execute("COMMIT")

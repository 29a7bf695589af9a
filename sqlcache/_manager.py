"""`CacheManager`: the two tiers behind one asyncio API.

Reads go to the memory tier, then to disk (promoting a disk hit with its remaining TTL).
Writes go through a `GroupCommitter`, and their effect on the memory tier is applied right after
the commit, in commit order, so the latest set wins in every tier. At most every
`sync_interval` a read checks the database's invalidation log (reading it only when
`PRAGMA data_version` moved), so other processes' changes reach this memory tier in time.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import re
import time
import uuid
from typing import Any, Awaitable, Callable, Iterable, Sequence

from ._batching import GroupCommitter, ReadCoalescer
from ._codecs import decode, encode
from ._config import CacheConfig, CacheLevel
from ._exceptions import CacheError
from ._memory import Entry, KeySet, MemoryTier
from ._engines import make_store
from ._store import (
    Changes,
    FlushReads,
    PurgeExpired,
    Put,
    Remove,
    RemoveAll,
    Removed,
    RemovePattern,
    RemoveTag,
    Store,
    StoredRow,
    TrimLog,
    WriteOp,
    literal_prefix,
)

logger = logging.getLogger("sqlcache")

_MISSING: Any = object()
_LOG_RETENTION = 120.0  # seconds of invalidation log kept for processes that fall behind
_MAX_PENDING_READS = 50_000  # read statistics buffered before an early flush


class CacheManager:
    """A two-tier cache: `cachetools` in memory, one SQLite file on disk.

    `config` is the guide's dict (see `CacheConfig` for every key and default); `clock` returns
    epoch seconds and decides every expiry, so tests can move time instead of sleeping.
    Nothing needs starting: the first awaited call opens the database.
    """

    def __init__(self, config: dict[str, Any] | CacheConfig | None = None, *, clock: Callable[[], float] | None = None):
        self.config = CacheConfig.from_mapping(config)
        self._clock = clock or time.time
        self._memory = MemoryTier(self.config.memory_max_size, self.config.invalidation_strategy, self._clock)
        self._origin = uuid.uuid4().hex
        self._store: Store | None = None
        self._open_lock = asyncio.Lock()
        self._reader: ReadCoalescer[StoredRow] = ReadCoalescer(self._read_rows)
        self._committer: GroupCommitter[WriteOp] = GroupCommitter(self._write)
        self._reads: dict[str, list[float]] = {}
        self._flights: dict[str, asyncio.Future[Any]] = {}
        self._next_sync = math.inf
        self._sync_task: asyncio.Task[None] | None = None
        self._maintenance: asyncio.Task[None] | None = None
        self._counts = dict.fromkeys(
            ("gets", "memory_hits", "disk_lookups", "disk_hits", "sets", "deletes", "disk_evictions", "disk_expirations"),
            0,
        )

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> "CacheManager":
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Open (create, migrate) the database now rather than on the first call."""
        await self._disk()

    @property
    def clock(self) -> Callable[[], float]:
        """The clock that decides every expiry (epoch seconds)."""
        return self._clock

    async def close(self) -> None:
        """Finish pending writes, flush read statistics, release the database file."""
        if self._maintenance is not None:
            self._maintenance.cancel()
            self._maintenance = None
        store = self._store
        if store is None:
            return
        try:
            if self._reads:
                await self._committer.submit(FlushReads())
            await self._committer.drain()
        except CacheError as error:
            logger.warning("sqlcache: read statistics not saved on close: %s", error)
        finally:
            self._store = None
            self._next_sync = math.inf
            await store.close()

    async def _disk(self) -> Store | None:
        """The open disk store, opening it on first use; None when the disk tier is off."""
        if self._store is not None or not self.config.disk_cache_enabled:
            return self._store
        async with self._open_lock:
            if self._store is None:
                store = make_store(self.config, self._origin)
                await store.open()
                self._memory.clear()  # whatever it held may have changed while the file was closed
                self._store = store
                self._next_sync = time.monotonic() + self.config.sync_interval
                self._maintenance = asyncio.get_running_loop().create_task(self._maintain())
        return self._store

    # ------------------------------------------------------------------ reads

    async def get(self, key: str, default: Any = None) -> Any:
        """The live value of `key`, from memory, else from disk (then kept in memory too)."""
        if type(key) is not str:
            _check_key(key)
        if time.monotonic() >= self._next_sync:
            await self._sync()
        now = self._clock()
        self._counts["gets"] += 1
        entry = self._memory.get(key, now)
        if entry is not None:
            self._counts["memory_hits"] += 1
            self._note_read(key, now)
            return entry.value
        value = await self._get_from_disk(key, now)
        return default if value is _MISSING else value

    async def _get_from_disk(self, key: str, now: float) -> Any:
        if self._store is None and await self._disk() is None:
            return _MISSING
        if not key.isascii():
            _check_key(key)  # a key SQLite cannot bind must not fail the batch it would join
        self._counts["disk_lookups"] += 1
        row, promotable = await self._reader.load(key)
        if row is None:
            return _MISSING
        if row.expires_at is not None and row.expires_at <= now:
            self._counts["disk_expirations"] += 1
            return _MISSING
        try:
            value = decode(row.data, row.codec, self.config.allow_pickle)
        except Exception as error:
            logger.warning("sqlcache: cannot read the stored value of %r, treating it as a miss: %s", key, error)
            return _MISSING
        self._counts["disk_hits"] += 1
        self._note_read(key, now)
        if promotable:
            expires_at = math.inf if row.expires_at is None else row.expires_at
            self._memory.set(key, Entry(value, expires_at, row.tags))
        return value

    def _note_read(self, key: str, now: float) -> None:
        """Buffer a read for the disk tier's LRU/LFU statistics; flushed with the next write."""
        if self._store is None:
            return
        counts = self._reads.get(key)
        if counts is None:
            self._reads[key] = [1, now]
            if len(self._reads) > _MAX_PENDING_READS:
                asyncio.get_running_loop().create_task(self._flush_reads())
        else:
            counts[0] += 1
            counts[1] = now

    def _opened_store(self) -> Store:
        if self._store is None:
            raise CacheError("the cache was closed while this call was pending")
        return self._store

    async def _read_rows(self, keys: Sequence[str]) -> dict[str, StoredRow]:
        store = self._store
        return {} if store is None else await store.read(keys)

    # ------------------------------------------------------------------ writes

    async def set(
        self,
        key: str,
        value: Any,
        ttl: float | None = None,
        level: CacheLevel | str = CacheLevel.ALL,
        tags: Iterable[str] | None = None,
    ) -> None:
        """Store `value` under `key` in `level`, replacing whatever any tier held for it.

        `ttl=None` means `default_ttl`; `ttl=0` means no expiry. When a DISK or ALL set
        returns, the entry is committed to the database.
        """
        _check_key(key)
        level = _level(level)
        tags = _tags(tags)
        ttl = self._ttl(ttl)
        data, codec = encode(value, self.config.allow_pickle)
        now = self._clock()
        expires_at = now + ttl if ttl else math.inf
        entry = Entry(value, expires_at, tags)
        if level is not CacheLevel.MEMORY and len(data) + len(key.encode()) > self.config.disk_max_size:
            raise ValueError(
                f"value of {key!r} takes {len(data)} bytes, more than disk_max_size ({self.config.disk_max_size})"
            )
        store = await self._disk()
        self._counts["sets"] += 1
        if store is None:
            self._memory.set(key, entry)
            return

        def after_commit(_: Any) -> None:
            self._reader.spoil(key)
            if level is CacheLevel.DISK:
                self._memory.discard(key)
            else:
                self._memory.set(key, entry)

        if level is CacheLevel.MEMORY:
            op: WriteOp = Remove((key,))  # an older disk copy must not come back
        else:
            op = Put(key, data, codec, tags, now, None if expires_at == math.inf else expires_at)
        await self._committer.submit(op, after_commit)

    async def delete(self, key: str) -> bool:
        """Remove `key` from every tier; True if a live value was removed."""
        _check_key(key)
        now = self._clock()
        self._counts["deletes"] += 1

        def drop_from_memory() -> KeySet:
            self._reader.spoil(key)
            return self._memory.invalidate_keys((key,), now)

        return bool(await self._invalidate(Remove((key,)), drop_from_memory, now))

    async def invalidate_by_tag(self, tag: str) -> int:
        """Remove every entry tagged `tag`; the number of live keys removed."""
        if not isinstance(tag, str):
            raise TypeError(f"tag must be a str, not {type(tag).__name__}")
        now = self._clock()
        return await self._invalidate(RemoveTag(tag), lambda: self._memory.invalidate_tag(tag, now), now)

    async def invalidate_by_pattern(self, pattern: str) -> int:
        """Remove every key that `re.match`es `pattern`; the number of live keys removed.

        The disk tier narrows the rows by the pattern's literal prefix (`market_data:BTC:` in
        `market_data:BTC:.*`) through the key index; a pattern with no literal prefix scans.
        """
        if not isinstance(pattern, str):
            raise TypeError(f"pattern must be a str, not {type(pattern).__name__}")
        try:
            compiled = re.compile(pattern)
        except re.error as error:
            raise ValueError(f"invalid pattern {pattern!r}: {error}") from None
        now = self._clock()
        op = RemovePattern(pattern, literal_prefix(pattern))
        return await self._invalidate(op, lambda: self._memory.invalidate_pattern(compiled, now), now)

    async def clear(self) -> None:
        """Remove every entry from every tier (and from other processes' memory tiers)."""

        def clear_memory() -> KeySet:
            self._memory.clear()
            return set()

        await self._invalidate(RemoveAll(), clear_memory, self._clock())

    async def _invalidate(self, op: WriteOp, drop_from_memory: Callable[[], KeySet], now: float) -> int:
        """Run a removal on disk, then in memory; count distinct live keys removed in either."""
        if await self._disk() is None:
            return len(drop_from_memory())

        def after_commit(removed: list[Removed]) -> int:
            for key, _ in removed:
                self._reader.spoil(key)
            live = drop_from_memory()
            live.update(key for key, expires_at in removed if expires_at is None or expires_at > now)
            return len(live)

        return await self._committer.submit(op, after_commit)

    async def _write(self, ops: list[WriteOp]) -> list[Any]:
        reads, self._reads = self._reads, {}
        result = await self._opened_store().write(ops, reads, self._clock())
        self._counts["disk_evictions"] += result.evicted
        self._counts["disk_expirations"] += result.expired
        return result.results

    async def get_or_set(
        self,
        key: str,
        loader: Callable[[], Awaitable[Any] | Any],
        ttl: float | None = None,
        level: CacheLevel | str = CacheLevel.ALL,
        tags: Iterable[str] | None = None,
    ) -> Any:
        """The cached value of `key`, or `await loader()` stored under it on a miss.

        Concurrent callers missing the memory tier for the same key share one disk lookup and,
        on a miss there, one loader call; a caller cancelled while waiting does not cancel the
        load for the others.
        """
        _check_key(key)
        # Refuse bad arguments before anything is loaded.
        _level(level)
        _tags(tags)
        self._ttl(ttl)
        if self._memory.get(key, self._clock()) is not None:
            value = await self.get(key, _MISSING)
            if value is not _MISSING:
                return value
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.ensure_future(self._get_or_load(key, loader, ttl, level, tags))
            self._flights[key] = flight
            flight.add_done_callback(lambda done: self._end_flight(key, done))
        return await asyncio.shield(flight)

    async def _get_or_load(self, key: str, loader: Callable[[], Any], ttl: Any, level: Any, tags: Any) -> Any:
        value = await self.get(key, _MISSING)
        if value is _MISSING:
            value = loader()
            if inspect.isawaitable(value):
                value = await value
            await self.set(key, value, ttl, level, tags)
        return value

    def _end_flight(self, key: str, flight: asyncio.Future[Any]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.cancelled():
            flight.exception()  # retrieved: the callers that are still waiting get it

    # ------------------------------------------------------------------ coherence

    async def _sync(self) -> None:
        """Apply other processes' invalidations to the memory tier (one check at a time)."""
        if self._sync_task is None:
            self._sync_task = asyncio.get_running_loop().create_task(self._sync_once())
        await asyncio.shield(self._sync_task)

    async def _sync_once(self) -> None:
        try:
            self._next_sync = time.monotonic() + self.config.sync_interval
            changes = await self._opened_store().changes()
            if changes is not None:
                self._apply_changes(changes)
        except Exception as error:  # a locked or failing disk must not stop memory hits
            logger.warning("sqlcache: could not read other processes' invalidations: %s", error)
        finally:
            self._sync_task = None

    def _apply_changes(self, changes: Changes) -> None:
        now = self._clock()
        if not changes.complete:
            self._memory.clear()
            self._reader.spoil_all()
            return
        for kind, arg in changes.changes:
            if kind == "key":
                self._memory.discard(arg)
                self._reader.spoil(arg)
                continue
            if kind == "tag":
                self._memory.invalidate_tag(arg, now)
            elif kind == "pattern":
                self._memory.invalidate_pattern(re.compile(arg), now)
            else:
                self._memory.clear()
            self._reader.spoil_all()

    # ------------------------------------------------------------------ maintenance

    async def _maintain(self) -> None:
        """Flush read statistics every `access_flush_interval`; purge expired entries in bounded
        batches and trim the invalidation log every `purge_interval`."""
        next_purge = time.monotonic() + self.config.purge_interval
        while True:
            await asyncio.sleep(self.config.access_flush_interval)
            try:
                if self._reads:
                    await self._flush_reads()
                if self.config.purge_interval and time.monotonic() >= next_purge:
                    next_purge = time.monotonic() + self.config.purge_interval
                    await self.purge_expired()
                    await self._committer.submit(TrimLog(time.time() - max(_LOG_RETENTION, 10 * self.config.sync_interval)))
            except CacheError as error:
                logger.warning("sqlcache: background maintenance failed, will retry: %s", error)

    async def _flush_reads(self) -> None:
        await self._committer.submit(FlushReads())

    async def purge_expired(self) -> int:
        """Delete expired entries from disk, in batches of `purge_batch_size`; the number deleted."""
        if await self._disk() is None:
            return 0
        batch_size = self.config.purge_batch_size
        purged = 0
        while True:
            count = await self._committer.submit(PurgeExpired(self._clock(), batch_size))
            purged += count
            if count < batch_size:
                break
        self._counts["disk_expirations"] += purged
        return purged

    # ------------------------------------------------------------------ stats

    async def get_stats(self) -> dict[str, Any]:
        """Counters of this process plus the size of the shared disk tier."""
        counts = self._counts
        store = await self._disk()
        disk_entries, disk_bytes = await store.size() if store is not None else (0, 0)
        gets, lookups = counts["gets"], counts["disk_lookups"]
        hits = counts["memory_hits"] + counts["disk_hits"]
        return {
            "memory_size": len(self._memory),
            "memory_max_size": self.config.memory_max_size,
            "memory_hits": counts["memory_hits"],
            "memory_misses": gets - counts["memory_hits"],
            "memory_hit_rate": _rate(counts["memory_hits"], gets),
            "disk_enabled": store is not None,
            "disk_size": disk_bytes,
            "disk_entries": disk_entries,
            "disk_max_size": self.config.disk_max_size,
            "disk_hits": counts["disk_hits"],
            "disk_misses": lookups - counts["disk_hits"],
            "disk_hit_rate": _rate(counts["disk_hits"], lookups),
            "gets": gets,
            "hits": hits,
            "misses": gets - hits,
            "hit_rate": _rate(hits, gets),
            "sets": counts["sets"],
            "deletes": counts["deletes"],
            "evictions": self._memory.evictions + counts["disk_evictions"],
            "memory_evictions": self._memory.evictions,
            "disk_evictions": counts["disk_evictions"],
            "expirations": self._memory.expirations + counts["disk_expirations"],
            "invalidation_strategy": self.config.invalidation_strategy.value,
            "db_path": str(self.config.db_path) if store is not None else None,
        }

    # ------------------------------------------------------------------ argument checks

    def _ttl(self, ttl: Any) -> float:
        if ttl is None:
            return self.config.default_ttl
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
            raise TypeError(f"ttl must be a number of seconds or None, not {type(ttl).__name__}")
        if math.isnan(ttl) or ttl < 0:
            raise ValueError(f"ttl must be >= 0 seconds (0 means no expiry), got {ttl!r}")
        return 0.0 if ttl == math.inf else float(ttl)


def _check_key(key: Any) -> None:
    if not isinstance(key, str):
        raise TypeError(f"cache keys must be str, not {type(key).__name__}")
    if not key.isascii():
        try:
            key.encode()
        except UnicodeEncodeError:
            raise ValueError(f"cache key {key!r} is not valid Unicode text (lone surrogate)") from None


def _level(level: Any) -> CacheLevel:
    try:
        return level if isinstance(level, CacheLevel) else CacheLevel(level)
    except ValueError:
        raise ValueError(f"level must be a CacheLevel or one of 'memory', 'disk', 'all', got {level!r}") from None


def _tags(tags: Any) -> tuple[str, ...]:
    if tags is None:
        return ()
    if isinstance(tags, (str, bytes)):
        raise TypeError("tags must be a list of strings, not a single string")
    tags = tuple(tags)
    for tag in tags:
        if not isinstance(tag, str):
            raise TypeError(f"tags must be strings, got {type(tag).__name__}")
    return tuple(sorted(set(tags)))


def _rate(part: int, whole: int) -> float:
    return part / whole if whole else 0.0

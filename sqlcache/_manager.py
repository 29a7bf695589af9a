"""`CacheManager`: the two tiers behind one asyncio API.

Reads go to the memory tier, then to disk (promoting a disk hit with its remaining TTL).
Writes go through a `GroupCommitter`, and their effect on the memory tier is applied right after
the commit, in commit order, so the latest set wins in every tier. At most every
`sync_interval` a read asks the store for other processes' changes (on SQLite a
`PRAGMA data_version` on the loop's own connection, about a microsecond), so their changes
reach this memory tier in time while a memory hit makes no database round trip.

Ordering across processes is by log position (`seq`): every committed change has one, an entry
this process wrote remembers its own, and a change another process logged before it cannot
remove it. A loader's result is stored only if nothing that could touch its key was logged after
the load began (`unless_changed_since`), so it never overwrites a newer set, delete or
invalidation, in this process or another.

Everything that belongs to an event loop (futures, tasks, locks) lives in a `_LoopBound` made
for the running loop; a manager used from a new loop (a second `asyncio.run`, a loop per test)
makes a new one and keeps the store, whose worker thread belongs to no loop.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import random
import re
import time
import uuid
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable, Mapping, NamedTuple, Sequence

from ._batching import GroupCommitter, ReadCoalescer
from ._codecs import decode, encode
from ._config import CacheConfig, CacheLevel
from ._engines import make_store
from ._exceptions import CacheError
from ._memory import Entry, KeySet, MemoryTier
from ._store import (
    Changes,
    FlushReads,
    PurgeExpired,
    Put,
    PutMany,
    Remove,
    RemoveAll,
    Removed,
    RemovePattern,
    RemoveTag,
    Store,
    StoredRow,
    Touch,
    WriteOp,
    WriteResult,
    literal_prefix,
)

if TYPE_CHECKING:
    from ._decorator import CachedDecorator, KeyMaker

logger = logging.getLogger("sqlcache")

_MISSING: Any = object()
_MAX_PENDING_READS = 50_000  # read statistics buffered before an early flush
_SHOWN_CHARS = 60  # characters of a key an error message shows

# Where a get that missed memory was answered, for the counters.
_DISK, _NOWHERE = "disk", None


class _Flight:
    """One `get_or_set` load shared by every caller of its key.

    A change to the key while it runs detaches it: callers that arrive after the change start a
    load of their own instead of sharing a result that may predate the change."""

    __slots__ = ("future", "detached")

    def __init__(self) -> None:
        self.future: asyncio.Future[Any]
        self.detached = False


class _Stale(NamedTuple):
    """A disk value past its ttl but inside its stale window, which `get_or_set(..., stale_ttl=)`
    may serve while a background call refreshes it."""

    value: Any
    expires_at: float
    stale_until: float


class _Prepared(NamedTuple):
    """One value of a set, checked and encoded, with its expiry (math.inf: never) and the end of
    its stale window (0: none)."""

    key: str
    value: Any
    data: bytes
    codec: int
    expires_at: float
    stale_until: float


class _LoopBound:
    """What belongs to one event loop: the batching layers, the loads in flight, the tasks."""

    def __init__(self, manager: "CacheManager", loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.reader: ReadCoalescer[StoredRow] = ReadCoalescer(manager._read_rows)
        self.committer: GroupCommitter[WriteOp] = GroupCommitter(manager._write, _may_be_one_ops_fault, manager._write_now)
        self.flights: dict[str, _Flight] = {}
        self.refreshes: dict[str, _Flight] = {}  # background refreshes of stale values, one per key
        self.open_lock = asyncio.Lock()
        self.maintenance: asyncio.Task[None] | None = None
        self.flush: asyncio.Task[None] | None = None


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
        self._bound: _LoopBound | None = None
        self._reads: dict[str, list[float]] = {}
        self._next_sync = -math.inf  # due at once: the first read opens the store
        self._committed_seq = 0  # log position of the latest batch this process committed
        self._random = random.Random()  # draws the ttl_jitter factors
        # How gets were answered (their sum is the number of gets), and the other events. Memory
        # hits, the hot path's counter, are an attribute: a dict item costs a memory hit a fifth more.
        self._memory_hits = 0
        self._counts = dict.fromkeys(
            ("disk_hits", "disk_misses", "memory_only_misses",
             "sets", "deletes", "disk_evictions", "disk_expirations",
             "stale_hits", "stale_refreshes", "stale_refresh_errors"),
            0,
        )
        self._disk_figures = (0, 0)  # (entries, bytes) of the disk tier when get_stats last read them

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
        """Finish pending writes, flush read statistics, release the database file.

        A closed manager used again opens the database again (with an empty memory tier, since
        other processes may have changed anything meanwhile)."""
        bound = self._here()
        if bound.maintenance is not None:
            bound.maintenance.cancel()
            bound.maintenance = None
        for refresh in list(bound.refreshes.values()):
            refresh.future.cancel()  # a refresh finishing later must not reopen the file
        store = self._store
        if store is None:
            return
        try:
            if self._reads:
                await bound.committer.submit(FlushReads())
            await bound.committer.drain()
        except CacheError as error:
            logger.warning("sqlcache: read statistics not saved on close: %s", error)
        finally:
            self._store = None
            self._next_sync = -math.inf
            await store.close()

    def _here(self) -> _LoopBound:
        """The loop-bound state of the running loop, made anew when the loop changed."""
        loop = asyncio.get_running_loop()
        bound = self._bound
        if bound is None or bound.loop is not loop:
            bound = self._bound = _LoopBound(self, loop)
            if self._store is not None:
                self._start_maintenance(bound)
        return bound

    async def _disk(self) -> Store | None:
        """The open disk store, opening it on first use; None when the disk tier is off."""
        if self._store is not None or not self.config.disk_cache_enabled:
            return self._store
        bound = self._here()
        async with bound.open_lock:
            if self._store is None:
                store = make_store(self.config, self._origin)
                await store.open()
                self._memory.clear()  # whatever it held may have changed while the file was closed
                self._store = store
                self._next_sync = time.monotonic() + self.config.sync_interval
                self._start_maintenance(bound)
        return self._store

    def _start_maintenance(self, bound: _LoopBound) -> None:
        if bound.maintenance is None:
            bound.maintenance = bound.loop.create_task(self._maintain())

    # ------------------------------------------------------------------ reads

    async def get(self, key: str, default: Any = None) -> Any:
        """The live value of `key`, from memory, else from disk (then kept in memory too)."""
        if type(key) is not str:
            _check_key(key)
        if time.monotonic() >= self._next_sync:
            await self._sync()
        now = self._clock()
        entry = self._memory_hit(key, now)
        if entry is not None:
            return entry.value
        value = await self._get_from_disk(key, now)
        self._count_get(key, _NOWHERE if value is _MISSING else _DISK, now)
        return default if value is _MISSING else value

    def _memory_hit(self, key: str, now: float) -> Entry | None:
        """The live memory entry of `key`, counted as a get answered from memory; or None.

        The hot path of the library (target: within 2x a bare cachetools get), so the read is
        noted here rather than through `_count_get`."""
        entry = self._memory.get(key, now)
        if entry is not None:
            self._memory_hits += 1
            reads = self._reads.get(key)
            if reads is None:
                self._note_read(key, now)
            else:
                reads[0] += 1
                reads[1] = now
        return entry

    async def _get_from_disk(self, key: str, now: float, stale_ttl: float = 0.0) -> Any:
        """The live value of `key` on disk (promoted to memory), or `_MISSING`; not counted.
        With `stale_ttl`, a value inside that much of its stale window comes back as `_Stale`."""
        if self._store is None and await self._disk() is None:
            return _MISSING
        if not key.isascii():
            _check_key(key)  # a key SQLite cannot bind must not fail the batch it would join
        rows = self._store.read_now((key,)) if self._store is not None else {}
        if rows is not None:
            row, promotable = rows.get(key), True  # nothing ran between the read and now
        else:
            row, promotable = await self._here().reader.load(key)
        return self._row_value(key, row, promotable, now, stale_ttl)

    def _row_value(self, key: str, row: StoredRow | None, promotable: bool, now: float, stale_ttl: float = 0.0) -> Any:
        """The value of a disk row as `_get_from_disk` returns it, promoted if `promotable`."""
        if row is None:
            return _MISSING
        expires_at = math.inf if row.expires_at is None else row.expires_at
        stale_until = row.stale_until or 0.0
        if expires_at <= now and not (stale_ttl and _stale_ok(expires_at, stale_until, stale_ttl, now)):
            self._counts["disk_expirations"] += 1
            return _MISSING
        try:
            value = decode(row.data, row.codec, self.config.allow_pickle)
        except Exception as error:
            logger.warning("sqlcache: cannot read the stored value of %s, treating it as a miss: %s", _shown(key), error)
            return _MISSING
        if promotable:
            self._memory.set(key, Entry(value, expires_at, row.tags, 0, stale_until))
        return value if expires_at > now else _Stale(value, expires_at, stale_until)

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """The live values of those of `keys` that have one, in the order given.

        Memory first; the keys memory misses are read from disk together, in one store read, and
        promoted like `get` does. Each (distinct) key counts as one get.
        """
        keys = _keys(keys)
        if time.monotonic() >= self._next_sync:
            await self._sync()
        now = self._clock()
        found: dict[str, Any] = {}
        missed = []
        for key in keys:
            entry = self._memory_hit(key, now)
            if entry is None:
                missed.append(key)
            else:
                found[key] = entry.value
        if missed and (self._store is not None or await self._disk() is not None):
            rows = self._store.read_now(missed) if self._store is not None else None
            if rows is None:
                rows, batch = await self._here().reader.load_many(missed)
                promotable = batch.promotable
            else:
                promotable = _always  # nothing ran between the read and now
            for key in missed:
                value = self._row_value(key, rows.get(key), promotable(key), now)
                if value is not _MISSING:
                    found[key] = value
        for key in missed:
            self._count_get(key, _DISK if key in found else _NOWHERE, now)
        return {key: found[key] for key in keys if key in found}

    async def exists(self, key: str) -> bool:
        """Whether `key` has a live entry in any tier. Counts no get, promotes nothing and leaves
        the LRU/LFU order as it was."""
        expires_at, _ = await self._expiry(key)
        return expires_at is not None

    async def ttl(self, key: str) -> float | None:
        """Seconds `key`'s live entry has left (`math.inf` if it never expires), None if there is
        no live entry. Reads like `exists`."""
        expires_at, now = await self._expiry(key)
        return None if expires_at is None else expires_at - now

    async def _expiry(self, key: str) -> tuple[float | None, float]:
        """(the expiry of `key`'s live entry, math.inf for never, or None; the time it was
        judged at), from memory, else disk, without counting or promoting."""
        _check_key(key)
        if time.monotonic() >= self._next_sync:
            await self._sync()
        now = self._clock()
        entry = self._memory.peek(key)
        if entry is not None and entry.expires_at > now:
            return entry.expires_at, now
        if self._store is None and await self._disk() is None:
            return None, now
        row, _ = await self._here().reader.load(key)
        if row is None or (row.expires_at is not None and row.expires_at <= now):
            return None, now
        return (math.inf if row.expires_at is None else row.expires_at), now

    def _count_get(self, key: str, source: str | None, now: float) -> None:
        """Count one caller's get that missed memory, answered by `source` (disk, or neither)."""
        counts = self._counts
        if self._store is None:
            counts["memory_only_misses"] += 1
        else:
            counts["disk_hits" if source is _DISK else "disk_misses"] += 1
        if source is not _NOWHERE:
            self._note_read(key, now)

    def _note_read(self, key: str, now: float) -> None:
        """Buffer a read for the disk tier's LRU/LFU statistics; flushed with the next write."""
        if self._store is None:
            return
        counts = self._reads.get(key)
        if counts is None:
            self._reads[key] = [1, now]
            if len(self._reads) > _MAX_PENDING_READS:
                bound = self._here()
                if bound.flush is None:
                    bound.flush = bound.loop.create_task(self._flush_reads())
        else:
            counts[0] += 1
            counts[1] = now

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
        await self._set(key, value, ttl, level, tags)

    async def set_many(
        self,
        mapping: Mapping[str, Any],
        ttl: float | None = None,
        level: CacheLevel | str = CacheLevel.ALL,
        tags: Iterable[str] | None = None,
    ) -> None:
        """`set` of every key and value of `mapping`, in one transaction: every key and value is
        checked (and encoded) first, so one bad one raises and nothing is stored. With
        `ttl_jitter`, each key gets its own jittered ttl."""
        if not isinstance(mapping, Mapping):
            raise TypeError(f"set_many takes a mapping of keys to values, not {type(mapping).__name__}")
        for key in mapping:
            _check_key(key)
        await self._store_values(mapping, ttl, level, tags)

    async def _set(
        self, key: str, value: Any, ttl: Any, level: Any, tags: Any, since: int | None = None, stale_ttl: float = 0.0
    ) -> None:
        """`set`, or with `since` (a log position) a loader's store that yields to any newer change;
        `stale_ttl` keeps the row that long past its ttl (see `get_or_set`)."""
        _check_key(key)
        await self._store_values({key: value}, ttl, level, tags, since, stale_ttl)

    async def _store_values(
        self, mapping: Mapping[str, Any], ttl: Any, level: Any, tags: Any, since: int | None = None, stale_ttl: float = 0.0
    ) -> None:
        """Store the (checked) keys of `mapping` with one write op, then update the memory tier."""
        level = _level(level)
        tags = _tags(tags)
        ttl = self._ttl(ttl)
        now = self._clock()
        prepared = [self._prepare(key, value, ttl, level, stale_ttl, now) for key, value in mapping.items()]
        if level is not CacheLevel.MEMORY and len(prepared) > 1:
            total = sum(len(item.data) + len(item.key.encode()) for item in prepared)
            if total > self.config.disk_max_size:
                raise ValueError(
                    f"the {len(prepared)} values take {total} bytes together, more than disk_max_size ({self.config.disk_max_size})"
                )
        if not prepared:
            return
        if time.monotonic() >= self._next_sync:  # writes too: see `_sync`
            await self._sync()
        store = self._store if self._store is not None else await self._disk()
        bound = self._here()
        self._counts["sets"] += len(prepared)
        if since is None and (bound.flights or bound.refreshes):
            for item in prepared:
                self._detach_flights(bound, item.key)
        if store is None:
            for item in prepared:
                self._memory.set(item.key, Entry(item.value, item.expires_at, tags, 0, item.stale_until))
            return

        def after_commit(result: Any) -> None:
            if result is None:
                return  # a loader's result that a newer change overtook: the newer state stays
            for item in prepared:
                bound.reader.spoil((item.key,))
                if level is CacheLevel.DISK:
                    self._memory.discard(item.key)
                else:
                    self._memory.set(item.key, Entry(item.value, item.expires_at, tags, self._committed_seq, item.stale_until))

        if level is CacheLevel.MEMORY:
            op: WriteOp = Remove(tuple(mapping), since, tags)  # an older disk copy must not come back
        else:
            puts = [
                Put(item.key, item.data, item.codec, tags, now, None if item.expires_at == math.inf else item.expires_at,
                    since, item.stale_until or None)
                for item in prepared
            ]
            op = puts[0] if len(puts) == 1 else PutMany(tuple(puts))
        await bound.committer.submit(op, after_commit)

    def _prepare(self, key: str, value: Any, ttl: float, level: CacheLevel, stale_ttl: float, now: float) -> _Prepared:
        """`value` encoded and checked against `disk_max_size`, with its (jittered) expiry."""
        data, codec = encode(value, self.config.allow_pickle)
        if level is not CacheLevel.MEMORY and len(data) + len(key.encode()) > self.config.disk_max_size:
            raise ValueError(
                f"value of {_shown(key)} takes {len(data)} bytes, more than disk_max_size ({self.config.disk_max_size})"
            )
        if ttl and self.config.ttl_jitter:
            ttl *= 1 - self.config.ttl_jitter * self._random.random()
        expires_at = now + ttl if ttl else math.inf
        return _Prepared(key, value, data, codec, expires_at, expires_at + stale_ttl if ttl and stale_ttl else 0.0)

    async def touch(self, key: str, ttl: float | None = None) -> bool:
        """Give `key`'s live entry the expiry now + `ttl` (`default_ttl` when None, 0: never) in
        every tier, keeping its value and tags; True if there was a live entry. Other processes
        drop their memory copies, which carry the old expiry."""
        _check_key(key)
        ttl = self._ttl(ttl)
        now = self._clock()
        expires_at = now + ttl if ttl else math.inf
        bound = self._here()

        def touch_memory(on_disk: bool) -> bool:
            entry = self._memory.peek(key)
            if entry is None or entry.expires_at <= now:
                return on_disk
            window = max(0.0, entry.stale_until - entry.expires_at)  # the stale window moves along
            self._memory.set(key, entry._replace(expires_at=expires_at, stale_until=expires_at + window if window else 0.0))
            return True

        if await self._disk() is None:
            return touch_memory(False)

        def after_commit(on_disk: bool) -> bool:
            bound.reader.spoil((key,))  # a read in flight may carry the old expiry
            return touch_memory(on_disk)

        op = Touch(key, None if expires_at == math.inf else expires_at, now)
        return await bound.committer.submit(op, after_commit)

    async def delete(self, key: str) -> bool:
        """Remove `key` from every tier; True if a live value was removed."""
        _check_key(key)
        return bool(await self._delete((key,)))

    async def delete_many(self, keys: Iterable[str]) -> int:
        """Remove `keys` from every tier, in one write; the number of live keys removed."""
        return await self._delete(_keys(keys))

    async def _delete(self, keys: tuple[str, ...]) -> int:
        now = self._clock()
        self._counts["deletes"] += len(keys)
        if not keys:
            return 0
        bound = self._here()

        def drop_from_memory() -> KeySet:
            bound.reader.spoil(keys)
            return self._memory.invalidate_keys(keys, now)

        for key in keys:
            self._detach_flights(bound, key)

        return await self._invalidate(Remove(keys), drop_from_memory, now)

    async def invalidate_by_tag(self, tag: str) -> int:
        """Remove every entry tagged `tag`; the number of live keys removed."""
        _check_text("tag", tag)
        now = self._clock()
        return await self._invalidate(RemoveTag(tag), lambda: self._memory.invalidate_tag(tag, now), now)

    async def invalidate_by_pattern(self, pattern: str) -> int:
        """Remove every key that `re.match`es `pattern`; the number of live keys removed.

        The disk tier narrows the rows by the pattern's literal prefix (`market_data:BTC:` in
        `market_data:BTC:.*`) through the key index; a pattern with no literal prefix scans.
        """
        _check_text("pattern", pattern)
        try:
            compiled = re.compile(pattern)
        except re.error as error:
            raise ValueError(f"invalid pattern {_shown(pattern)}: {error}") from None
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
        if time.monotonic() >= self._next_sync:  # writes too: see `_sync`
            await self._sync()
        bound = self._here()
        if not isinstance(op, Remove):
            self._detach_flights(bound, None)
        if await self._disk() is None:
            return len(drop_from_memory())

        def after_commit(removed: list[Removed]) -> int:
            bound.reader.spoil(key for key, _ in removed)
            live = drop_from_memory()
            live.update(key for key, expires_at in removed if expires_at is None or expires_at > now)
            return len(live)

        return await bound.committer.submit(op, after_commit)

    async def _write(self, ops: list[WriteOp]) -> list[Any]:
        reads, self._reads = self._reads, {}
        try:
            result = await self._opened_store().write(ops, reads, self._clock())
        except BaseException:
            self._keep_reads(reads)
            raise
        return self._committed(result)

    def _write_now(self, ops: list[WriteOp]) -> list[Any] | None:
        """`_write` when the store can commit at once; None (nothing changed) when it cannot."""
        reads, self._reads = self._reads, {}
        try:
            result = self._opened_store().write_now(ops, reads, self._clock())
        except BaseException:
            self._keep_reads(reads)
            raise
        if result is None:
            self._keep_reads(reads)
            return None
        return self._committed(result)

    def _opened_store(self) -> Store:
        if self._store is None:
            raise CacheError("the cache was closed while this call was pending")
        return self._store

    def _committed(self, result: WriteResult) -> list[Any]:
        self._committed_seq = result.seq  # read by the after_commit callbacks that follow at once
        self._counts["disk_evictions"] += result.evicted
        self._counts["disk_expirations"] += result.expired
        return result.results

    def _keep_reads(self, reads: dict[str, list[float]]) -> None:
        """Put back read statistics a failed batch did not save."""
        for key, (count, last) in reads.items():
            pending = self._reads.setdefault(key, [0, last])
            pending[0] += count
            pending[1] = max(pending[1], last)

    # ------------------------------------------------------------------ get_or_set

    async def get_or_set(
        self,
        key: str,
        loader: Callable[[], Awaitable[Any] | Any],
        ttl: float | None = None,
        level: CacheLevel | str = CacheLevel.ALL,
        tags: Iterable[str] | None = None,
        *,
        stale_ttl: float = 0,
    ) -> Any:
        """The cached value of `key`, or `await loader()` stored under it on a miss.

        Concurrent callers missing the memory tier for the same key share one disk lookup and,
        on a miss there, one loader call; a caller cancelled while waiting does not cancel the
        load for the others. Each caller counts as one get. The loader's result is not stored if
        a set, delete or invalidation of the key committed after the load began.

        `stale_ttl` (seconds, stale-while-revalidate): the stored entry is kept that long past
        its ttl, and for that long the old value is returned at once while one background
        `loader()` call per key refreshes it. A failed refresh is logged and counted
        (`stale_refresh_errors`), and the old value is served until the window ends.
        """
        _check_key(key)
        # Refuse bad arguments before anything is loaded.
        _level(level)
        _tags(tags)
        self._ttl(ttl)
        stale_ttl = _stale_ttl(stale_ttl)
        if time.monotonic() >= self._next_sync:
            await self._sync()
        now = self._clock()
        entry = self._memory_hit(key, now)
        if entry is not None:
            return entry.value
        bound = self._here()
        if stale_ttl:
            entry = self._memory.peek(key)
            if entry is not None and _stale_ok(entry.expires_at, entry.stale_until, stale_ttl, now):
                self._memory_hits += 1  # a stale value served from memory
                self._note_read(key, now)
                self._refresh_in_background(bound, key, loader, ttl, level, tags, stale_ttl)
                return entry.value
        flight = bound.flights.get(key)
        if flight is None:
            flight = _start_flight(
                bound.flights, key, lambda flight: self._get_or_load(key, loader, ttl, level, tags, stale_ttl, flight)
            )
        value, source = await asyncio.shield(flight.future)
        now = self._clock()
        if isinstance(value, _Stale):  # the load this caller joined accepted a stale value
            if stale_ttl and _stale_ok(value.expires_at, value.stale_until, stale_ttl, now):
                self._refresh_in_background(bound, key, loader, ttl, level, tags, stale_ttl)
                value = value.value
            else:  # ... but this caller does not
                value, source = await self._get_or_load(key, loader, ttl, level, tags, 0.0, _Flight())
        self._count_get(key, source, now)
        return value

    async def _get_or_load(
        self, key: str, loader: Callable[[], Any], ttl: Any, level: Any, tags: Any, stale_ttl: float, flight: _Flight
    ) -> tuple[Any, str | None]:
        value = await self._get_from_disk(key, self._clock(), stale_ttl)
        if value is not _MISSING:
            return value, _DISK
        return await self._load(key, loader, ttl, level, tags, stale_ttl, flight), _NOWHERE

    async def _load(
        self, key: str, loader: Callable[[], Any], ttl: Any, level: Any, tags: Any, stale_ttl: float, flight: _Flight
    ) -> Any:
        """`await loader()`, stored under `key` unless a change to it committed meanwhile (with no
        disk tier, unless a local change detached `flight`, the load or refresh running this)."""
        store = self._store
        since = await store.log_position() if store is not None else None
        value = loader()
        if inspect.isawaitable(value):
            value = await value
        if store is not None or not flight.detached:  # with no disk tier there is no log to ask
            await self._set(key, value, ttl, level, tags, since, stale_ttl)
        return value

    def _refresh_in_background(
        self, bound: _LoopBound, key: str, loader: Callable[[], Any], ttl: Any, level: Any, tags: Any, stale_ttl: float
    ) -> None:
        """Count a stale value served, and start refreshing `key` unless a refresh is running."""
        self._counts["stale_hits"] += 1
        if key not in bound.refreshes:
            _start_flight(
                bound.refreshes, key, lambda refresh: self._refresh(key, loader, ttl, level, tags, stale_ttl, refresh)
            )

    async def _refresh(
        self, key: str, loader: Callable[[], Any], ttl: Any, level: Any, tags: Any, stale_ttl: float, refresh: _Flight
    ) -> None:
        self._counts["stale_refreshes"] += 1
        try:
            await self._load(key, loader, ttl, level, tags, stale_ttl, refresh)
        except Exception as error:
            self._counts["stale_refresh_errors"] += 1
            logger.warning(
                "sqlcache: background refresh of %s failed; its stale value is served until its window ends: %s",
                _shown(key), error,
            )

    @staticmethod
    def _detach_flights(bound: _LoopBound, key: str | None) -> None:
        """A change to `key` (None: to any key) detaches the loads in flight it may touch, and
        marks the refreshes it may touch (kept listed: one refresh per key, and `close` cancels it)."""
        for flight_key in [key] if key is not None else list(bound.flights):
            flight = bound.flights.pop(flight_key, None)
            if flight is not None:
                flight.detached = True
        for refresh_key in [key] if key is not None else list(bound.refreshes):
            refresh = bound.refreshes.get(refresh_key)
            if refresh is not None:
                refresh.detached = True

    # ------------------------------------------------------------------ coherence

    async def _sync(self) -> None:
        """Apply other processes' invalidations to the memory tier; open the store if closed.

        Due every `sync_interval`, checked by gets and by writes alike: a process that only
        writes must keep its place in the log too, or other processes' rows could pile up past
        what the log keeps, and its next get would find its place trimmed away and forget its
        whole memory tier."""
        self._next_sync = time.monotonic() + self.config.sync_interval
        try:
            store = await self._disk()
            if store is None:
                self._next_sync = math.inf  # no disk tier: nothing to hear from
                return
            changes = await store.changes()
        except Exception as error:  # a locked or failing disk must not stop memory hits
            logger.warning("sqlcache: could not read other processes' invalidations: %s", error)
            return
        if changes is not None:
            self._apply_changes(changes)

    def _apply_changes(self, changes: Changes) -> None:
        now = self._clock()
        bound = self._here()
        reader = bound.reader
        if not changes.complete:
            self._memory.clear()
            reader.spoil_all()
            self._detach_flights(bound, None)
            return
        memory = self._memory
        for seq, kind, arg in changes.changes:
            self._detach_flights(bound, arg if kind == "key" else None)
            if kind == "key":
                memory.invalidate_keys((arg,), now, before=seq)
                reader.spoil((arg,))
                continue
            if kind == "tag":
                memory.invalidate_tag(arg, now, before=seq)
            elif kind == "pattern":
                try:
                    memory.invalidate_pattern(re.compile(arg), now, before=seq)
                except re.error:  # written by a Python whose regexes this one cannot read
                    memory.clear(before=seq)
            else:
                memory.clear(before=seq)
            reader.spoil_all()

    # ------------------------------------------------------------------ maintenance

    async def _maintain(self) -> None:
        """Flush read statistics every `access_flush_interval`; purge expired entries in bounded
        batches every `purge_interval`. (The invalidation log is trimmed by the writes.)"""
        next_purge = time.monotonic() + self.config.purge_interval
        while True:
            await asyncio.sleep(self.config.access_flush_interval)
            try:
                if self._reads:
                    await self._flush_reads()
                if self.config.purge_interval and time.monotonic() >= next_purge:
                    next_purge = time.monotonic() + self.config.purge_interval
                    await self.purge_expired()
            except CacheError as error:
                logger.warning("sqlcache: background maintenance failed, will retry: %s", error)

    async def _flush_reads(self) -> None:
        bound = self._here()
        try:
            await bound.committer.submit(FlushReads())
        finally:
            bound.flush = None

    async def purge_expired(self) -> int:
        """Delete expired entries from disk, in batches of `purge_batch_size`; the number deleted."""
        if await self._disk() is None:
            return 0
        batch_size = self.config.purge_batch_size
        purged = 0
        while True:
            count = await self._here().committer.submit(PurgeExpired(self._clock(), batch_size))
            purged += count
            if count < batch_size:
                break
        self._counts["disk_expirations"] += purged
        return purged

    # ------------------------------------------------------------------ stats

    async def get_stats(self) -> dict[str, Any]:
        """Counters of this process plus the size of the shared disk tier (read now)."""
        store = await self._disk()
        if store is not None:
            self._disk_figures = await store.size()
        return self.stats_snapshot()

    def stats_snapshot(self) -> dict[str, Any]:
        """`get_stats()` without awaiting anything, for a metrics scrape in another thread: the
        same dict, with `disk_entries` and `disk_size` as the last `get_stats` read them."""
        counts = {**self._counts, "memory_hits": self._memory_hits}
        disk_entries, disk_bytes = self._disk_figures
        disk_enabled = self.config.disk_cache_enabled
        lookups = counts["disk_hits"] + counts["disk_misses"]
        gets = counts["memory_hits"] + lookups + counts["memory_only_misses"]
        hits = counts["memory_hits"] + counts["disk_hits"]
        return {
            "memory_size": len(self._memory),
            "memory_max_size": self.config.memory_max_size,
            "memory_hits": counts["memory_hits"],
            "memory_misses": gets - counts["memory_hits"],
            "memory_hit_rate": _rate(counts["memory_hits"], gets),
            "disk_enabled": disk_enabled,
            "disk_size": disk_bytes,
            "disk_entries": disk_entries,
            "disk_max_size": self.config.disk_max_size,
            "disk_hits": counts["disk_hits"],
            "disk_misses": counts["disk_misses"],
            "disk_hit_rate": _rate(counts["disk_hits"], lookups),
            "gets": gets,
            "hits": hits,
            "misses": gets - hits,
            "hit_rate": _rate(hits, gets),
            "sets": counts["sets"],
            "deletes": counts["deletes"],
            "stale_hits": counts["stale_hits"],
            "stale_refreshes": counts["stale_refreshes"],
            "stale_refresh_errors": counts["stale_refresh_errors"],
            "evictions": self._memory.evictions + counts["disk_evictions"],
            "memory_evictions": self._memory.evictions,
            "disk_evictions": counts["disk_evictions"],
            "expirations": self._memory.expirations + counts["disk_expirations"],
            "invalidation_strategy": self.config.invalidation_strategy.value,
            "db_path": self.config.location if disk_enabled else None,
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

    # ------------------------------------------------------------------ decorator

    def cached(
        self,
        ttl: float | None = None,
        *,
        key: KeyMaker = None,
        tags: Iterable[str] | None = None,
        level: CacheLevel | str = CacheLevel.ALL,
        stale_ttl: float = 0,
    ) -> CachedDecorator:
        """Cache what an `async def` function returns, through `get_or_set`::

            @cache_manager.cached(ttl=60, key="market_data:{symbol}:{timeframe}", tags=["market_data", "{symbol}"])
            async def fetch_market_data(symbol: str, timeframe: str = "1m") -> dict: ...

        `key` and each tag are format strings filled with the call's arguments by parameter name
        (defaults applied); `key` may also be a callable taking the same arguments, or None for
        a key made from the function's module, qualified name and JSON-encoded arguments, the
        same in every process. Concurrent calls with the same key share one call.
        """
        from ._decorator import cached

        return cached(lambda: self, ttl, key=key, tags=tags, level=level, stale_ttl=stale_ttl)


def _start_flight(flights: dict[str, _Flight], key: str, work: Callable[[_Flight], Awaitable[Any]]) -> _Flight:
    """Run `work(flight)` as the flight of `key` in `flights`, which forgets it when it is done."""
    flight = flights[key] = _Flight()
    flight.future = asyncio.ensure_future(work(flight))
    flight.future.add_done_callback(lambda done: _end_flight(flights, key, flight))
    return flight


def _stale_ok(expires_at: float, stale_until: float, stale_ttl: float, now: float) -> bool:
    """Whether an entry past its ttl may still be served by a get_or_set allowing `stale_ttl`:
    inside both its stored stale window and `stale_ttl` seconds after its expiry."""
    return now < min(stale_until, expires_at + stale_ttl)


def _end_flight(flights: dict[str, _Flight], key: str, flight: _Flight) -> None:
    if flights.get(key) is flight:
        del flights[key]
    if not flight.future.cancelled():
        flight.future.exception()  # retrieved: the callers that are still waiting get it


def _always(key: str) -> bool:
    return True


def _may_be_one_ops_fault(error: Exception) -> bool:
    """A failed batch is retried op by op unless the store itself failed (lock, disk, closed)."""
    return not isinstance(error, CacheError)


def _shown(text: str) -> str:
    """`text` as an error message shows it: quoted, and cut short if long."""
    return repr(text) if len(text) <= _SHOWN_CHARS else f"{text[:_SHOWN_CHARS]!r}... ({len(text)} characters)"


def _check_text(name: str, text: Any) -> None:
    """A key, tag or pattern must be a `str` that encodes as UTF-8 (no lone surrogates)."""
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, not {type(text).__name__}")
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            raise ValueError(f"{name} {_shown(text)} is not valid Unicode text (lone surrogate)") from None


def _check_key(key: Any) -> None:
    if not isinstance(key, str):
        raise TypeError(f"cache keys must be str, not {type(key).__name__}")
    _check_text("cache key", key)


def _level(level: Any) -> CacheLevel:
    try:
        return level if isinstance(level, CacheLevel) else CacheLevel(level)
    except ValueError:
        raise ValueError(f"level must be a CacheLevel or one of 'memory', 'disk', 'all', got {level!r}") from None


def _string_list(what: str, items: Any) -> tuple[Any, ...]:
    """`items` (keys or tags) as a tuple; a single string or a non-iterable is refused."""
    if isinstance(items, (str, bytes)):
        raise TypeError(f"{what} must be a list of strings, not a single string")
    try:
        return tuple(items)
    except TypeError:
        raise TypeError(f"{what} must be a list of strings, not {type(items).__name__}") from None


def _keys(keys: Any) -> tuple[str, ...]:
    """`keys` of a *_many call, checked, without repeats, in their order."""
    keys = _string_list("keys", keys)
    for key in keys:
        _check_key(key)
    return tuple(dict.fromkeys(keys))


def _stale_ttl(stale_ttl: Any) -> float:
    if isinstance(stale_ttl, bool) or not isinstance(stale_ttl, (int, float)):
        raise TypeError(f"stale_ttl must be a number of seconds, not {type(stale_ttl).__name__}")
    if not math.isfinite(stale_ttl) or stale_ttl < 0:
        raise ValueError(f"stale_ttl must be a finite number of seconds >= 0, got {stale_ttl!r}")
    return float(stale_ttl)


def _tags(tags: Any) -> tuple[str, ...]:
    if tags is None:
        return ()
    tags = _string_list("tags", tags)
    for tag in tags:
        _check_text("tag", tag)
    return tuple(sorted(set(tags)))


def _rate(part: int, whole: int) -> float:
    return part / whole if whole else 0.0

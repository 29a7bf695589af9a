"""The memory tier: a bounded `cachetools` cache of entries with expiry times and tags.

The cache holds `Entry` objects, so the tier hands back the very object that was stored (no
copy). Expired entries are dropped lazily when read, and first when room is needed: the cache
classes below keep a heap of expiry times beside cachetools' own order and pop an expired entry
before asking cachetools for the strategy's victim.
"""

from __future__ import annotations

import heapq
import math
import re
from typing import Any, Callable, Iterable, NamedTuple

import cachetools

from ._config import InvalidationStrategy
from ._store import literal_prefix


KeySet = set[str]  # (inside MemoryTier, `set` names the method)


class Entry(NamedTuple):
    value: Any
    expires_at: float  # epoch seconds; math.inf for never
    tags: tuple[str, ...]
    seq: int = 0
    """Log position of the write that made it (0: read from disk). A change another process
    logged before that position is older than this entry and must not remove it."""
    stale_until: float = 0.0
    """End of the stale window after `expires_at` in which `get_or_set(..., stale_ttl=)` may
    still serve the value (0: none). `get` never returns it past `expires_at`."""

    @property
    def ends_at(self) -> float:
        """When the entry may be dropped as expired: the end of its stale window, else its expiry."""
        return max(self.expires_at, self.stale_until)


ANY_AGE = math.inf
"""`before` for a removal that takes every entry, however new."""


class _ExpiringFirst(cachetools.Cache):
    """Mixin: `popitem` removes an expired entry when there is one, else defers to the strategy."""

    def __init__(self, maxsize: int, clock: Callable[[], float], on_evict: Callable[[str, Entry, bool], None]):
        super().__init__(maxsize)
        self._clock = clock
        self._on_evict = on_evict
        self._expiries: list[tuple[float, str]] = []  # heap; stale pairs are skipped when popped

    def __setitem__(self, key: str, entry: Entry) -> None:
        super().__setitem__(key, entry)
        if entry.expires_at != math.inf:
            heapq.heappush(self._expiries, (entry.ends_at, key))
            if len(self._expiries) > 2 * len(self) + 64:
                self._compact_expiries()

    def _compact_expiries(self) -> None:
        self._expiries = [(entry.ends_at, key) for key, entry in self.items() if entry.expires_at != math.inf]
        heapq.heapify(self._expiries)

    def _soonest_expiring(self) -> tuple[float, str] | None:
        """The live (end of life, key) pair at the top of the heap, dropping stale pairs on the way."""
        heap = self._expiries
        while heap:
            expires_at, key = heap[0]
            # cachetools.Cache.__getitem__ reads without touching the LRU/LFU order.
            if key in self and cachetools.Cache.__getitem__(self, key).ends_at == expires_at:
                return expires_at, key
            heapq.heappop(heap)
        return None

    def popitem(self) -> tuple[str, Entry]:
        soonest = self._soonest_expiring()
        if soonest is not None and soonest[0] <= self._clock():
            key = soonest[1]
            entry = self.pop(key)
            self._on_evict(key, entry, True)
            return key, entry
        key, entry = self._strategy_popitem()
        self._on_evict(key, entry, False)
        return key, entry

    def _strategy_popitem(self) -> tuple[str, Entry]:
        return super().popitem()


class _LRU(_ExpiringFirst, cachetools.LRUCache):
    pass


class _LFU(_ExpiringFirst, cachetools.LFUCache):
    pass


class _FIFO(_ExpiringFirst, cachetools.FIFOCache):
    pass


class _SoonestExpiring(_ExpiringFirst, cachetools.LRUCache):
    """TTL strategy: the victim is the entry that expires soonest; entries without expiry by LRU."""

    def _strategy_popitem(self) -> tuple[str, Entry]:
        soonest = self._soonest_expiring()
        if soonest is None:
            return super()._strategy_popitem()
        return soonest[1], self.pop(soonest[1])


_CACHE_CLASSES = {
    InvalidationStrategy.LRU: _LRU,
    InvalidationStrategy.LFU: _LFU,
    InvalidationStrategy.FIFO: _FIFO,
    InvalidationStrategy.TTL: _SoonestExpiring,
}


class MemoryTier:
    """Bounded in-process cache with per-entry expiry and a tag index."""

    def __init__(self, maxsize: int, strategy: InvalidationStrategy, clock: Callable[[], float]):
        self.evictions = 0
        self.expirations = 0
        self._maxsize = maxsize
        self._clock = clock
        self._tags: dict[str, set[str]] = {}
        self._cache = _CACHE_CLASSES[strategy](max(maxsize, 1), clock, self._evicted)

    def __len__(self) -> int:
        return len(self._cache)

    def get(self, key: str, now: float) -> Entry | None:
        """The live entry for `key`, or None; an expired entry is dropped here (once its stale
        window, if any, is over too)."""
        cache = self._cache
        if key not in cache:  # cheaper than the KeyError a cachetools miss raises
            return None
        entry = cache[key]
        if entry.expires_at <= now:
            if entry.stale_until <= now:
                self.expirations += 1
                self.discard(key)
            return None
        return entry

    def peek(self, key: str) -> Entry | None:
        """The entry held for `key`, expired or not, without counting a use (LRU/LFU order stays)."""
        cache = self._cache
        return cachetools.Cache.__getitem__(cache, key) if key in cache else None

    def set(self, key: str, entry: Entry) -> None:
        """Store `entry`, replacing the key's old one in place: LFU keeps the key's count."""
        if self._maxsize == 0:
            return
        old = self.peek(key)  # not a use: the store below is one
        self._cache[key] = entry
        if old is not None:
            if old.tags == entry.tags:
                return  # a refresh keeps its tags: the index already holds them
            self._untag(key, old)
        for tag in entry.tags:
            self._tags.setdefault(tag, set()).add(key)

    def discard(self, key: str) -> Entry | None:
        """Remove `key`; return the entry it held, or None."""
        entry = self._cache.pop(key, None)
        if entry is not None:
            self._untag(key, entry)
        return entry

    def invalidate_keys(self, keys: Iterable[str], now: float, before: float = ANY_AGE) -> KeySet:
        """Remove those of `keys` whose entry was written before log position `before`;
        return those that held a live entry."""
        live = set()
        for key in list(keys):
            entry = self.peek(key)  # not a use: no LRU/LFU bookkeeping for an entry about to go
            if entry is not None and entry.seq < before:
                self.discard(key)
                if entry.expires_at > now:
                    live.add(key)
        return live

    def invalidate_tag(self, tag: str, now: float, before: float = ANY_AGE) -> KeySet:
        return self.invalidate_keys(self._tags.get(tag, ()), now, before)

    def invalidate_pattern(self, pattern: re.Pattern[str], now: float, before: float = ANY_AGE) -> KeySet:
        """Remove the keys `pattern` matches: a scan, with the literal prefix checked first."""
        prefix = literal_prefix(pattern.pattern)
        matching = [key for key in self._cache if key.startswith(prefix) and pattern.match(key)]
        return self.invalidate_keys(matching, now, before)

    def clear(self, before: float = ANY_AGE) -> None:
        if before == ANY_AGE:
            self._cache.clear()
            self._tags.clear()
        else:
            self.invalidate_keys(list(self._cache), math.inf, before)

    def _evicted(self, key: str, entry: Entry, expired: bool) -> None:
        self._untag(key, entry)
        if expired:
            self.expirations += 1
        else:
            self.evictions += 1

    def _untag(self, key: str, entry: Entry) -> None:
        for tag in entry.tags:
            keys = self._tags.get(tag)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._tags[tag]

"""The workloads: plain functions over the `Peer` interface, recording rows in a `Context`.

Each workload builds its list of peers (the same shape for everyone), loads the same entries
into each, and times the same operations on the same keys. Disk workloads reopen each peer
after loading, so every peer starts from what a freshly started process would see.
"""

from __future__ import annotations

import asyncio
import functools
import random
import sys
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

from . import data, measure
from .child import Child
from .context import Context
from .peers import (
    AiocachePeer,
    AiosqliteFloor,
    AsyncpgFloor,
    AsyncpgUpserts,
    CashewsPeer,
    CachetoolsPeer,
    DiskcachePeer,
    Peer,
    RedisPeer,
    SqlcacheBesideWriter,
    SqlcacheFileFloor,
    SqlcachePeer,
    SqlcachePgPeer,
    SqliteFloor,
    Unsupported,
)

# Labels the targets refer to.
SQLCACHE_MEMORY = "sqlcache (memory tier)"
SQLCACHE_DISK = "sqlcache (disk tier: memory_max_size=0)"
SQLCACHE_SET = "sqlcache (durable set, level ALL)"
SQLCACHE = "sqlcache"
CACHETOOLS = "cachetools LRUCache (awaited bare get)"
CASHEWS_MEM = "cashews mem://"
CASHEWS_DISK = "cashews disk:// (shards=0)"
AIOCACHE = "aiocache SimpleMemoryCache"
DISKCACHE = "diskcache (default policy)"
DISKCACHE_TAGS = "diskcache (default policy, tag_index)"
AIOSQLITE = "floor: raw aiosqlite"
SQLITE_FILE = "floor: stdlib sqlite3 on sqlcache's file"
RSS_CACHETOOLS = "cachetools LRUCache (bare)"
RSS_SQLCACHE = "sqlcache (memory tier; disk tier off)"
RSS_SQLCACHE_DISK = "sqlcache (memory tier; disk tier on)"
COHERENCE = "sqlcache (default sync_interval), another process setting the key"
COHERENCE_HIT = "sqlcache (memory tier), another process writing other keys"
COHERENCE_CACHETOOLS = "cachetools LRUCache (awaited bare get), same time"
PG_DISK = "sqlcache on PostgreSQL (disk tier: memory_max_size=0)"
PG_FETCHROW = "floor: raw asyncpg fetchrow on sqlcache's table"
PG_SET = "sqlcache on PostgreSQL (durability normal: synchronous_commit off)"
PG_RAW = "raw asyncpg: pool.execute of its own upsert each (synchronous_commit off)"
PG_SET_FULL = "sqlcache on PostgreSQL (durability full: synchronous_commit on)"
PG_RAW_FULL = "raw asyncpg: pool.execute of its own upsert each (synchronous_commit on)"
PG_COHERENCE = "sqlcache on PostgreSQL (default sync_interval), another process setting the key"
PG_SET_OP = "set (64 callers)"
PG_SET_FLUSHED_OP = "set (64 callers), commit flushed to disk"

WRITE_SHARE = 0.1  # of the Zipf mix's operations
POLL_S = 0.001  # how often the coherence workload reads the key another process changed
CHURN_EVERY_S = 0.002  # how often the other process sets a key while memory hits are timed


def strategy_label(strategy: str) -> str:
    return f"sqlcache {strategy.upper()} (disk tier)"


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    description: str
    run: Callable[[Context], Awaitable[None]] | None
    """None: measured by the workload before it (rows for both come from one setup)."""


# ---------------------------------------------------------------------------- helpers


def _keys(count: int, population: int, seed: int = 7) -> list[str]:
    return [data.key(i) for i in data.random_indices(count, population, seed)]


async def _check_hit(peer: Peer, key: str) -> None:
    """Refuse to time 'hits' that are misses."""
    if await peer.get(key) is None:
        raise RuntimeError(f"{peer.label}: {key} is not stored, the hit workload would time misses")


async def _time_gets(peer: Peer, keys: list[str], concurrency: int = 1) -> measure.Stats:
    await _check_hit(peer, keys[0])
    return await measure.run(lambda i: peer.get(keys[i]), len(keys), concurrency)


async def _time_sets(peer: Peer, entries: list[data.Item], concurrency: int = 1) -> measure.Stats:
    """Time storing `entries` (key, value and tags: a refresh stores the entry as it was)."""
    return await measure.run(lambda i: peer.set(*entries[i]), len(entries), concurrency)


def _callers(concurrency: int) -> str:
    return "1 caller" if concurrency == 1 else f"{concurrency} callers"


Prepare = Callable[[Peer], Awaitable[None]]
MakeOp = Callable[[Peer], measure.Operation]


async def _interleaved(
    ctx: Context, workload: str, op: str, peers: list[Peer], prepare: Prepare, make_op: MakeOp, count: int,
    concurrency: int = 1,
) -> None:
    """Prepare every peer, then time them in turns: in each of `ctx.scale.rounds` rounds every
    peer performs its next share of the `count` operations. A burst of noise on a shared
    machine then lands on all peers alike instead of on whichever ran at that moment."""
    opened = [peer for peer in ctx.usable(peers) if await ctx.open(peer, workload)]
    ready = [peer for peer in opened if await _try(ctx, workload, peer, prepare(peer))]
    samples = {peer: measure.Samples() for peer in ready}
    share = count // ctx.scale.rounds
    for round_ in range(ctx.scale.rounds):
        for peer in list(ready):
            indices = range(round_ * share, (round_ + 1) * share)
            if not await _try(ctx, workload, peer, measure.collect(make_op(peer), indices, concurrency, samples[peer])):
                ready.remove(peer)
    for peer in ready:
        ctx.record(workload, peer, op, samples[peer].stats(concurrency))
    for peer in opened:
        await ctx.close(peer)


async def _try(ctx: Context, workload: str, peer: Peer, step: Awaitable[object]) -> bool:
    """Await `step`; on an error report the peer as failed in `workload` and say False."""
    try:
        await step
    except Exception as error:
        ctx.fail(peer, workload, error)
        return False
    return True


def _loader(count: int, reopen: bool = True, check: str | None = None) -> Prepare:
    """Load entries 0..count-1, reopen (fresh-process state) and make sure `check` is a hit."""

    async def prepare(peer: Peer) -> None:
        await peer.load(data.items(0, count))
        if reopen:
            await peer.reopen()
        if check is not None:
            await _check_hit(peer, check)

    return prepare


def _getter(keys: list[str]) -> MakeOp:
    return lambda peer: (lambda i: peer.get(keys[i]))


def _setter(entries: list[data.Item]) -> MakeOp:
    return lambda peer: (lambda i: peer.set(*entries[i]))


# ---------------------------------------------------------------------------- hits and sets


async def memory_hit(ctx: Context) -> None:
    peers = [
        SqlcachePeer(SQLCACHE_MEMORY),
        CachetoolsPeer(CACHETOOLS),
        CashewsPeer(CASHEWS_MEM, backend="mem", expiry_scan=False),  # nothing expires here
        AiocachePeer(AIOCACHE),
        RedisPeer(),
    ]
    keys = _keys(ctx.scale.ops, ctx.scale.keys)
    prepare = _loader(ctx.scale.keys, reopen=False, check=keys[0])
    await _interleaved(ctx, "memory_hit", "get", peers, prepare, _getter(keys), len(keys))


def _disk_peers() -> list[Peer]:
    return [
        SqlcachePeer(SQLCACHE_DISK, memory_max_size=0),
        DiskcachePeer(DISKCACHE),
        DiskcachePeer("diskcache LRU", policy="least-recently-used"),
        CashewsPeer(CASHEWS_DISK, backend="disk"),
        RedisPeer(),
        SqliteFloor(),
        AiosqliteFloor(),
    ]


async def disk_hit(ctx: Context, concurrency: int) -> None:
    name = "disk_hit" if concurrency == 1 else f"disk_hit_{concurrency}"
    keys = _keys(ctx.scale.ops, ctx.scale.keys)
    prepare = _loader(ctx.scale.keys, check=keys[0])
    peers = [*_disk_peers(), SqlcacheFileFloor(SQLITE_FILE)]
    await _interleaved(ctx, name, f"get ({_callers(concurrency)})", peers, prepare, _getter(keys), len(keys), concurrency)


async def durable_set(ctx: Context, concurrency: int) -> None:
    name = "set" if concurrency == 1 else f"set_{concurrency}"
    peers = [SqlcachePeer(SQLCACHE_SET)] + _disk_peers()[1:]
    indices = data.random_indices(ctx.scale.write_ops, ctx.scale.keys, seed=9)
    entries = [next(data.items(i, i + 1)) for i in indices]
    await _interleaved(ctx, name, f"set ({_callers(concurrency)})", peers, _loader(ctx.scale.keys), _setter(entries),
                       len(entries), concurrency)


async def strategy_hit(ctx: Context) -> None:
    peers: list[Peer] = [SqlcachePeer(strategy_label(s), memory_max_size=0, strategy=s) for s in ("fifo", "lru", "lfu")]
    peers += [
        DiskcachePeer(DISKCACHE),
        DiskcachePeer("diskcache LRU", policy="least-recently-used"),
        DiskcachePeer("diskcache LFU", policy="least-frequently-used"),
    ]
    keys = _keys(ctx.scale.ops, ctx.scale.keys)
    prepare = _loader(ctx.scale.keys, check=keys[0])
    await _interleaved(ctx, "strategy_hit", "get (1 caller)", peers, prepare, _getter(keys), len(keys))


# ---------------------------------------------------------------------------- invalidation


async def _invalidate_in_turns(ctx: Context, peers: list[Peer], kind: str, first_group: int) -> None:
    """Invalidate `rounds` groups of 1,000 one after another, every peer in turn within a round
    (as `_interleaved` does for single operations: a burst of noise on a shared machine lands on
    all peers alike), each peer restoring its group, untimed, after its turn."""
    name = f"{kind}_invalidation"
    op = f"invalidate {kind} ({data.GROUP_SIZE:,} of {ctx.scale.invalidation_total:,})"
    samples = {peer: measure.Samples() for peer in peers}
    removed: dict[Peer, int] = {}
    timing = list(peers)
    for round_ in range(ctx.scale.invalidation_rounds):
        group = first_group + round_
        for peer in list(timing):

            async def act(_: int, peer: Peer = peer) -> None:
                invalidate = peer.invalidate_tag(data.tag(group)) if kind == "tag" else \
                    peer.invalidate_prefix(data.prefix(group))
                removed.setdefault(peer, await invalidate)

            try:
                await measure.collect(act, range(1), 1, samples[peer])
                await peer.load(data.items(group * data.GROUP_SIZE, (group + 1) * data.GROUP_SIZE))
            except Unsupported as missing:
                ctx.record(name, peer, op, None, note=str(missing))
                timing.remove(peer)
            except Exception as error:
                ctx.fail(peer, name, error)
                timing.remove(peer)
    for peer in timing:
        ctx.record(name, peer, op, samples[peer].stats(), removed=removed[peer] or None)


async def invalidation(ctx: Context) -> None:
    """Tag, then prefix-pattern invalidation of whole groups among `invalidation_total` entries."""
    peers = [
        SqlcachePeer(SQLCACHE),
        DiskcachePeer(DISKCACHE_TAGS, tag_index=True),
        CashewsPeer(CASHEWS_MEM, backend="mem", expiry_scan=False),  # nothing expires here
        RedisPeer("redis (tag sets / SCAN MATCH + UNLINK)"),
        CachetoolsPeer("cachetools LRUCache (key scan)"),
    ]
    opened = [peer for peer in ctx.usable(peers) if await ctx.open(peer, "tag_invalidation")]
    loaded = [peer for peer in opened
              if await _try(ctx, "tag_invalidation", peer, _loader(ctx.scale.invalidation_total)(peer))]
    await _invalidate_in_turns(ctx, loaded, "tag", first_group=0)
    await _invalidate_in_turns(ctx, loaded, "prefix", first_group=ctx.scale.invalidation_rounds)
    for peer in opened:
        await ctx.close(peer)


# ---------------------------------------------------------------------------- Zipf mix


class ZipfMix:
    """Cache-aside traffic: reads (a miss stores the value) and updates, keys Zipf-distributed."""

    def __init__(self, keys: int, ops: int):
        self.keys = [data.key(i) for i in range(keys)]
        self.values = [data.value(i) for i in range(keys)]
        self.draws = data.Zipf(keys).draw(ops)
        rng = random.Random(5)
        self.writes = [rng.random() < WRITE_SHARE for _ in range(ops)]
        self.reads = self.hits = 0

    async def op(self, peer: Peer, i: int) -> None:
        index = self.draws[i]
        if self.writes[i]:
            await peer.set(self.keys[index], self.values[index])
            return
        self.reads += 1
        if await peer.get(self.keys[index]) is None:
            await peer.set(self.keys[index], self.values[index])
        else:
            self.hits += 1

    async def warm_then_time(self, peer: Peer) -> measure.Stats:
        self.reads = self.hits = 0
        half = len(self.draws) // 2
        for i in range(half):
            await self.op(peer, i)
        self.reads = self.hits = 0
        return await measure.run(lambda i: self.op(peer, half + i), len(self.draws) - half, mixed=True)


async def zipf_mix(ctx: Context) -> None:
    capacity = ctx.scale.zipf_capacity
    peers: list[Peer] = [
        SqlcachePeer(f"sqlcache {s.upper()}", memory_max_size=capacity // 4, strategy=s, default_ttl=3600 if s == "ttl" else 0)
        for s in ("lru", "lfu", "fifo", "ttl")
    ]
    peers += [CachetoolsPeer(f"cachetools {s.upper()}Cache", strategy=s, maxsize=capacity) for s in ("lru", "lfu", "fifo")]
    peers += [
        DiskcachePeer(DISKCACHE),
        DiskcachePeer("diskcache LRU", policy="least-recently-used"),
        DiskcachePeer("diskcache LFU", policy="least-frequently-used"),
        CashewsPeer(CASHEWS_MEM, backend="mem", size=capacity),
    ]
    mix = ZipfMix(ctx.scale.zipf_keys, ctx.scale.zipf_ops)

    async def body(peer: Peer) -> None:
        await peer.load(data.items(0, capacity, namespace="filler"))
        await peer.bound_here()
        stats = await mix.warm_then_time(peer)
        hit_rate = mix.hits / mix.reads if mix.reads else 0.0
        ctx.record("zipf_mix", peer, "mixed op (90% get, 10% set)", stats, hit_rate=hit_rate)

    await ctx.for_each("zipf_mix", peers, body)


# ---------------------------------------------------------------------------- growth


async def _grow_step(ctx: Context, peer: Peer, size: int) -> None:
    """Time get, tag invalidation and set-with-eviction with `size` entries stored."""
    ops = ctx.scale.growth_ops
    at = f"@ {size:,}"
    ctx.record("growth", peer, f"get {at}", await _time_gets(peer, _keys(ops, size, seed=size)), entries=size)

    async def act(round_: int) -> None:
        await peer.invalidate_tag(data.tag(round_))

    async def restore(round_: int) -> None:
        await peer.load(data.items(round_ * data.GROUP_SIZE, (round_ + 1) * data.GROUP_SIZE))

    stats = await measure.run_each(act, ctx.scale.invalidation_rounds, restore)
    ctx.record("growth", peer, f"invalidate tag (1,000) {at}", stats, entries=size)

    await peer.bound_here()
    fresh = list(data.items(size, size + ops, namespace="evicting"))
    ctx.record("growth", peer, f"set+evict {at}", await _time_sets(peer, fresh), entries=size)
    await peer.unbound()


async def growth(ctx: Context) -> None:
    peers = [SqlcachePeer(SQLCACHE_DISK, memory_max_size=0), DiskcachePeer(DISKCACHE_TAGS, tag_index=True)]

    async def body(peer: Peer) -> None:
        stored = 0
        for size in ctx.scale.growth_sizes:
            await peer.load(data.items(stored, size))
            stored = size
            await peer.reopen()
            await _grow_step(ctx, peer, size)

    await ctx.for_each("growth", peers, body)


# ---------------------------------------------------------------------------- memory held


async def memory_rss(ctx: Context) -> None:
    """Resident memory of each cache holding `rss_entries` entries, each filled in a fresh process."""
    entries = ctx.scale.rss_entries
    roles = [
        (CachetoolsPeer(RSS_CACHETOOLS), "cachetools"),
        (SqlcachePeer(RSS_SQLCACHE), "sqlcache"),
        (SqlcachePeer(RSS_SQLCACHE_DISK), "sqlcache+disk"),
    ]
    for peer, role in roles:
        if not ctx.usable([peer]):
            continue
        started = time.monotonic()
        child = await Child.start("rss", role, str(entries), str(ctx.scratch / f"rss-{role}"))
        try:
            figures = await child.answer()
        except Exception as error:
            ctx.fail(peer, "memory_rss", error)
            continue
        finally:
            await child.stop()
        ctx.record("memory_rss", peer, f"hold {entries:,} entries", None, entries=entries, **figures)
        print(f"[benchmarks]   {peer.label}: {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- other processes


async def _time_changes(ctx: Context, peer: Peer, workload: str = "coherence") -> None:
    """Another process sets a key this one holds in memory, `coherence_changes` times, each at
    a random point of the sync cycle; time from its set returning until this process's get
    stops returning the old value (reading every `POLL_S`)."""
    assert isinstance(peer, SqlcachePeer)
    key, bound_s = "coherence:watched", peer.sync_interval
    writer = await Child.start("writer", str(peer.directory), env=peer.writer_env())
    latencies: list[int] = []
    stalls = measure.StallMonitor()
    try:
        await writer.answer()  # ready
        await writer.ask(f"set {key} 0")
        await _check_hit(peer, key)
        if not await peer.holds_in_memory(key):
            raise RuntimeError(f"{peer.label}: {key} is not in the memory tier, nothing would be stale")
        rng = random.Random(3)
        async with stalls:
            for n in range(1, ctx.scale.coherence_changes + 1):
                await asyncio.sleep(rng.uniform(0, bound_s))
                writer.send(f"set {key} {n}")
                while await peer.get(key) != {"n": n}:
                    await asyncio.sleep(POLL_S)
                seen = time.monotonic()
                committed = (await writer.answer())["at"]
                latencies.append(round((seen - committed) * 1e9))
    finally:
        await writer.stop()
    ctx.record(workload, peer, f"set in another process, until seen (sync_interval {bound_s:g} s)",
               measure.summarise(latencies, 0, stalls), bound_s=bound_s, worst_ns=max(latencies))


async def coherence(ctx: Context) -> None:
    """Target 10: how soon another process's change is seen, and a memory hit while the check
    that sees it keeps finding new rows."""
    await ctx.for_each("coherence", [SqlcachePeer(COHERENCE)], functools.partial(_time_changes, ctx))
    peers = [SqlcacheBesideWriter(COHERENCE_HIT, every=CHURN_EVERY_S), CachetoolsPeer(COHERENCE_CACHETOOLS)]
    keys = _keys(ctx.scale.ops, ctx.scale.keys)
    prepare = _loader(ctx.scale.keys, reopen=False, check=keys[0])
    await _interleaved(ctx, "coherence", "get", peers, prepare, _getter(keys), len(keys))


# ---------------------------------------------------------------------------- PostgreSQL


async def postgresql(ctx: Context) -> None:
    """Issue 12's rows: the disk tier on the harness's PostgreSQL server beside raw asyncpg on the
    same server (and Redis): a disk hit against one `fetchrow` of the same row; 64 concurrent
    sets against 64 callers each committing its own upsert, at each durability; how soon
    another process sees a change."""
    keys = _keys(ctx.scale.ops, ctx.scale.keys)
    hits = [SqlcachePgPeer(PG_DISK, memory_max_size=0), AsyncpgFloor(PG_FETCHROW), RedisPeer()]
    await _interleaved(ctx, "postgresql", "get (1 caller)", hits, _loader(ctx.scale.keys, check=keys[0]),
                       _getter(keys), len(keys))
    callers = ctx.scale.concurrency
    indices = data.random_indices(ctx.scale.write_ops, ctx.scale.keys, seed=9)
    entries = [next(data.items(i, i + 1)) for i in indices]
    for op, peers in (
        (PG_SET_OP, [SqlcachePgPeer(PG_SET), AsyncpgUpserts(PG_RAW, synchronous_commit="off", connections=callers),
                     RedisPeer()]),
        (PG_SET_FLUSHED_OP, [SqlcachePgPeer(PG_SET_FULL, durability="full"),
                             AsyncpgUpserts(PG_RAW_FULL, synchronous_commit="on", connections=callers)]),
    ):
        await _interleaved(ctx, "postgresql_set_64", op, peers, _loader(ctx.scale.keys), _setter(entries),
                           len(entries), callers)
    await ctx.for_each("postgresql_coherence", [SqlcachePgPeer(PG_COHERENCE)],
                       functools.partial(_time_changes, ctx, workload="postgresql_coherence"))


WORKLOADS = [
    Workload("memory_hit", "Memory-tier hit", "await get of a key the memory tier holds; 1 caller.", memory_hit),
    Workload("disk_hit", "Disk-tier hit, 1 caller",
             "sqlcache with memory_max_size=0: every get is a disk read (nothing is promoted). "
             "Each peer reopened after loading (fresh-process state).", functools.partial(disk_hit, concurrency=1)),
    Workload("disk_hit_64", "Disk-tier hit, 64 concurrent callers",
             "As above, 64 tasks reading at once; ops/s is the aggregate.", functools.partial(disk_hit, concurrency=64)),
    Workload("set", "Durable set, 1 caller",
             "Refresh of a stored entry (same value size and tag); each set returns once committed "
             "(sqlcache and diskcache: SQLite WAL, synchronous=NORMAL; Redis: AOF everysec, not durable per set).",
             functools.partial(durable_set, concurrency=1)),
    Workload("set_64", "Durable set, 64 concurrent writers",
             "64 tasks setting at once; each returns only after its own write committed.",
             functools.partial(durable_set, concurrency=64)),
    Workload("strategy_hit", "Disk hit under FIFO, LRU and LFU",
             "Disk-tier hits (memory off) per eviction strategy: what recording access statistics costs.", strategy_hit),
    Workload("tag_invalidation", "Tag invalidation",
             "Remove the 1,000 entries carrying one tag; the cache holds the total shown. Median of rounds, "
             "the peers taking turns within each round (each restores the group after its turn, untimed). "
             "(cashews disk:// is left out: its tag bookkeeping loads ~900 tagged sets/s, minutes for 100,000.)",
             invalidation),
    Workload("prefix_invalidation", "Prefix-pattern invalidation",
             "Remove the 1,000 keys matching `market_data:SYM000.*` (sqlcache regex; peers' prefix or glob API).",
             None),
    Workload("zipf_mix", "Zipf read/write mix, bounded cache",
             "Cache-aside traffic over a Zipf(1.1) keyspace; the cache holds 10% of the keys "
             "(sqlcache: disk bound = that many entries' bytes, memory tier a quarter of it).", zipf_mix),
    Workload("growth", "Growth", "Cost of get, tag invalidation of 1,000 and set-with-eviction as entries grow; "
             "sqlcache disk tier (memory off).", growth),
    Workload("memory_rss", "Memory held by the memory tier",
             "Resident set (/proc/self/statm) of a fresh process before and after filling one cache with the same "
             "entries (the tagged values every workload uses); sqlcache's memory tier sized to hold them all.",
             memory_rss),
    Workload("coherence", "Cross-process coherence",
             "Two real processes on one cache directory. First row: the other process sets a key this one holds "
             f"in memory, at a random point of the sync cycle; time from that set returning to this process's get "
             f"returning the new value (read every {POLL_S * 1e3:g} ms). Then memory hits while the other process "
             f"sets other keys every {CHURN_EVERY_S * 1e3:g} ms, so every coherence check finds new log rows, "
             "interleaved with a bare cachetools get.", coherence),
    Workload("postgresql", "PostgreSQL: disk-tier hit, 1 caller",
             "The disk tier on a PostgreSQL server the harness starts (127.0.0.1, TCP, fsync on); memory_max_size=0, "
             "so every get is a round trip. Beside it, on the same server: one raw asyncpg fetchrow of sqlcache's own "
             "point query on its table (no decoding), and Redis.", postgresql),
    Workload("postgresql_set_64", "PostgreSQL: 64 concurrent sets",
             "64 tasks setting at once (refreshes of stored entries, each with its tag); each returns once committed. "
             "sqlcache: group commit, at each durability; raw asyncpg: 64 callers each committing its own upsert of "
             "the value's bytes into a plain key-value table (no tags), on a pool of 64 connections, with the same "
             "synchronous_commit; Redis: AOF everysec, not durable per set.", None),
    Workload("postgresql_coherence", "PostgreSQL: cross-process coherence",
             "Two real processes (separate cache directories, one database: two hosts): the other process sets a key "
             "this one holds in memory, at a random point of the sync cycle; time from that set returning to this "
             f"process's get returning the new value (read every {POLL_S * 1e3:g} ms).", None),
]
"""In report order."""

"""One-off figures for the PostgreSQL store against raw asyncpg, on a durable local server.

    python benchmarks/pg_measure.py [--rounds N]

Starts a throwaway PostgreSQL (tests/pg_server.py, fsync on) and prints:
- a disk hit through `CacheManager` (memory tier off) against one raw `fetchrow` of the same row;
- 64 concurrent `set`s (group commit) against 64 callers each committing its own upsert on a
  pool of 64 connections (synchronous commit, PostgreSQL's default), with `durability` "full"
  (synchronous commit too) and "normal" (asynchronous commit);
- how soon another manager's memory tier drops a changed key (p50, p99).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import asyncpg  # noqa: E402

from pg_server import PostgresServer  # noqa: E402
from sqlcache import CacheManager  # noqa: E402

VALUE = {"symbol": "BTC", "price": 43210.5, "pad": "x" * 80}

# A plain key-value table for the raw upserts: what a caller would write without sqlcache.
CREATE_KV = "CREATE TABLE kv (key text PRIMARY KEY, value bytea NOT NULL)"
UPSERT_KV = "INSERT INTO kv (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
# The row a disk hit reads, as the store reads it.
READ_ROW = "SELECT key, value, codec, expires_at, tags FROM entries WHERE key = $1"


def describe(samples: list[float]) -> str:
    return f"median {statistics.median(samples) * 1e6:.0f} us, mean {statistics.mean(samples) * 1e6:.0f} us"


async def disk_hit(url: str, count: int) -> None:
    """Both reads alternate, sample by sample, so that load from elsewhere on the machine
    weighs on both alike."""
    async with CacheManager({"disk_cache_url": url, "memory_max_size": 0}) as cache:
        await cache.set("market:BTC", VALUE, ttl=0)
        connection = await asyncpg.connect(url)
        through_cache, raw = [], []
        for sample in range(count + 200):
            for samples, call in ((through_cache, lambda: cache.get("market:BTC")),
                                  (raw, lambda: connection.fetchrow(READ_ROW, "market:BTC"))):
                start = time.perf_counter()
                await call()
                if sample >= 200:  # after a warm-up
                    samples.append(time.perf_counter() - start)
        await connection.close()
    ratio = statistics.median(through_cache) / statistics.median(raw)
    print(f"disk hit via CacheManager: {describe(through_cache)}")
    print(f"raw asyncpg fetchrow:      {describe(raw)}")
    print(f"ratio (median): {ratio:.2f}x (target <= 1.3x)")


async def concurrent_sets(url: str, rounds: int, durability: str) -> None:
    async with CacheManager({"disk_cache_url": url, "durability": durability}) as cache:
        await asyncio.gather(*(cache.set(f"k{i}", VALUE) for i in range(64)))  # warm up
        start = time.perf_counter()
        for round_ in range(rounds):
            await asyncio.gather(*(cache.set(f"k{i}", {**VALUE, "round": round_}) for i in range(64)))
        grouped = 64 * rounds / (time.perf_counter() - start)
    pool = await asyncpg.create_pool(url, min_size=64, max_size=64)
    await pool.execute(CREATE_KV)
    payload = b"x" * 100

    async def own_commit(i: int) -> None:
        await pool.execute(UPSERT_KV, f"k{i}", payload)  # autocommit: one transaction, one commit each

    await asyncio.gather(*(own_commit(i) for i in range(64)))
    start = time.perf_counter()
    for _ in range(rounds):
        await asyncio.gather(*(own_commit(i) for i in range(64)))
    alone = 64 * rounds / (time.perf_counter() - start)
    await pool.close()
    print(f"64 concurrent sets via CacheManager (durability {durability}): {grouped:,.0f} sets/s")
    print(f"64 callers, own upsert each:         {alone:,.0f} upserts/s")
    print(f"ratio: {grouped / alone:.2f}x (target >= 3x)")


async def coherence(url: str, samples: int) -> None:
    """Seconds from a set returning in one manager to another manager (its own connections, as
    another host has) returning the new value from a memory tier that held the old one."""
    async with CacheManager({"disk_cache_url": url}) as writer, CacheManager({"disk_cache_url": url}) as reader:
        delays = []
        for sample in range(samples):
            await writer.set("k", sample)
            while await reader.get("k") != sample:  # promote it: the next change must evict it
                await asyncio.sleep(0.001)
            await writer.set("k", -sample - 1)
            changed = time.perf_counter()
            while await reader.get("k") != -sample - 1:
                await asyncio.sleep(0.001)
            delays.append(time.perf_counter() - changed)
    delays.sort()
    p50, p99 = delays[len(delays) // 2], delays[int(len(delays) * 0.99)]
    print(f"coherence across managers (sync_interval {reader.config.sync_interval:g} s): "
          f"p50 {p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms (target p99 <= 100 ms)")


async def main(rounds: int, count: int) -> None:
    server = PostgresServer(durable=True).start()
    try:
        await disk_hit(server.create_database(), count)
        for durability in ("full", "normal"):
            await concurrent_sets(server.create_database(), rounds, durability)
        await coherence(server.create_database(), 200)
    finally:
        server.remove()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--reads", type=int, default=3000)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.rounds, arguments.reads))

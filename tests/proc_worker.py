"""A second process for the multi-process tests: `python proc_worker.py ROLE DIR [ARGS...]`.

Roles print one JSON object per line on stdout (flushed), so the test can follow them live.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time

from sqlcache import CacheLevel, CacheManager


def say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def watch(directory: str, key: str, sync_interval: str) -> None:
    """Read `key` (promoting it), then poll until its value changes; report when it did."""
    async with CacheManager({"disk_cache_dir": directory, "sync_interval": float(sync_interval)}) as cache:
        first = await cache.get(key)
        await cache.get(key)
        stats = await cache.get_stats()
        say(event="ready", value=first, memory_hits=stats["memory_hits"])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            value = await cache.get(key)
            if value != first:
                say(event="changed", value=value, at=time.monotonic())
                return
            await asyncio.sleep(0.005)
        say(event="timeout")


async def write_forever(directory: str) -> None:
    """Set k0, k1, ... and report each set once it has returned (so it is committed)."""
    async with CacheManager({"disk_cache_dir": directory}) as cache:
        for i in range(10**9):
            await cache.set(f"k{i}", {"i": i, "pad": "x" * 200}, 0, CacheLevel.ALL, tags=[f"t{i % 7}"])
            say(i=i)


async def burst(directory: str, max_bytes: str, sets: str) -> None:
    """A short-lived process: `sets` sets of long keys (each logged for the others), then exit."""
    config = {"disk_cache_dir": directory, "disk_max_size": int(max_bytes), "purge_interval": 0}
    async with CacheManager(config) as cache:
        for start in range(0, int(sets), 100):
            await asyncio.gather(*(cache.set(f"{i:06d}" + "k" * 1000, "v" * 300) for i in range(start, start + 100)))


async def mixed(directory: str, process: str, seconds: str) -> None:
    """Many tasks of reads, writes and invalidations; each task owns its keys and knows their fate."""
    config = {"disk_cache_dir": directory, "sync_interval": 0.1, "busy_timeout": 10.0, "memory_max_size": 50}
    async with CacheManager(config) as cache:
        stop = time.monotonic() + float(seconds)

        async def task(t: int) -> tuple[dict[str, int], int]:
            rng = random.Random(f"{process}-{t}")
            prefix = f"p{process}:t{t}:"
            expected: dict[str, int] = {}  # key -> value the disk must hold at the end
            n = 0
            while time.monotonic() < stop:
                n += 1
                key = f"{prefix}{rng.randrange(20)}"
                roll = rng.random()
                if roll < 0.45:
                    await cache.set(key, n, 0, tags=[f"p{process}t{t}", f"odd{n % 2}"])
                    expected[key] = n
                elif roll < 0.75:
                    got = await cache.get(key)
                    assert got == expected.get(key), (key, got, expected.get(key))
                    await cache.get(f"p{rng.randrange(4)}:t{rng.randrange(8)}:{rng.randrange(20)}")
                elif roll < 0.85:
                    await cache.delete(key)
                    expected.pop(key, None)
                elif roll < 0.93:
                    await cache.invalidate_by_pattern(f"{prefix}1")  # keys 1, 10..19
                    expected = {k: v for k, v in expected.items() if not k.startswith(f"{prefix}1")}
                else:
                    await cache.invalidate_by_tag(f"p{process}t{t}")
                    expected.clear()
            return expected, n

        results = await asyncio.gather(*(task(t) for t in range(8)))
        merged = {key: value for expected, _ in results for key, value in expected.items()}
        say(event="done", expected=merged, operations=sum(n for _, n in results))


if __name__ == "__main__":
    role, *args = sys.argv[1:]
    asyncio.run({"watch": watch, "write": write_forever, "burst": burst, "mixed": mixed}[role](*args))

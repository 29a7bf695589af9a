"""Another host for the PostgreSQL tests: `python pg_worker.py ROLE CONFIG_JSON [ARGS...]`.

Each process has its own `disk_cache_dir` and the shared `disk_cache_url`, as two machines would.
Roles print one JSON object per line on stdout (flushed), so the test can follow them live.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from sqlcache import CacheLevel, CacheManager


def say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def watch(config: dict, key: str) -> None:
    """Read `key` twice (the second a memory hit), then poll until its value changes."""
    async with CacheManager(config) as cache:
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


async def write_forever(config: dict) -> None:
    """Set k0, k1, ... and report each set once it has returned (so it is committed)."""
    async with CacheManager(config) as cache:
        for i in range(10**9):
            await cache.set(f"k{i}", {"i": i, "pad": "x" * 200}, 0, CacheLevel.ALL, tags=[f"t{i % 7}"])
            say(i=i)


if __name__ == "__main__":
    role, config, *args = sys.argv[1:]
    asyncio.run({"watch": watch, "write": write_forever}[role](json.loads(config), *args))

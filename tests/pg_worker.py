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


async def follow(config: dict, key: str) -> None:
    """Poll `key` every 5 ms; report each new value, when it was seen and the memory hits so far."""
    async with CacheManager(config) as cache:
        last: object = object()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            value = await cache.get(key)
            if value != last:
                stats = await cache.get_stats()
                say(value=value, at=time.monotonic(), memory_hits=stats["memory_hits"])
                last = value
                if value == "stop":
                    return
            await asyncio.sleep(0.005)


async def write_forever(config: dict) -> None:
    """Set k0, k1, ... and report each set once it has returned (so it is committed)."""
    async with CacheManager(config) as cache:
        for i in range(10**9):
            await cache.set(f"k{i}", {"i": i, "pad": "x" * 200}, 0, CacheLevel.ALL, tags=[f"t{i % 7}"])
            say(i=i)


if __name__ == "__main__":
    role, config, *args = sys.argv[1:]
    asyncio.run({"follow": follow, "write": write_forever}[role](json.loads(config), *args))

"""One agent process for the multi-process preloader test.

    python preload_worker.py CACHE_DIR URL INTERVAL START_AT STOP_AT

Registers the shared task `shared_btc` (the guide's market-data task, fetching URL with this
process's pid as a query parameter), runs the preloader with real time from the wall-clock
instant START_AT to STOP_AT, then stops and closes cleanly.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from sqlcache import CacheManager
from sqlcache._pool import ResourcePool


async def main(cache_dir: str, url: str, interval: float, start_at: float, stop_at: float) -> None:
    async with ResourcePool(CacheManager({"disk_cache_dir": cache_dir})) as resource_pool:
        resource_pool.register_preload_task(
            name="shared_btc",
            loader_func=resource_pool.cache_preloader.preload_market_data,
            interval=interval,
            args=["BTC", "1m", "loopback", url],
            kwargs={"params": {"pid": os.getpid()}},
            cache_key="market_data:BTC:1m",
            cache_ttl=60,
            tags=["market_data", "BTC"],
        )
        await asyncio.sleep(max(0.0, start_at - time.time()))
        await resource_pool.start_cache_preloader()
        await asyncio.sleep(max(0.0, stop_at - time.time()))
        await resource_pool.stop_cache_preloader()


if __name__ == "__main__":
    directory, address, every, start, stop = sys.argv[1:]
    asyncio.run(main(directory, address, float(every), float(start), float(stop)))

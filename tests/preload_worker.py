"""One agent process for the multi-process preloader test.

    python preload_worker.py CACHE_DIR URL INTERVAL START_AT STOP_AT

Registers the shared task `shared_btc` (the guide's market-data task, fetching URL with this
process's pid and the run's start time as query parameters), runs the preloader with real time from the wall-clock
instant START_AT to STOP_AT, then stops and closes cleanly.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from sqlcache import CacheManager, ResourcePool


async def main(cache_dir: str, url: str, interval: float, start_at: float, stop_at: float) -> None:
    async with ResourcePool(CacheManager({"disk_cache_dir": cache_dir})) as resource_pool:
        preloader = resource_pool.cache_preloader

        async def fetch_market_data():
            """The guide's loader, also telling the server which process ran it and when it started:
            the test checks the lease on these start times, free of HTTP latency."""
            params = {"pid": os.getpid(), "started": repr(time.time())}
            return await preloader.preload_market_data("BTC", "1m", "loopback", url, params=params)

        preloader.register_preload_task(
            name="shared_btc",
            loader_func=fetch_market_data,
            interval=interval,
            cache_key="market_data:BTC:1m",
            cache_ttl=60,
            tags=["market_data", "BTC"],
            timeout=5,  # a loaded test machine must not turn a slow first connection into an error
        )
        await asyncio.sleep(max(0.0, start_at - time.time()))
        await resource_pool.start_cache_preloader()
        await asyncio.sleep(max(0.0, stop_at - time.time()))
        await resource_pool.stop_cache_preloader()


if __name__ == "__main__":
    directory, address, every, start, stop = sys.argv[1:]
    asyncio.run(main(directory, address, float(every), float(start), float(stop)))

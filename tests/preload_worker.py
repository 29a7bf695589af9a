"""One agent process for the multi-process preloader tests.

    python preload_worker.py CACHE_DIR --interval S --run-for S (--url URL | --run-log PATH) [options]

Registers the shared task `shared_btc` on CACHE_DIR (or, with `--disk-url`, on that PostgreSQL
database, CACHE_DIR being this host's own directory), opens its table, prints `ready`, waits for
a line on stdin (so the test can start every worker at once, and lock the database first), then
runs the preloader with real time for `--run-for` seconds, stops and closes cleanly.

The task's loader is either the guide's market-data fetch of URL (telling the server this
process's pid and the run's start time), or, with `--run-log`, a loader that appends
`start PID T` and `end PID T` lines to PATH (one `write` on an `O_APPEND` file each, so lines
of several processes never mix) around a wait of `--duration` seconds (`--first-duration` for
the first run in the log); `--plain` makes it a plain function that blocks in `time.sleep`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

from sqlcache import CacheManager, ResourcePool


def log_line(path: str, line: str) -> None:
    """Append one line to the shared run log in one write."""
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, line.encode())
    finally:
        os.close(descriptor)


def run_seconds(options: argparse.Namespace) -> float:
    """How long this run lasts: `--first-duration` if no run has started yet in any process."""
    with open(options.run_log, "a+") as log:
        log.seek(0)
        first = not any(line.startswith("start ") for line in log)
    return options.first_duration if first and options.first_duration is not None else options.duration


def make_loader(options: argparse.Namespace, preloader):
    if options.url:
        async def fetch_market_data():
            """The guide's loader, also telling the server which process ran it and when it started:
            the test checks the lease on these start times, free of HTTP latency."""
            params = {"pid": os.getpid(), "started": repr(time.time())}
            return await preloader.preload_market_data("BTC", "1m", "loopback", options.url, params=params)

        return fetch_market_data

    if options.plain:
        def plain_loader():
            seconds = run_seconds(options)
            log_line(options.run_log, f"start {os.getpid()} {time.time()!r}\n")
            try:
                time.sleep(seconds)
            finally:
                log_line(options.run_log, f"end {os.getpid()} {time.time()!r}\n")
            return {"pid": os.getpid()}

        return plain_loader

    async def async_loader():
        seconds = run_seconds(options)
        log_line(options.run_log, f"start {os.getpid()} {time.time()!r}\n")
        try:
            await asyncio.sleep(seconds)
        finally:
            log_line(options.run_log, f"end {os.getpid()} {time.time()!r}\n")
        return {"pid": os.getpid()}

    return async_loader


async def main(options: argparse.Namespace) -> None:
    config = {"disk_cache_dir": options.cache_dir, "busy_timeout": options.busy_timeout}
    if options.disk_url is not None:
        config["disk_cache_url"] = options.disk_url
    async with ResourcePool(CacheManager(config)) as resource_pool:
        preloader = resource_pool.cache_preloader
        if options.lease is not None:
            preloader.lease_seconds = options.lease
        preloader.register_preload_task(
            name="shared_btc",
            loader_func=make_loader(options, preloader),
            interval=options.interval,
            cache_key="market_data:BTC:1m",
            cache_ttl=60,
            tags=["market_data", "BTC"],
            timeout=options.timeout,
        )
        await preloader.get_stats()  # the database is open and the task registered
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        await resource_pool.start_cache_preloader()
        await asyncio.sleep(options.run_for)
        await resource_pool.stop_cache_preloader()


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("cache_dir")
    parser.add_argument("--disk-url", help="the disk_cache_url: a PostgreSQL cache shared by every worker")
    parser.add_argument("--interval", type=float, required=True)
    parser.add_argument("--run-for", type=float, required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--url")
    source.add_argument("--run-log")
    parser.add_argument("--plain", action="store_true")
    parser.add_argument("--duration", type=float, default=0.0)
    parser.add_argument("--first-duration", type=float)
    # a loaded test machine must not turn a slow first connection into an error
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--lease", type=float)
    parser.add_argument("--busy-timeout", type=float, default=5.0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse(sys.argv[1:])))

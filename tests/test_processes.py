"""Several real processes on one cache directory: coherence, kill -9, concurrent load."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sqlcache import CacheConfig, CacheLevel, CacheManager

WORKER = str(Path(__file__).with_name("proc_worker.py"))
SYNC_INTERVAL = 0.05  # the default: the bound users get


def start(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, WORKER, *args], stdout=subprocess.PIPE, text=True, env=env)


async def next_line(process: subprocess.Popen) -> dict:
    line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), timeout=30)
    assert line, f"worker exited with {process.wait()}"
    return json.loads(line)


async def change_seen_by_another_process(cache_dir, key: str, change) -> tuple[object, float]:
    """The new value a watcher process sees, and seconds from `change(cache)` returning to that."""
    async with CacheManager({"disk_cache_dir": str(cache_dir)}) as cache:
        await cache.set(key, "old", 0, tags=["t"])
        watcher = start("watch", str(cache_dir), key, str(SYNC_INTERVAL))
        try:
            ready = await next_line(watcher)
            assert ready == {"event": "ready", "value": "old", "memory_hits": 1}  # served from its memory
            await change(cache)
            changed_at = time.monotonic()
            seen = await next_line(watcher)
        finally:
            watcher.kill()
            watcher.wait()
    assert seen["event"] == "changed"
    return seen["value"], seen["at"] - changed_at


@pytest.mark.parametrize(
    "change, new_value",
    [
        (lambda cache: cache.set("market_data:BTC:1m", "new"), "new"),
        (lambda cache: cache.set("market_data:BTC:1m", "mem", level=CacheLevel.MEMORY), None),
        (lambda cache: cache.delete("market_data:BTC:1m"), None),
        (lambda cache: cache.invalidate_by_tag("t"), None),
        (lambda cache: cache.invalidate_by_pattern("market_data:BTC:.*"), None),
        (lambda cache: cache.clear(), None),
    ],
    ids=["overwrite", "memory-set", "delete", "tag", "pattern", "clear"],
)
async def test_other_processes_stop_returning_the_old_value_within_the_bound(cache_dir, change, new_value):
    assert CacheConfig().sync_interval == SYNC_INTERVAL
    value, delay = await change_seen_by_another_process(cache_dir, "market_data:BTC:1m", change)
    assert value == new_value
    assert delay <= SYNC_INTERVAL + 0.25  # the bound, plus scheduling slack on a loaded machine


async def test_sets_that_returned_survive_kill_9(cache_dir):
    writer = start("write", str(cache_dir))
    acknowledged = -1
    while acknowledged < 300:
        acknowledged = (await next_line(writer))["i"]
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    db_path = cache_dir / "sqlcache.db"
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    async with CacheManager({"disk_cache_dir": str(cache_dir)}) as cache:
        for i in range(acknowledged + 1):
            assert await cache.get(f"k{i}") == {"i": i, "pad": "x" * 200}
        stats = await cache.get_stats()
        assert stats["disk_entries"] >= acknowledged + 1
        assert await cache.invalidate_by_tag("t0") == len(range(0, stats["disk_entries"], 7))


def test_the_files_stay_bounded_whatever_the_process_lifetimes(cache_dir):
    """DESIGN.md: database plus WAL within 2 x disk_max_size + 16 MiB, with the purge off and
    every writer short-lived (so no background trim ever runs): the writes trim the log."""
    max_bytes, bound = 256 * 1024, 2 * 256 * 1024 + 16 * 1024 * 1024
    largest = 0
    for _ in range(8):  # 8 x 3000 sets of 1 KiB keys: 24 MB of log rows if nothing trimmed them
        start("burst", str(cache_dir), str(max_bytes), "3000").wait(timeout=60)
        files = [cache_dir / "sqlcache.db", cache_dir / "sqlcache.db-wal"]
        largest = max(largest, sum(path.stat().st_size for path in files if path.exists()))
    assert largest <= bound, f"{largest / 2**20:.1f} MiB > {bound / 2**20:.1f} MiB"


async def test_four_processes_of_mixed_work_lose_nothing(cache_dir):
    async with CacheManager({"disk_cache_dir": str(cache_dir)}):
        pass  # create the file once, so the workers race only on their work
    workers = [start("mixed", str(cache_dir), str(p), "3") for p in range(4)]
    reports = [await next_line(worker) for worker in workers]
    assert [worker.wait(timeout=30) for worker in workers] == [0, 0, 0, 0]
    expected = {key: value for report in reports for key, value in report["expected"].items()}
    assert len(expected) > 20 and all(report["operations"] > 500 for report in reports)
    with sqlite3.connect(cache_dir / "sqlcache.db") as db:
        stored = {key: json.loads(value) for key, value in db.execute("SELECT key, value_json FROM cache_entries")}
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        entries, size = db.execute("SELECT entries, bytes FROM counters").fetchone()
        assert (entries, size) == db.execute("SELECT count(*), coalesce(sum(size), 0) FROM entries").fetchone()
    assert stored == expected


def test_a_program_that_never_closes_the_cache_still_exits_and_keeps_its_sets(cache_dir):
    script = (
        "import asyncio, sys\n"
        "from sqlcache import CacheManager\n"
        "async def main():\n"
        "    cache = CacheManager({'disk_cache_dir': sys.argv[1]})\n"
        "    await cache.set('k', 'v')\n"
        "    # and no close()\n"
        "asyncio.run(main())\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    finished = subprocess.run([sys.executable, "-c", script, str(cache_dir)], env=env, timeout=30)
    assert finished.returncode == 0
    with sqlite3.connect(cache_dir / "sqlcache.db") as db:
        assert db.execute("SELECT value_json FROM cache_entries WHERE key = 'k'").fetchall() == [('"v"',)]

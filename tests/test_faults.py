"""Faults: damaged files, newer schemas, unwritable paths, locks, a full disk, file growth."""

from __future__ import annotations

import asyncio
import hashlib
import math
import sqlite3
import stat
import time

import pytest

from sqlcache import (
    CacheBusyError,
    CacheDirectoryError,
    CacheLevel,
    CacheManager,
    DamagedCacheWarning,
    SchemaVersionError,
    StorageError,
)
from sqlcache import _plan
from sqlcache._sqlite import SQLiteStore


def config(cache_dir, **extra) -> dict:
    return {"disk_cache_dir": str(cache_dir), **extra}


async def make_cache_file(cache_dir, entries: int = 300) -> None:
    async with CacheManager(config(cache_dir)) as cache:
        for i in range(entries):
            await cache.set(f"k{i}", {"i": i, "pad": "p" * 100}, 0)


def wreck_with_garbage(path):
    path.write_bytes(bytes(range(256)) * 64)


def wreck_header(path):
    data = bytearray(path.read_bytes())
    data[:16] = b"NotSQLite here\x00\x00"
    path.write_bytes(bytes(data))


def wreck_by_truncation(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("wreck", [wreck_with_garbage, wreck_header, wreck_by_truncation])
async def test_a_damaged_file_is_set_aside_and_a_fresh_cache_works(cache_dir, wreck):
    await make_cache_file(cache_dir)
    db_path = cache_dir / "sqlcache.db"
    wreck(db_path)
    damaged = db_path.read_bytes()
    with pytest.warns(DamagedCacheWarning, match="set aside"):
        async with CacheManager(config(cache_dir)) as cache:
            assert await cache.get("k1") is None
            await cache.set("fresh", 1)
            assert await cache.get("fresh") == 1
    [kept] = cache_dir.glob("sqlcache.db.damaged-*[0-9]")
    assert kept.read_bytes() == damaged  # kept for inspection, untouched


async def test_a_newer_schema_is_refused_and_the_file_left_untouched(cache_dir):
    await make_cache_file(cache_dir, entries=3)
    db_path = cache_dir / "sqlcache.db"
    with sqlite3.connect(db_path) as db:
        db.execute("PRAGMA user_version = 99")
    before = hashlib.sha256(db_path.read_bytes()).hexdigest()
    cache = CacheManager(config(cache_dir))
    with pytest.raises(SchemaVersionError, match="newer"):
        await cache.get("k1")
    assert hashlib.sha256(db_path.read_bytes()).hexdigest() == before
    assert not list(cache_dir.glob("*.damaged-*"))


async def test_a_directory_that_cannot_be_created_names_the_path(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    cache = CacheManager(config(blocker / "cache"))
    with pytest.raises(CacheDirectoryError, match=str(blocker / "cache")):
        await cache.set("k", 1)


async def test_directory_and_files_are_private(cache_dir):
    async with CacheManager(config(cache_dir)) as cache:
        await cache.set("k", 1)
        assert stat.S_IMODE(cache_dir.stat().st_mode) == 0o700
        for path in cache_dir.glob("sqlcache.db*"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


async def test_a_lock_held_past_the_busy_timeout_fails_writes_but_not_reads(cache_dir):
    async with CacheManager(config(cache_dir, busy_timeout=0.2)) as cache:
        await cache.set("in-memory", "m")
        await cache.set("on-disk", "d", level=CacheLevel.DISK)
        other = sqlite3.connect(cache_dir / "sqlcache.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        try:
            started = time.monotonic()
            with pytest.raises(CacheBusyError, match="locked"):
                await cache.set("in-memory", "new")
            assert time.monotonic() - started >= 0.2  # it waited the busy timeout first
            assert await cache.get("in-memory") == "m"  # memory keeps serving, unchanged
            assert await cache.get("on-disk") == "d"  # disk reads are not blocked (WAL)
        finally:
            other.execute("ROLLBACK")
            other.close()
        await cache.set("in-memory", "new")
        assert await cache.get("in-memory") == "new"


async def test_a_full_disk_fails_the_set_and_keeps_everything_committed(cache_dir):
    async with CacheManager(config(cache_dir)) as cache:
        for i in range(20):
            await cache.set(f"k{i}", "v" * 100)
        # SQLite reports a full disk and a reached max_page_count alike (SQLITE_FULL).
        pages = cache._store._loop_db.execute("PRAGMA page_count").fetchone()[0]
        for connection in (cache._store._loop_db, cache._store._worker):
            connection.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(StorageError, match="full"):
            await asyncio.gather(*(cache.set(f"big{i}", "x" * 50_000) for i in range(4)))
        assert await cache.get("big0") is None
        assert [await cache.get(f"k{i}") for i in range(20)] == ["v" * 100] * 20
    async with CacheManager(config(cache_dir, memory_max_size=0)) as cache:
        assert [await cache.get(f"k{i}") for i in range(20)] == ["v" * 100] * 20


async def test_the_wal_file_stays_bounded_under_steady_writes(cache_dir):
    async with CacheManager(config(cache_dir, memory_max_size=10)) as cache:
        wal = cache_dir / "sqlcache.db-wal"
        largest = 0
        for round_ in range(50):
            await asyncio.gather(*(cache.set(f"k{round_}-{i}", "w" * 4000) for i in range(64)))
            largest = max(largest, wal.stat().st_size)
        written = 50 * 64 * 4000
        assert written > 10 * 1024 * 1024
        assert largest < 10 * 1024 * 1024  # checkpoints keep it near 2 x 1000 pages, not all that was written


async def test_a_stream_of_lone_sets_checkpoints_about_twice_per_cycle_of_the_wal(cache_dir, monkeypatch):
    """The WAL grows about 10 KiB per set here; a checkpoint is due at 4 MiB, the next one at
    8 MiB until the WAL starts over: some 2 checkpoints per 400 sets. A policy that checkpoints
    again as soon as the last one ended, whenever the WAL is over 4 MiB, ran one every 11 sets."""
    checkpoints = []
    run_checkpoint = SQLiteStore._checkpoint

    def counted(store: SQLiteStore) -> None:
        checkpoints.append(store.path)
        run_checkpoint(store)

    monkeypatch.setattr(SQLiteStore, "_checkpoint", counted)
    sets = 3000
    async with CacheManager(config(cache_dir, memory_max_size=10)) as cache:
        wal = cache_dir / "sqlcache.db-wal"
        largest = 0
        for i in range(sets):
            await cache.set(f"k{i % 500}", {"candles": [[i, 1.5, 2.5, 0.5, 1.0, 100]] * 10}, tags=["t"])
            largest = max(largest, wal.stat().st_size)
        assert largest > 4 * 1024 * 1024  # the stream did go through checkpoints
    assert 1 <= len(checkpoints) <= sets // 50
    assert largest < 10 * 1024 * 1024


async def test_expired_entries_are_purged_in_bounded_batches(cache_dir, clock):
    async with CacheManager(config(cache_dir, purge_batch_size=10), clock=clock) as cache:
        for i in range(25):
            await cache.set(f"short{i}", i, 1, CacheLevel.DISK)
        for i in range(5):
            await cache.set(f"long{i}", i, 100, CacheLevel.DISK)
        batches = []
        write_now = cache._store.write_now

        def observed(ops, reads, now):  # the loop's fast path; the slow path goes through it too
            result = write_now(ops, reads, now)
            if result is not None:
                batches.append([op.limit for op in ops])
            return result

        cache._store.write_now = observed
        clock.advance(2)
        assert await cache.purge_expired() == 25
        assert batches == [[10], [10], [10]]  # one bounded transaction per batch
        assert (await cache.get_stats())["disk_entries"] == 5


async def test_the_background_purge_removes_expired_rows(cache_dir, clock):
    settings = config(cache_dir, purge_interval=0.05, access_flush_interval=0.02)
    async with CacheManager(settings, clock=clock) as cache:
        for i in range(30):
            await cache.set(f"k{i}", i, 1 if i % 3 else 0, CacheLevel.DISK)
        clock.advance(5)
        for _ in range(200):
            if (await cache.get_stats())["disk_entries"] == 10:
                break
            await asyncio.sleep(0.02)  # waiting on a real background task, not on a TTL
        assert (await cache.get_stats())["disk_entries"] == 10


async def test_durability_full_makes_every_commit_fsync(cache_dir):
    async with CacheManager(config(cache_dir, durability="full")) as cache:
        await cache.set("k", 1)
        assert cache._store._worker.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    async with CacheManager(config(cache_dir)) as cache:
        await cache.set("k", 1)
        assert cache._store._loop_db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL


async def test_a_process_that_only_sets_keeps_its_place_in_the_log_and_its_memory_tier(cache_dir, monkeypatch):
    """Its sets check the log when the check is due, as its gets do: one that only set keys while
    another process wrote more rows than the log keeps used to find its place trimmed away at its
    next get, and forgot every memory entry (the benchmark's 10b measured 43 % disk reads)."""
    monkeypatch.setattr(_plan, "LOG_KEEP_ROWS", 8)
    monkeypatch.setattr(_plan, "LOG_TRIM_EVERY", 1)
    settings = config(cache_dir, memory_max_size=1000)
    async with CacheManager(settings) as setter, CacheManager(settings) as other:
        for i in range(40):
            await other.set(f"other{i}", i)
            setter._next_sync = -math.inf  # its check is due (monotonic time, not the injected clock)
            await setter.set(f"k{i}", i)
        assert await setter.get("k0") == 0
        assert (await setter.get_stats())["memory_size"] == 40


async def test_a_process_that_missed_trimmed_log_rows_empties_its_memory_tier(cache_dir, monkeypatch):
    settings = config(cache_dir, sync_interval=0.05)
    async with CacheManager(settings) as reader, CacheManager(settings) as writer:
        await writer.set("k", "old")
        assert await reader.get("k") == "old"  # now in the reader's memory tier
        monkeypatch.setattr(_plan, "LOG_KEEP_ROWS", 1)  # each write keeps only the newest row
        monkeypatch.setattr(_plan, "LOG_TRIM_EVERY", 1)
        await writer.set("k", "new")
        await writer.set("other", 1)
        await asyncio.sleep(0.06)  # the reader's sync interval, a real-time bound
        assert await reader.get("k") == "new"  # it could not know what it missed, so it forgot all

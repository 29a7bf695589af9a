"""The edges of DESIGN.md, each one a case that failed before its fix (issue 10); those of the
store's contract on each store in turn (the `disk_config` fixture), those of SQLite's file and
internals on SQLite alone."""

from __future__ import annotations

import asyncio
import enum
import math
import os
import sqlite3
import uuid

import pytest

from pg_server import disk_rows, heard
from sqlcache import CacheLevel, CacheManager
from sqlcache._plan import LOG_KEEP_ROWS, LOG_TRIM_EVERY


def config(cache_dir, **extra):
    return {"disk_cache_dir": str(cache_dir), **extra}


async def disk_keys(cache: CacheManager) -> set[str]:
    return {key for (key,) in await disk_rows(cache, "SELECT key FROM entries")}


# ---------------------------------------------------------------- keys and tags are any text

NUL_KEYS = ["k\x00", "\x00", "a\x00b", "ключ\x00"]


@pytest.mark.parametrize("key", NUL_KEYS)
async def test_a_key_with_nul_is_deleted_from_disk(disk_config, key):
    async with CacheManager(disk_config()) as cache:
        await cache.set(key, 1)
        await cache.set(key.split("\x00")[0], "prefix twin")  # what a cut-short key would hit
        assert await cache.delete(key)
        assert key not in await disk_keys(cache)
        assert key.split("\x00")[0] in await disk_keys(cache)


async def test_a_memory_set_of_a_nul_key_drops_its_disk_copy(disk_config):
    async with CacheManager(disk_config()) as cache:
        await cache.set("k\x00", "old", level=CacheLevel.DISK)
        await cache.set("k\x00", "new", level=CacheLevel.MEMORY)
    async with CacheManager(disk_config()) as cache:
        assert await cache.get("k\x00") is None  # the old value never comes back


async def test_concurrent_gets_of_nul_keys_find_them(disk_config):
    async with CacheManager({**disk_config(), "memory_max_size": 0}) as cache:
        for key in NUL_KEYS:
            await cache.set(key, key)
        assert await asyncio.gather(*(cache.get(key) for key in NUL_KEYS)) == NUL_KEYS


async def test_tags_differing_after_a_nul_are_different_tags(disk_config):
    async with CacheManager({**disk_config(), "memory_max_size": 0}) as cache:
        await cache.set("a", 1, tags=["grp\x00A"])
        await cache.set("b", 2, tags=["grp"])
        assert await cache.invalidate_by_tag("grp") == 1
        assert await cache.get("a") == 1 and await cache.get("b") is None
        assert await cache.invalidate_by_tag("grp\x00A") == 1
        assert await cache.get("a") is None


# ---------------------------------------------------------------- values JSON would change


class Color(enum.Enum):
    RED = 1


class Size(enum.IntEnum):
    SMALL = 1


class Side(str, enum.Enum):
    BUY = "buy"


@pytest.mark.parametrize("value", [
    Color.RED, Size.SMALL, Side.BUY, uuid.UUID(int=7), [1, {"side": Side.BUY}],
    {"rows": [[1, 2], [{"id": (3, uuid.UUID(int=7))}]]}, ({"a": 1}, [Size.SMALL]),
])
@pytest.mark.parametrize("level", list(CacheLevel))
async def test_enum_and_uuid_values_are_refused_at_every_level(cache_dir, value, level):
    async with CacheManager(config(cache_dir)) as cache:
        await cache.set("k", "before", level=level)
        with pytest.raises(TypeError, match="JSON"):
            await cache.set("k", value, level=level)
        assert await cache.get("k") == "before"


class Price(float):
    pass


@pytest.mark.parametrize("value", [
    {"raw": b"\x00"}, {"ids": {1, 2}}, {"z": 1j}, {1: "int key"}, [frozenset()], {"p": Price(1.5)}, [Ellipsis],
])
async def test_values_beyond_json_nested_anywhere_are_refused(cache_dir, value):
    """What the fast type check (marshal) writes but JSON cannot hold is refused too, by orjson."""
    async with CacheManager(config(cache_dir)) as cache:
        with pytest.raises(TypeError, match="JSON"):
            await cache.set("k", value)
        assert await cache.get("k") is None


async def test_a_value_that_contains_itself_is_refused_not_walked_forever(cache_dir):
    value: list = [1]
    value.append({"self": value})
    async with CacheManager(config(cache_dir)) as cache:
        with pytest.raises(TypeError, match="JSON"):
            await cache.set("k", value)
        assert await cache.get("k") is None


# ---------------------------------------------------------------- successive event loops


def test_one_manager_works_in_successive_event_loops(disk_config):
    cache = CacheManager({**disk_config(), "access_flush_interval": 0.01})

    async def first() -> None:
        await cache.set("a", 1)
        # A write still in flight when this loop ends: asyncio.run cancels it.
        asyncio.get_running_loop().create_task(cache.set("in-flight", 2, tags=["t"] * 1))

    async def second() -> None:
        await asyncio.wait_for(cache.set("b", 3), timeout=10)
        assert await cache.get("a") == 1 and await cache.get("b") == 3
        assert await cache.get_or_set("c", lambda: 4) == 4
        await asyncio.sleep(0.1)  # the maintenance task of this loop flushes read statistics
        assert cache._reads == {}
        await cache.close()

    asyncio.run(first())
    asyncio.run(second())


# ---------------------------------------------------------------- the invalidation log


async def test_the_writes_themselves_trim_the_log_with_no_purge(cache_dir):
    async with CacheManager(config(cache_dir, purge_interval=0)) as cache:
        for round_ in range(LOG_KEEP_ROWS // 100 + 10):
            await asyncio.gather(*(cache.set(f"k{i}", round_) for i in range(100)))
        with sqlite3.connect(cache_dir / "sqlcache.db") as db:
            rows, low, high = db.execute("SELECT count(*), min(seq), max(seq) FROM invalidations").fetchone()
    assert rows < LOG_KEEP_ROWS + LOG_TRIM_EVERY and high - low + 1 == rows  # bounded, and no hole


async def test_a_failed_log_read_is_read_again(cache_dir):
    settings = config(cache_dir, sync_interval=0.01)
    async with CacheManager(settings) as reader, CacheManager(settings) as writer:
        await writer.set("k", "old")
        assert await reader.get("k") == "old"
        await writer.set("k", "new")
        store = reader._store
        real, failing = store._loop_db, FailingOnce(store._loop_db, "invalidations")
        store._loop_db = failing
        await asyncio.sleep(0.02)
        assert await reader.get("k") == "old"  # the read failed: nothing known yet
        assert failing.failed
        store._loop_db = real
        await asyncio.sleep(0.02)
        assert await reader.get("k") == "new"  # the position did not move past the failure


class FailingOnce:
    """A connection whose first statement mentioning `text` fails like a busy database."""

    def __init__(self, connection: sqlite3.Connection, text: str):
        self._connection = connection
        self._text = text
        self.failed = False

    def execute(self, sql, *args):
        if self._text in sql and not self.failed:
            self.failed = True
            raise sqlite3.OperationalError("database is locked")
        return self._connection.execute(sql, *args)


# ---------------------------------------------------------------- get_or_set never overwrites newer state


@pytest.mark.parametrize(
    "change",
    [
        lambda cache: cache.set("k", "newer"),
        lambda cache: cache.delete("k"),
        lambda cache: cache.invalidate_by_tag("t"),
        lambda cache: cache.invalidate_by_pattern("k"),
        lambda cache: cache.clear(),
        lambda cache: cache.set("k", "newer", level=CacheLevel.MEMORY),
    ],
    ids=["set", "delete", "tag", "pattern", "clear", "memory-set"],
)
@pytest.mark.parametrize("where", ["same manager", "other manager", "no disk tier"])
@pytest.mark.parametrize("level", [CacheLevel.ALL, CacheLevel.MEMORY])
async def test_a_loader_result_never_overwrites_a_change_made_while_it_ran(disk_config, change, where, level):
    settings = disk_config() if where != "no disk tier" else {"disk_cache_enabled": False}
    async with CacheManager(settings) as cache, CacheManager(settings) as other:
        changer = other if where == "other manager" else cache
        loading, release = asyncio.Event(), asyncio.Event()

        async def slow_loader():
            loading.set()
            await release.wait()
            return "loaded"

        load = asyncio.ensure_future(cache.get_or_set("k", slow_loader, level=level, tags=["t"]))
        await loading.wait()
        await change(changer)
        release.set()
        assert await load == "loaded"  # the caller gets what it loaded
        assert await cache.get("k") != "loaded", "the loader's result overwrote a newer change"
        async with CacheManager(settings) as fresh:
            assert await fresh.get("k") != "loaded", "... on disk"


# ---------------------------------------------------------------- one bad argument fails alone


async def test_a_bad_tag_fails_only_its_own_call_and_keeps_read_statistics(disk_config):
    async with CacheManager({**disk_config(), "memory_max_size": 0}) as cache:
        await cache.set("read-me", 1)
        assert await cache.get("read-me") == 1
        results = await asyncio.gather(
            cache.set("good", 1, tags=["fine"]),
            cache.set("bad", 1, tags=["\ud800"]),
            cache.invalidate_by_tag("\udfff"),
            cache.invalidate_by_pattern("\ud800.*"),
            cache.set("also-good", 2),
            return_exceptions=True,
        )
        assert results[0] is None and results[4] is None
        assert all(isinstance(error, ValueError) and "surrogate" in str(error) for error in results[1:4])
        assert await cache.get("good") == 1 and await cache.get("also-good") == 2
    assert await disk_rows(cache, "SELECT access_count FROM cache_entries WHERE key = 'read-me'") == [(1,)]


# ---------------------------------------------------------------- coherence after close and across ages


async def test_a_closed_manager_used_again_serves_nothing_stale(disk_config):
    settings = disk_config()
    cache = CacheManager(settings)
    await cache.set("k", "old")
    await cache.close()
    async with CacheManager(settings) as other:
        await other.set("k", "new")
    assert await cache.get("k") == "new"  # reopened, and the memory copy was dropped
    await cache.close()


async def test_a_memory_value_survives_an_older_change_from_another_process(disk_config):
    async with CacheManager({**disk_config(), "sync_interval": 3600}) as cache, CacheManager(disk_config()) as other:
        await other.set("k", "disk")  # logged first
        await other.invalidate_by_tag("t")
        await other.clear()
        await cache.set("k", "mine", level=CacheLevel.MEMORY, tags=["t"])  # logged after all three
        await heard(cache)
        cache._next_sync = -math.inf  # now it reads the three older rows
        assert await cache.get("k") == "mine"


async def test_an_unreadable_remote_pattern_empties_memory_and_later_changes_still_apply(cache_dir):
    async with CacheManager(config(cache_dir, sync_interval=3600)) as cache:
        await cache.set("a", 1)
        await cache.set("b", 2)
        with sqlite3.connect(cache_dir / "sqlcache.db") as db:  # a newer Python's regex, then a set
            db.execute("INSERT INTO invalidations (origin, kind, arg, logged_at) VALUES ('x', 'pattern', '(?', 0)")
            db.execute("UPDATE entries SET value = '3' WHERE key = 'b'")
            db.execute("INSERT INTO invalidations (origin, kind, arg, logged_at) VALUES ('x', 'key', 'b', 0)")
        cache._next_sync = -math.inf
        assert await cache.get("b") == 3
        assert (await cache.get_stats())["memory_size"] == 1  # only what was read back since


async def test_a_file_set_aside_by_another_process_is_followed(cache_dir):
    settings = config(cache_dir, sync_interval=0.01)
    async with CacheManager(settings) as cache:
        await cache.set("k", "in the old file")
        db = cache_dir / "sqlcache.db"
        for suffix in ("", "-wal", "-shm"):  # what a process that found the file damaged does
            if os.path.exists(f"{db}{suffix}"):
                os.rename(f"{db}{suffix}", f"{db}.damaged{suffix}")
        async with CacheManager(settings) as other:
            await other.set("k", "in the new file")
            await asyncio.sleep(0.02)
            assert await cache.get("k") == "in the new file"
            await cache.set("j", "written after following")
            assert await other.get("j") == "written after following"


# ---------------------------------------------------------------- memory tier and statistics


async def test_the_memory_tier_lfu_keeps_a_refreshed_keys_count(disk_config):
    async with CacheManager({**disk_config(), "memory_max_size": 2, "invalidation_strategy": "lfu"}) as cache:
        await cache.set("hot", 0, level=CacheLevel.MEMORY)
        for round_ in range(5):
            assert await cache.get("hot") == round_
            await cache.set("hot", round_ + 1, level=CacheLevel.MEMORY)  # refreshed, as a preloader does
        await cache.set("cold", 0, level=CacheLevel.MEMORY)
        await cache.set("new", 0, level=CacheLevel.MEMORY)  # evicts the least often read
        assert await cache.get("hot") == 5 and await cache.get("cold") is None


async def test_many_buffered_reads_schedule_one_flush(disk_config, monkeypatch):
    monkeypatch.setattr("sqlcache._manager._MAX_PENDING_READS", 10)
    async with CacheManager(disk_config()) as cache:
        for i in range(30):
            await cache.set(f"k{i}", i, level=CacheLevel.MEMORY)
        before = len(asyncio.all_tasks())
        for i in range(30):
            await cache.get(f"k{i}")
        assert len(asyncio.all_tasks()) - before <= 1


@pytest.mark.parametrize("stored", [False, True])
async def test_every_caller_of_a_shared_lookup_counts_as_a_get(disk_config, stored):
    async with CacheManager({**disk_config(), "memory_max_size": 0}) as cache:
        if stored:
            await cache.set("k", "v")
        calls = 0

        async def loader():
            nonlocal calls
            calls += 1
            await asyncio.sleep(0.01)
            return "v"

        assert await asyncio.gather(*(cache.get_or_set("k", loader) for _ in range(100))) == ["v"] * 100
        stats = await cache.get_stats()
        assert stats["gets"] == 100 and stats["disk_hits"] == (100 if stored else 0)
        assert calls == (0 if stored else 1)


# ---------------------------------------------------------------- messages


async def test_error_messages_are_short_and_clear(disk_config):
    async with CacheManager({**disk_config(), "disk_max_size": 1000}) as cache:
        with pytest.raises(ValueError) as too_large:
            await cache.set("k" * 1_000_000, "v")
        assert len(str(too_large.value)) < 300
        with pytest.raises(TypeError, match="tags must be a list of strings, not int"):
            await cache.set("k", 1, tags=5)
        with pytest.raises(ValueError, match="pattern .*lone surrogate"):
            await cache.invalidate_by_pattern("\ud800")


@pytest.mark.parametrize("disk", [True, False])
async def test_a_caller_arriving_after_a_change_does_not_share_a_load_begun_before_it(disk_config, disk):
    async with CacheManager(disk_config() if disk else {"disk_cache_enabled": False}) as cache:
        loading, release = asyncio.Event(), asyncio.Event()

        async def old_loader():
            loading.set()
            await release.wait()
            return "loaded before the change"

        first = asyncio.ensure_future(cache.get_or_set("market:BTC", old_loader))
        await loading.wait()
        await cache.invalidate_by_pattern("market:.*")
        second = asyncio.ensure_future(cache.get_or_set("market:BTC", lambda: "loaded after the change"))
        release.set()
        assert await first == "loaded before the change"  # concurrent with the change: either is fine
        assert await second == "loaded after the change"


async def test_a_process_writing_past_the_logs_bound_keeps_its_memory_tier(cache_dir):
    async with CacheManager(config(cache_dir, sync_interval=3600, memory_max_size=10_000)) as cache:
        total = LOG_KEEP_ROWS + 1000
        for start in range(0, total, 500):
            await asyncio.gather(*(cache.set(f"k{i}", i) for i in range(start, min(start + 500, total))))
        cache._next_sync = -math.inf  # the check finds only its own rows, trimmed: no gap
        assert await cache.get("k0") == 0
        assert (await cache.get_stats())["memory_size"] == total

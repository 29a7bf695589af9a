"""CacheManager behaviour as the guide and DESIGN.md promise it, on each store in turn (a real
SQLite file, a real PostgreSQL database: the `disk_config` fixture); what only SQLite has (its
file, its SQL dialect) on SQLite alone."""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from pg_server import disk_rows
from sqlcache import CacheLevel, CacheManager, InvalidationStrategy


@pytest.fixture
async def cm(disk_config, clock):
    manager = CacheManager(disk_config(), clock=clock)
    yield manager
    await manager.close()


async def reopen(manager: CacheManager) -> CacheManager:
    """Close a manager and open a new one on the same disk (a process restart)."""
    await manager.close()
    return CacheManager(manager.config, clock=manager.clock)


# ---------------------------------------------------------------- the guide's examples


async def test_guide_tiered_storage_examples(cm):
    key, value, ttl = "market_data:BTC:1m", {"close": [1.5, 2.5]}, 300
    await cm.set(key, value, ttl, CacheLevel.MEMORY)
    assert await cm.get(key) == value
    await cm.set(key, value, ttl, CacheLevel.DISK)
    assert await cm.get(key) == value
    await cm.set(key, value, ttl, CacheLevel.ALL)
    assert await cm.get(key) == value


async def test_guide_pattern_and_tag_examples(cm):
    for symbol in ("BTC", "ETH"):
        for frame in ("1m", "5m"):
            await cm.set(f"market_data:{symbol}:{frame}", frame, 300, tags=["market_data", symbol])
    assert await cm.invalidate_by_pattern("market_data:BTC:.*") == 2
    assert await cm.get("market_data:BTC:1m") is None
    assert await cm.get("market_data:ETH:1m") == "1m"
    assert await cm.invalidate_by_tag("ETH") == 2
    assert await cm.get("market_data:ETH:5m") is None


async def test_guide_strategy_config_accepts_enum_value_or_member(cache_dir):
    for strategy in (InvalidationStrategy.LRU.value, InvalidationStrategy.LFU, "fifo", "ttl"):
        manager = CacheManager({"invalidation_strategy": strategy, "disk_cache_dir": str(cache_dir)})
        assert manager.config.invalidation_strategy in InvalidationStrategy


async def test_default_config_matches_the_guide():
    config = CacheManager().config
    assert (config.memory_max_size, config.disk_max_size, config.default_ttl) == (10000, 100 * 1024 * 1024, 300)
    assert config.disk_cache_enabled and str(config.disk_cache_dir) == "cache"
    assert config.invalidation_strategy is InvalidationStrategy.LRU


# ---------------------------------------------------------------- config errors


@pytest.mark.parametrize(
    "config, name",
    [
        ({"memory_max_sise": 10}, "memory_max_sise"),
        ({"memory_max_size": -1}, "memory_max_size"),
        ({"disk_max_size": "big"}, "disk_max_size"),
        ({"default_ttl": -5}, "default_ttl"),
        ({"disk_cache_enabled": "yes"}, "disk_cache_enabled"),
        ({"invalidation_strategy": "random"}, "invalidation_strategy"),
        ({"sync_interval": 0}, "sync_interval"),
    ],
)
def test_bad_config_raises_value_error_naming_the_key(config, name):
    with pytest.raises(ValueError, match=name):
        CacheManager(config)


# ---------------------------------------------------------------- TTL through the clock


async def test_entries_expire_by_the_injected_clock_in_both_tiers(cm, clock):
    await cm.set("memory", 1, 10, CacheLevel.MEMORY)
    await cm.set("disk", 2, 10, CacheLevel.DISK)
    await cm.set("default", 3)  # default_ttl 300
    clock.advance(9.9)
    assert (await cm.get("memory"), await cm.get("disk")) == (1, 2)
    clock.advance(0.2)
    assert (await cm.get("memory"), await cm.get("disk"), await cm.get("default")) == (None, None, 3)
    clock.advance(300)
    assert await cm.get("default") is None
    assert (await cm.get_stats())["expirations"] >= 3


async def test_ttl_zero_means_no_expiry(cm, clock):
    await cm.set("forever", "x", 0)
    clock.advance(10 * 365 * 86400)
    assert await cm.get("forever") == "x"
    assert await disk_rows(cm, "SELECT expires_at FROM cache_entries WHERE key = 'forever'") == [(None,)]


async def test_disk_hit_is_promoted_with_its_remaining_ttl(cm, clock):
    await cm.set("k", "v", 100, CacheLevel.DISK)
    assert (await cm.get_stats())["memory_size"] == 0
    clock.advance(60)
    assert await cm.get("k") == "v"
    stats = await cm.get_stats()
    assert stats["memory_size"] == 1 and stats["disk_hits"] == 1
    assert await cm.get("k") == "v"
    assert (await cm.get_stats())["memory_hits"] == 1
    clock.advance(41)
    assert await cm.get("k") is None


# ---------------------------------------------------------------- levels: the latest set wins


async def test_disk_set_drops_the_older_memory_copy(cm):
    await cm.set("k", "old", level=CacheLevel.MEMORY)
    await cm.set("k", "new", level=CacheLevel.DISK)
    assert await cm.get("k") == "new"


async def test_memory_set_drops_the_older_disk_copy_even_after_restart(cm):
    await cm.set("k", "old", level=CacheLevel.DISK)
    await cm.set("k", "new", level=CacheLevel.MEMORY)
    assert await cm.get("k") == "new"
    cm = await reopen(cm)
    try:
        assert await cm.get("k") is None  # the old disk value never comes back
    finally:
        await cm.close()


async def test_concurrent_sets_of_one_key_leave_the_last_submitted_value(cm):
    levels = [CacheLevel.ALL, CacheLevel.MEMORY, CacheLevel.DISK] * 10
    await asyncio.gather(*(cm.set("k", i, level=level) for i, level in enumerate(levels)))
    assert await cm.get("k") == len(levels) - 1


async def test_set_replaces_tags(cm):
    await cm.set("k", 1, tags=["a", "b"])
    await cm.set("k", 2, tags=["c"])
    assert await cm.invalidate_by_tag("a") == 0
    assert await cm.get("k") == 2
    assert await disk_rows(cm, "SELECT tag FROM cache_tags ORDER BY tag") == [("c",)]
    assert await cm.invalidate_by_tag("c") == 1


async def test_committed_sets_survive_a_restart(cm):
    await cm.set("a", {"x": 1}, 0, CacheLevel.ALL, tags=["t"])
    await cm.set("b", b"\x00\x01", 0, CacheLevel.DISK)
    await cm.set("c", "memory only", 0, CacheLevel.MEMORY)
    cm = await reopen(cm)
    try:
        assert await cm.get("a") == {"x": 1}
        assert await cm.get("b") == b"\x00\x01"
        assert await cm.get("c") is None
        assert await cm.invalidate_by_tag("t") == 1
    finally:
        await cm.close()


async def test_async_with_opens_and_closes(cache_dir):
    async with CacheManager({"disk_cache_dir": str(cache_dir)}) as manager:
        assert manager.config.db_path.exists()
        await manager.set("k", 1)
    async with CacheManager({"disk_cache_dir": str(cache_dir)}) as manager:
        assert await manager.get("k") == 1


# ---------------------------------------------------------------- delete, clear, counts


async def test_delete_reports_whether_a_live_value_was_removed(cm, clock):
    await cm.set("k", 1)
    assert await cm.delete("k") is True
    assert await cm.delete("k") is False
    await cm.set("short", 1, 5)
    clock.advance(6)
    assert await cm.delete("short") is False


async def test_invalidation_counts_each_live_key_once_across_tiers(cm, clock):
    await cm.set("a:1", 1, tags=["t"])  # memory and disk
    await cm.set("a:2", 2, level=CacheLevel.MEMORY, tags=["t"])
    await cm.set("a:3", 3, level=CacheLevel.DISK, tags=["t"])
    await cm.set("a:4", 4, 5, tags=["t"])  # will have expired
    clock.advance(10)
    assert await cm.invalidate_by_tag("t") == 3
    for i in range(1, 4):
        await cm.set(f"a:{i}", i)
    await cm.set("b:1", 1)
    assert await cm.invalidate_by_pattern("a:") == 3
    assert await cm.get("b:1") == 1


async def test_clear_empties_both_tiers(cm):
    await cm.set("a", 1)
    await cm.set("b", 2, level=CacheLevel.DISK)
    await cm.clear()
    assert (await cm.get("a"), await cm.get("b")) == (None, None)
    stats = await cm.get_stats()
    assert stats["memory_size"] == 0 and stats["disk_size"] == 0 and stats["disk_entries"] == 0


async def test_pattern_is_anchored_at_the_start_like_re_match(cm):
    await cm.set("market_data:BTC:1m", 1)
    await cm.set("old:market_data:BTC:1m", 2)
    assert await cm.invalidate_by_pattern("market_data:BTC") == 1
    assert await cm.get("old:market_data:BTC:1m") == 2
    assert await cm.invalidate_by_pattern(".*BTC") == 1  # no literal prefix: still correct


# ---------------------------------------------------------------- bad input changes nothing


async def test_non_str_key_is_a_type_error(cm):
    for call in (cm.get(1), cm.set(b"k", 1), cm.delete(None), cm.get_or_set(1.5, lambda: 1)):
        with pytest.raises(TypeError):
            await call


async def test_bad_arguments_raise_before_anything_changes(cm):
    await cm.set("k", "original", tags=["t"])
    with pytest.raises(ValueError, match="ttl"):
        await cm.set("k", "new", -1)
    with pytest.raises(TypeError, match="JSON"):
        await cm.set("k", {1, 2, 3})
    with pytest.raises(TypeError, match="tags"):
        await cm.set("k", "new", tags="t")
    with pytest.raises(ValueError, match="level"):
        await cm.set("k", "new", level="everywhere")
    with pytest.raises(ValueError, match="pattern"):
        await cm.invalidate_by_pattern("market_data:(")
    assert await cm.get("k") == "original"
    assert await disk_rows(cm, "SELECT count(*) FROM entries") == [(1,)]


async def test_value_larger_than_the_disk_tier_is_refused(disk_config):
    async with CacheManager({**disk_config(), "disk_max_size": 1000}) as manager:
        await manager.set("k", "small")
        with pytest.raises(ValueError, match="disk_max_size"):
            await manager.set("k", "x" * 2000)
        assert await manager.get("k") == "small"


# ---------------------------------------------------------------- values


async def test_json_round_trip_rules(cm):
    value = {"tuple": (1, 2), "nan": math.nan, "inf": -math.inf, "none": None, "text": "ü€"}
    await cm.set("k", value, level=CacheLevel.DISK)
    got = await cm.get("k")
    assert got["tuple"] == [1, 2]  # JSON has no tuples
    assert math.isnan(got["nan"]) and got["inf"] == -math.inf and got["none"] is None
    assert got["text"] == "ü€"


async def test_memory_tier_hands_back_the_stored_object(cm):
    value = {"candles": [1, 2, 3]}
    await cm.set("k", value)
    assert await cm.get("k") is value


async def test_values_are_readable_json_in_sql(cache_dir):  # SQLite's json_extract (test_postgres: PostgreSQL's)
    async with CacheManager({"disk_cache_dir": str(cache_dir)}) as cm:
        await cm.set("market_data:BTC:1m", {"close": 42.5, "candles": [1, 2]}, tags=["BTC"])
        await cm.set("raw", b"\xff\x00")
    rows = await disk_rows(
        cm,
        "SELECT key, json_extract(value_json, '$.close'), codec, tags FROM cache_entries ORDER BY key",
    )
    assert rows == [("market_data:BTC:1m", 42.5, "json", '["BTC"]'), ("raw", None, "bytes", "[]")]


async def test_pickle_is_opt_in(disk_config):
    async with CacheManager({**disk_config(), "allow_pickle": True}) as manager:
        await manager.set("k", {1, 2, 3}, level=CacheLevel.DISK)
        assert await manager.get("k") == {1, 2, 3}
    async with CacheManager(disk_config()) as manager:
        # A process that did not opt in never unpickles what it finds in the file.
        assert await manager.get("k") is None


# ---------------------------------------------------------------- get_or_set


async def test_get_or_set_shares_one_loader_call_among_concurrent_callers(cm):
    calls = 0
    release = asyncio.Event()

    async def loader():
        nonlocal calls
        calls += 1
        await release.wait()
        return {"price": 1}

    waiters = [asyncio.ensure_future(cm.get_or_set("k", loader, tags=["t"])) for _ in range(100)]
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*waiters) == [{"price": 1}] * 100
    assert calls == 1
    assert await cm.get_or_set("k", loader) == {"price": 1} and calls == 1
    assert await cm.invalidate_by_tag("t") == 1


async def test_get_or_set_survives_the_first_caller_being_cancelled(cm):
    release = asyncio.Event()

    async def loader():
        await release.wait()
        return "loaded"

    first = asyncio.ensure_future(cm.get_or_set("k", loader))
    second = asyncio.ensure_future(cm.get_or_set("k", loader))
    await asyncio.sleep(0.01)
    first.cancel()
    release.set()
    assert await second == "loaded"
    assert first.cancelled()
    assert await cm.get("k") == "loaded"


async def test_get_or_set_does_not_cache_a_failing_loader(cm):
    async def failing():
        raise RuntimeError("API down")

    results = await asyncio.gather(*(cm.get_or_set("k", failing) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert await cm.get_or_set("k", lambda: "sync loader works too") == "sync loader works too"


async def test_get_or_set_keeps_a_stored_none(cm):
    await cm.set("k", None)
    assert await cm.get_or_set("k", lambda: "loaded") is None


# ---------------------------------------------------------------- stats


async def test_stats_rates_are_fractions_and_zero_before_any_lookup(cm):
    stats = await cm.get_stats()
    assert stats["memory_hit_rate"] == stats["disk_hit_rate"] == stats["hit_rate"] == 0
    await cm.set("m", 1)
    await cm.set("d", 2, level=CacheLevel.DISK)
    await cm.get("m")  # memory hit
    await cm.get("d")  # disk hit
    await cm.get("nope")  # miss in both
    stats = await cm.get_stats()
    assert (stats["memory_hits"], stats["disk_hits"], stats["misses"], stats["sets"]) == (1, 1, 1, 2)
    assert stats["memory_hit_rate"] == pytest.approx(1 / 3)
    assert stats["disk_hit_rate"] == pytest.approx(1 / 2)
    assert stats["disk_size"] == sum(size for (size,) in await disk_rows(cm, "SELECT size FROM entries"))


async def test_memory_only_cache_works_without_a_file(tmp_path, clock):
    cache_dir = tmp_path / "never"
    async with CacheManager({"disk_cache_enabled": False, "disk_cache_dir": str(cache_dir)}, clock=clock) as manager:
        await manager.set("k", 1, 10, tags=["t"])
        assert await manager.get("k") == 1
        assert await manager.invalidate_by_tag("t") == 1
        stats = await manager.get_stats()
        assert stats["disk_enabled"] is False and stats["disk_size"] == 0
    assert not cache_dir.exists()


async def test_views_give_iso_times_and_access_counts(cm, clock):
    await cm.set("k", {"v": 1}, 60, level=CacheLevel.DISK)
    for _ in range(3):
        await cm.get("k")
    await cm.close()  # flushes the read statistics
    [(created, expires, accessed, count, value)] = await disk_rows(
        cm, "SELECT created_at, expires_at, accessed_at, access_count, value_json FROM cache_entries"
    )
    assert created == "2023-11-14T22:13:20.000Z" and expires == "2023-11-14T22:14:20.000Z"
    assert accessed == created and count == 3 and json.loads(value) == {"v": 1}


# ---------------------------------------------------------------- concurrent disk reads


async def test_concurrent_disk_reads_each_get_their_own_value(disk_config):
    async with CacheManager({**disk_config(), "memory_max_size": 0}) as manager:
        for i in range(50):
            await manager.set(f"k{i}", {"i": i}, level=CacheLevel.DISK)
        keys = [f"k{i % 60}" for i in range(200)]  # repeats, and ten keys that do not exist
        got = await asyncio.gather(*(manager.get(key) for key in keys))
        assert got == [{"i": i % 60} if i % 60 < 50 else None for i in range(200)]
        assert (await manager.get_stats())["disk_hits"] == sum(1 for i in range(200) if i % 60 < 50)


async def test_a_cancelled_reader_does_not_disturb_the_others(disk_config):
    async with CacheManager({**disk_config(), "memory_max_size": 0}) as manager:
        await manager.set("k", "v", level=CacheLevel.DISK)
        readers = [asyncio.ensure_future(manager.get("k")) for _ in range(10)]
        await asyncio.sleep(0)
        readers[0].cancel()
        readers[5].cancel()
        results = await asyncio.gather(*readers, return_exceptions=True)
        assert [r for i, r in enumerate(results) if i not in (0, 5)] == ["v"] * 8
        assert await manager.get("k") == "v"


async def test_a_read_overlapping_a_write_is_not_promoted_stale(disk_config):
    async with CacheManager(disk_config()) as manager:
        await manager.set("k", "old", level=CacheLevel.DISK)
        reads = [asyncio.ensure_future(manager.get("k")) for _ in range(5)]
        await manager.set("k", "new", level=CacheLevel.DISK)
        await asyncio.gather(*reads)
        assert await manager.get("k") == "new"
        await manager.invalidate_by_tag("none")
        assert await manager.get("k") == "new"


async def test_get_or_set_callers_arriving_together_share_the_disk_lookup_and_a_failure(disk_config):
    async with CacheManager({**disk_config(), "memory_max_size": 0}) as manager:
        calls = 0

        def failing_at_once():
            nonlocal calls
            calls += 1
            raise RuntimeError("API down")

        results = await asyncio.gather(*(manager.get_or_set("k", failing_at_once) for _ in range(20)), return_exceptions=True)
        assert calls == 1 and all(isinstance(result, RuntimeError) for result in results)


async def test_a_set_whose_caller_is_cancelled_still_lands_in_both_tiers_together(disk_config):
    async with CacheManager(disk_config()) as manager:
        await manager.set("k", "old")
        in_flight = asyncio.ensure_future(manager.invalidate_by_tag("none"))  # a batch in the worker
        await asyncio.sleep(0)
        cancelled = asyncio.ensure_future(manager.set("k", "new"))
        await asyncio.sleep(0)  # queued behind it for the next commit
        cancelled.cancel()
        await manager.set("other", 1)  # commits after it
        assert cancelled.cancelled() and await in_flight == 0
        assert await manager.get("k") == "new"  # memory agrees with the committed disk row
    async with CacheManager(disk_config()) as manager:
        assert await manager.get("k") == "new"

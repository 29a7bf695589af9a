"""Eviction in both tiers: expired entries first, then each strategy's victim, only what is needed;
the disk tier's on each store in turn (the `disk_config` fixture)."""

from __future__ import annotations

import sqlite3

import pytest

from pg_server import disk_rows
from sqlcache import CacheLevel, CacheManager, InvalidationStrategy

VALUE = "x" * 100  # stored as 102 bytes of JSON; with a 3-byte key, 105 bytes an entry


async def disk_keys(manager: CacheManager) -> set[str]:
    return {key for (key,) in await disk_rows(manager, "SELECT key FROM entries")}


async def filled(disk: dict, clock, strategy: str, **config) -> CacheManager:
    """A disk tier holding k00..k09 (written a second apart) with room for exactly ten."""
    manager = CacheManager(
        {**disk, "disk_max_size": 10 * 105, "invalidation_strategy": strategy, **config},
        clock=clock,
    )
    for i in range(10):
        await manager.set(f"k{i:02d}", VALUE, 1000 + i, CacheLevel.DISK)
        clock.advance(1)
    assert len(await disk_keys(manager)) == 10
    return manager


async def test_lru_evicts_the_least_recently_read(disk_config, clock):
    manager = await filled(disk_config(), clock, "lru")
    for i in range(10):
        if i != 3:
            await manager.get(f"k{i:02d}")
            clock.advance(1)
    await manager.set("new", VALUE, level=CacheLevel.DISK)
    assert await disk_keys(manager) == {f"k{i:02d}" for i in range(10) if i != 3} | {"new"}
    assert (await manager.get_stats())["disk_evictions"] == 1
    await manager.close()


async def test_reads_served_from_memory_keep_an_entry_hot_on_disk(disk_config, clock):
    manager = await filled(disk_config(), clock, "lru")
    await manager.get("k00")  # promoted to memory
    for _ in range(1000):
        clock.advance(0.01)
        await manager.get("k00")  # memory hits only
    assert (await manager.get_stats())["memory_hits"] == 1000
    await manager.set("new", VALUE, level=CacheLevel.DISK)
    keys = await disk_keys(manager)
    assert "k00" in keys and "k01" not in keys
    await manager.close()


async def test_lfu_evicts_the_least_often_read(disk_config, clock):
    manager = await filled(disk_config(), clock, "lfu", memory_max_size=0)
    for i in range(10):
        for _ in range(1 if i == 6 else 3):
            await manager.get(f"k{i:02d}")
    await manager.set("new", VALUE, level=CacheLevel.DISK)
    assert "k06" not in await disk_keys(manager) and "new" in await disk_keys(manager)
    await manager.close()


async def test_fifo_evicts_the_oldest_written_and_a_rewrite_is_new(disk_config, clock):
    manager = await filled(disk_config(), clock, "fifo")
    await manager.set("k00", VALUE, level=CacheLevel.DISK)  # rewritten: now the newest
    for i in range(10):
        await manager.get(f"k{i:02d}")  # reads do not matter to FIFO
    await manager.set("new", VALUE, level=CacheLevel.DISK)
    assert "k01" not in await disk_keys(manager) and "k00" in await disk_keys(manager)
    await manager.close()


async def test_ttl_strategy_evicts_the_soonest_to_expire(disk_config, clock):
    manager = await filled(disk_config(), clock, "ttl")
    await manager.set("k05", VALUE, 1, CacheLevel.DISK)  # now the soonest to expire
    await manager.set("new", VALUE, level=CacheLevel.DISK)
    assert "k05" not in await disk_keys(manager) and "k00" in await disk_keys(manager)
    await manager.close()


@pytest.mark.parametrize("strategy", ["lru", "lfu"])
async def test_a_rewrite_is_a_use_even_beyond_the_first_candidates(disk_config, clock, strategy):
    """A set leaves the stored read statistics alone (migration 0006); eviction must still rank
    a rewritten entry by its write, also when the rewritten entries fill a whole batch of
    candidates (the victim query reads 33 for one set) and the victim lies past them."""
    count = 40
    manager = CacheManager(
        {**disk_config(), "disk_max_size": count * 105, "invalidation_strategy": strategy, "memory_max_size": 0},
        clock=clock,
    )
    for i in range(count):
        await manager.set(f"k{i:02d}", VALUE, level=CacheLevel.DISK)
        clock.advance(1)
    for i in range(35):  # rewritten, never read: k35..k39 are now the least recently used
        await manager.set(f"k{i:02d}", VALUE, level=CacheLevel.DISK)
        clock.advance(1)
    await manager.set("new", VALUE, level=CacheLevel.DISK)
    assert await disk_keys(manager) == {f"k{i:02d}" for i in range(count) if i != 35} | {"new"}
    await manager.set("new2", VALUE, level=CacheLevel.DISK)
    assert "k36" not in await disk_keys(manager) and "k00" in await disk_keys(manager)
    await manager.close()


@pytest.mark.parametrize("strategy", ["lru", "lfu", "fifo", "ttl"])
async def test_expired_entries_go_before_any_strategy_victim(disk_config, clock, strategy):
    manager = await filled(disk_config(), clock, strategy)
    await manager.set("k09", VALUE, 0.5, CacheLevel.DISK)  # the newest, most read, latest to expire...
    for _ in range(5):
        await manager.get("k09")
    clock.advance(1)  # ...but expired
    await manager.set("new", VALUE, level=CacheLevel.DISK)
    assert await disk_keys(manager) == {f"k{i:02d}" for i in range(9)} | {"new"}
    await manager.close()


@pytest.mark.parametrize("strategy", ["lru", "lfu", "fifo", "ttl"])
async def test_the_entry_being_written_is_never_its_own_victim(disk_config, clock, strategy):
    manager = await filled(disk_config(), clock, strategy)
    await manager.set("new", VALUE, 0.001, CacheLevel.DISK)  # soonest expiry, zero reads, newest
    assert "new" in await disk_keys(manager)
    await manager.close()


async def test_eviction_frees_only_what_is_needed(disk_config, clock):
    manager = await filled(disk_config(), clock, "lru")
    await manager.set("big", "y" * 300, level=CacheLevel.DISK)  # needs room of ~3 entries
    keys = await disk_keys(manager)
    assert "big" in keys and len(keys) == 8  # 7 old ones kept, 3 evicted
    assert {"k00", "k01", "k02"}.isdisjoint(keys)
    stats = await manager.get_stats()
    assert stats["disk_size"] <= manager.config.disk_max_size
    await manager.close()


async def test_expired_entries_make_room_before_any_victim_and_a_huge_entry_takes_it_all(disk_config, clock):
    manager = await filled(disk_config(), clock, "lru")
    clock.advance(995)  # k00 (expiring at +1000), k01 (+1002), k02 (+1004) are past their ttl
    await manager.set("big", "y" * 300, level=CacheLevel.DISK)  # needs the room of ~3 entries
    keys = await disk_keys(manager)
    assert "big" in keys and {"k00", "k01", "k02"}.isdisjoint(keys)
    stats = await manager.get_stats()
    assert stats["disk_evictions"] == 0 and stats["disk_size"] <= manager.config.disk_max_size
    await manager.set("huge", "z" * (10 * 105 - 10), level=CacheLevel.DISK)
    assert await disk_keys(manager) == {"huge"}  # everything else went, never the entry being written
    await manager.close()


@pytest.mark.parametrize("strategy", ["lru", "lfu", "fifo", "ttl"])
async def test_memory_tier_is_bounded_and_evicts_expired_first(cache_dir, clock, strategy):
    manager = CacheManager(
        {"disk_cache_dir": str(cache_dir), "memory_max_size": 5, "invalidation_strategy": strategy}, clock=clock
    )
    for i in range(5):
        await manager.set(f"m{i}", i, 100 + i, CacheLevel.MEMORY)
        clock.advance(1)
    await manager.set("m4", 4, 1, CacheLevel.MEMORY)
    clock.advance(2)  # m4 expired
    await manager.set("m5", 5, 100, CacheLevel.MEMORY)
    stats = await manager.get_stats()
    assert stats["memory_size"] == 5
    assert [await manager.get(f"m{i}") for i in range(6)] == [0, 1, 2, 3, None, 5]
    await manager.set("m6", 6, 100, CacheLevel.MEMORY)
    assert (await manager.get_stats())["memory_size"] == 5
    assert (await manager.get_stats())["memory_evictions"] == 1
    await manager.close()


async def test_memory_lru_victim_is_the_least_recently_read(cache_dir, clock):
    manager = CacheManager({"disk_cache_dir": str(cache_dir), "memory_max_size": 3}, clock=clock)
    for key in "abc":
        await manager.set(key, key, level=CacheLevel.MEMORY)
    await manager.get("a")
    await manager.set("d", "d", level=CacheLevel.MEMORY)
    assert [await manager.get(k) for k in "abcd"] == ["a", None, "c", "d"]
    await manager.close()


async def test_evicted_memory_entry_leaves_the_tag_index(cache_dir, clock):
    manager = CacheManager({"disk_cache_dir": str(cache_dir), "memory_max_size": 1}, clock=clock)
    await manager.set("a", 1, level=CacheLevel.MEMORY, tags=["t"])
    await manager.set("b", 2, level=CacheLevel.MEMORY, tags=["u"])  # evicts a
    assert await manager.invalidate_by_tag("t") == 0
    assert await manager.invalidate_by_tag("u") == 1
    await manager.close()


@pytest.mark.parametrize("strategy", ["lru", "lfu", "fifo", "ttl"])
async def test_each_strategy_evicts_by_an_index_its_store_made(tmp_path, strategy):
    from sqlcache._plan import VICTIMS
    from sqlcache._sqlite import STATEMENTS

    directory = tmp_path / strategy
    async with CacheManager({"disk_cache_dir": str(directory), "invalidation_strategy": strategy}):
        pass
    with sqlite3.connect(directory / "sqlcache.db") as db:
        for name in VICTIMS[InvalidationStrategy(strategy)]:
            plan = " ".join(row[-1] for row in db.execute(f"EXPLAIN QUERY PLAN {STATEMENTS[name]}", (10,)))
            assert "INDEX" in plan and "TEMP B-TREE" not in plan, (name, plan)
        indexes = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    unused = {"lru": {"access_by_frequency", "entries_by_creation"}, "lfu": {"access_by_recency", "entries_by_creation"},
              "fifo": {"access_by_recency", "access_by_frequency"}, "ttl": {"access_by_recency", "access_by_frequency"}}
    assert not indexes & unused[strategy]  # no set pays for an order nobody evicts by

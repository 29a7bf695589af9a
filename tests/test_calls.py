"""The batch and lifetime calls (get_many, set_many, delete_many, exists, ttl, touch), stale-while-
revalidate (`get_or_set(..., stale_ttl=)`) and `ttl_jitter`, on each store in turn (a real
SQLite file, a real PostgreSQL database: the `disk_config` fixture)."""

from __future__ import annotations

import asyncio
import logging
import math

import pytest

from pg_server import disk_rows, heard
from sqlcache import CacheLevel, CacheManager, ResourcePool
from sqlcache._postgres import PostgresStore
from sqlcache._sqlite import SQLiteStore

KEYS = [f"market_data:{symbol}:1m" for symbol in ("BTC", "ETH", "SOL")]


@pytest.fixture
async def cm(disk_config, clock):
    manager = CacheManager(disk_config(), clock=clock)
    yield manager
    await manager.close()


@pytest.fixture
async def other(cm, disk_config):
    """A second manager on the same disk (another process, as far as the cache can tell), which
    looks for changes on every read (on PostgreSQL, once it heard of them: see `heard`)."""
    manager = CacheManager({**disk_config(), "sync_interval": 1e-9}, clock=cm.clock)
    yield manager
    await manager.close()


class Recorder:
    """Records the arguments of every call of the store's step that every read (`"read"`: keys)
    or committed batch (`"write"`: ops, reads, now) runs through: on SQLite the blocking
    `_read_rows` and `_run_batch` (on the loop's connection or in the worker), on PostgreSQL
    `read` and `_write_batch`; the connection each is given is left out."""

    STEPS = {
        SQLiteStore: {"read": ("_read_rows", 1), "write": ("_run_batch", 1)},
        PostgresStore: {"read": ("read", 0), "write": ("_write_batch", 1)},
    }

    def __init__(self, manager: CacheManager, step: str):
        self.calls: list[tuple] = []
        store = manager._store
        name, skip = self.STEPS[type(store)][step]
        original = getattr(store, name)

        def recorded(*args):
            self.calls.append(args[skip:])
            return original(*args)

        setattr(store, name, recorded)


async def wait_until(condition, seconds: float = 10.0) -> None:
    """Let the loop run (background refreshes, commits: on PostgreSQL, round trips) until
    `condition()` holds."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition never held")
        await asyncio.sleep(0)


# ---------------------------------------------------------------- get_many


async def test_get_many_returns_the_live_values_in_the_order_given(cm, clock):
    await cm.set("a", 1, ttl=10)
    await cm.set("b", None)  # a stored None is a value
    await cm.set("c", 3, ttl=100, level=CacheLevel.DISK)
    clock.advance(20)  # "a" expired
    assert await cm.get_many(["c", "missing", "a", "b", "c"]) == {"c": 3, "b": None}
    assert list(await cm.get_many(["c", "b"])) == ["c", "b"]
    assert await cm.get_many([]) == {}


async def test_get_many_reads_the_memory_misses_in_one_store_read_and_promotes_them(cm):
    await cm.set("mem", "m", level=CacheLevel.MEMORY)
    await cm.set_many({"d1": 1, "d2": 2}, level=CacheLevel.DISK)
    reads = Recorder(cm, "read")
    assert await cm.get_many(["mem", "d1", "d2", "nothing"]) == {"mem": "m", "d1": 1, "d2": 2}
    assert [list(keys) for (keys,) in reads.calls] == [["d1", "d2", "nothing"]]
    assert await cm.get_many(["d1", "d2"]) == {"d1": 1, "d2": 2}
    assert len(reads.calls) == 1  # promoted: the second call is all memory hits


async def test_get_many_counts_each_key_as_one_get(cm):
    await cm.set("mem", 1)
    await cm.set("disk", 2, level=CacheLevel.DISK)
    await cm.get_many(["mem", "disk", "nothing", "mem"])
    stats = await cm.get_stats()
    assert (stats["gets"], stats["memory_hits"], stats["disk_hits"], stats["misses"]) == (3, 1, 1, 1)


async def test_get_many_does_not_promote_a_value_deleted_while_it_was_read(cm):
    keys = [f"k{n}" for n in range(100)]  # more than the loop answers itself: read in the worker
    await cm.set_many(dict.fromkeys(keys, "old"), level=CacheLevel.DISK)
    reading = asyncio.ensure_future(cm.get_many(keys))
    await asyncio.sleep(0)  # the read is in flight in the worker thread
    assert await cm.delete("k0") is True
    await reading
    assert await cm.get("k0") is None


async def test_get_many_sees_another_process_s_changes(cm, other):
    await cm.set_many({"a": 1, "b": 2})
    assert await other.get_many(["a", "b"]) == {"a": 1, "b": 2}  # now in other's memory
    await cm.set("a", 10)
    await cm.delete("b")
    await heard(other)
    assert await other.get_many(["a", "b"]) == {"a": 10}


async def test_get_many_refuses_bad_keys_before_reading(cm):
    with pytest.raises(TypeError):
        await cm.get_many("abc")
    with pytest.raises(TypeError):
        await cm.get_many(["a", 1])
    assert (await cm.get_stats())["gets"] == 0


# ---------------------------------------------------------------- set_many


async def test_set_many_stores_every_value_in_one_write_op(cm, clock):
    await cm.open()
    writes = Recorder(cm, "write")
    await cm.set_many({key: {"close": n} for n, key in enumerate(KEYS)}, ttl=60, tags=["market_data"])
    [(ops, _reads, _now)] = writes.calls
    assert [type(op).__name__ for op in ops] == ["PutMany"]
    assert await cm.get_many(KEYS) == {key: {"close": n} for n, key in enumerate(KEYS)}
    assert (await disk_rows(cm, "SELECT count(*) FROM entries"))[0][0] == 3
    assert await cm.ttl(KEYS[0]) == 60
    assert (await cm.get_stats())["sets"] == 3
    assert await cm.invalidate_by_tag("market_data") == 3


async def test_set_many_changes_nothing_when_one_value_is_bad(cm):
    await cm.set("a", "old")
    with pytest.raises(TypeError):
        await cm.set_many({"a": "new", "b": object()})
    with pytest.raises(ValueError, match="disk_max_size"):
        await cm.set_many({"a": "new", "big": "x" * (cm.config.disk_max_size + 1)})
    with pytest.raises(TypeError):
        await cm.set_many({"a": "new", 2: "two"})
    with pytest.raises(TypeError):
        await cm.set_many([("a", "new")])
    assert await cm.get_many(["a", "b", "big"]) == {"a": "old"}
    assert await disk_rows(cm, "SELECT key, value_json FROM cache_entries") == [("a", '"old"')]


async def test_set_many_refuses_values_that_together_exceed_disk_max_size(disk_config, clock):
    async with CacheManager({**disk_config(), "disk_max_size": 1000}, clock=clock) as cm:
        with pytest.raises(ValueError, match="together"):
            await cm.set_many({f"k{n}": "x" * 300 for n in range(4)})
        assert await cm.get_many([f"k{n}" for n in range(4)]) == {}


async def test_set_many_levels_replace_what_every_tier_held(cm):
    await cm.set_many({"a": "disk-old", "b": "disk-old"}, level=CacheLevel.DISK)
    await cm.set_many({"a": "memory", "b": "memory"}, level=CacheLevel.MEMORY)
    assert (await disk_rows(cm, "SELECT count(*) FROM entries"))[0][0] == 0  # the older disk copies went
    await cm.set_many({"a": "disk", "b": "disk"}, level=CacheLevel.DISK)
    assert (await cm.get_stats())["memory_size"] == 0  # the older memory copies went
    assert await cm.get_many(["a", "b"]) == {"a": "disk", "b": "disk"}


async def test_set_many_reaches_another_process(cm, other):
    await cm.set_many({"a": 1, "b": 2})
    assert await other.get_many(["a", "b"]) == {"a": 1, "b": 2}
    await cm.set_many({"a": 10, "b": 20})
    await heard(other)
    assert await other.get_many(["a", "b"]) == {"a": 10, "b": 20}


async def test_set_many_without_a_disk_tier(clock):
    async with CacheManager({"disk_cache_enabled": False}, clock=clock) as cm:
        await cm.set_many({"a": 1, "b": 2}, ttl=5)
        assert await cm.get_many(["a", "b"]) == {"a": 1, "b": 2}
        assert await cm.delete_many(["a", "b", "c"]) == 2
        assert await cm.get_many(["a", "b"]) == {}


# ---------------------------------------------------------------- delete_many


async def test_delete_many_counts_the_live_keys_removed_in_one_op(cm, clock):
    await cm.set("memory", 1, level=CacheLevel.MEMORY)
    await cm.set("disk", 2, level=CacheLevel.DISK)
    await cm.set("both", 3)
    await cm.set("expired", 4, ttl=1)
    clock.advance(2)
    writes = Recorder(cm, "write")
    assert await cm.delete_many(["memory", "disk", "both", "expired", "missing", "both"]) == 3
    [(ops, _reads, _now)] = writes.calls
    assert [(type(op).__name__, op.keys) for op in ops] == [("Remove", ("memory", "disk", "both", "expired", "missing"))]
    assert await cm.get_many(["memory", "disk", "both"]) == {}
    assert (await disk_rows(cm, "SELECT count(*) FROM entries"))[0][0] == 0
    assert await cm.delete_many([]) == 0


async def test_delete_many_reaches_another_process(cm, other):
    await cm.set_many({"a": 1, "b": 2, "c": 3})
    assert len(await other.get_many(["a", "b", "c"])) == 3
    assert await cm.delete_many(["a", "b"]) == 2
    await heard(other)
    assert await other.get_many(["a", "b", "c"]) == {"c": 3}


# ---------------------------------------------------------------- exists and ttl


async def test_exists_in_either_tier_counts_no_get_and_promotes_nothing(cm, clock):
    await cm.set("memory", 1, level=CacheLevel.MEMORY)
    await cm.set("disk", 2, level=CacheLevel.DISK)
    await cm.set("expired", 3, ttl=1)
    clock.advance(2)
    assert [await cm.exists(key) for key in ("memory", "disk", "expired", "missing")] == [True, True, False, False]
    stats = await cm.get_stats()
    assert stats["gets"] == 0 and stats["memory_size"] == 2  # "disk" was not promoted


async def test_exists_does_not_change_the_lru_order(disk_config, clock):
    config = {**disk_config(), "memory_max_size": 2}
    async with CacheManager(config, clock=clock) as cm:
        await cm.set("a", 1, level=CacheLevel.MEMORY)
        await cm.set("b", 2, level=CacheLevel.MEMORY)
        assert await cm.exists("a")
        await cm.set("c", 3, level=CacheLevel.MEMORY)  # evicts the least recently read: still "a"
        assert await cm.get_many(["a", "b", "c"]) == {"b": 2, "c": 3}


async def test_ttl_is_the_seconds_left_inf_for_never_none_for_no_live_entry(cm, clock):
    await cm.set("a", 1, ttl=100)
    await cm.set("forever", 1, ttl=0)
    await cm.set("default", 1)
    await cm.set("disk", 1, ttl=50, level=CacheLevel.DISK)
    clock.advance(30)
    assert await cm.ttl("a") == 70
    assert await cm.ttl("forever") == math.inf
    assert await cm.ttl("default") == 300 - 30
    assert await cm.ttl("disk") == 20
    assert await cm.ttl("missing") is None
    clock.advance(70)
    assert await cm.ttl("a") is None and await cm.ttl("disk") is None
    assert (await cm.get_stats())["gets"] == 0


async def test_exists_and_ttl_see_another_process_s_changes(cm, other):
    await cm.set("a", 1, ttl=100)
    assert await other.ttl("a") == 100
    await cm.set("a", 1, ttl=10)
    await heard(other)
    assert await other.ttl("a") == 10
    await cm.delete("a")
    await heard(other)
    assert not await other.exists("a")


# ---------------------------------------------------------------- touch


async def test_touch_gives_a_new_expiry_in_every_tier(cm, clock):
    await cm.set("a", {"v": 1}, ttl=10, tags=["t"])
    clock.advance(5)
    assert await cm.touch("a", 100) is True
    assert await cm.ttl("a") == 100
    [(expires_at,)] = await disk_rows(cm, "SELECT expires_at FROM entries WHERE key = 'a'")
    assert expires_at == clock.now + 100
    clock.advance(50)
    assert await cm.get("a") == {"v": 1}  # past the old expiry
    async with CacheManager(cm.config, clock=clock) as fresh:  # from disk alone
        assert await fresh.ttl("a") == 50 and await fresh.get("a") == {"v": 1}
    assert await cm.invalidate_by_tag("t") == 1  # value and tags unchanged


async def test_touch_defaults_and_never(cm, clock):
    await cm.set("a", 1, ttl=10)
    assert await cm.touch("a") is True
    assert await cm.ttl("a") == 300  # default_ttl
    assert await cm.touch("a", 0) is True
    assert await cm.ttl("a") == math.inf
    assert await disk_rows(cm, "SELECT expires_at FROM entries") == [(None,)]
    with pytest.raises(ValueError):
        await cm.touch("a", -1)


async def test_touch_of_no_live_entry_is_false_and_changes_nothing(cm, clock):
    await cm.set("expired", 1, ttl=1)
    clock.advance(2)
    assert await cm.touch("expired", 100) is False
    assert await cm.touch("missing", 100) is False
    assert await cm.get("expired") is None
    assert await disk_rows(cm, "SELECT key, expires_at FROM entries") == [("expired", clock.now - 1)]


async def test_touch_of_an_entry_in_one_tier(cm, clock):
    await cm.set("memory", 1, ttl=10, level=CacheLevel.MEMORY)
    await cm.set("disk", 2, ttl=10, level=CacheLevel.DISK)
    assert await cm.touch("memory", 100) and await cm.touch("disk", 100)
    clock.advance(50)
    assert await cm.get_many(["memory", "disk"]) == {"memory": 1, "disk": 2}


async def test_touch_drops_another_process_s_memory_copy(cm, other, clock):
    await cm.set("a", 1, ttl=100)
    assert await other.get("a") == 1  # other's memory copy expires in 100 s
    assert await cm.touch("a", 5)
    assert await disk_rows(cm, "SELECT kind, arg FROM invalidations ORDER BY seq DESC LIMIT 1") == [("key", "a")]
    clock.advance(10)
    await heard(other)
    assert await other.get("a") is None


async def test_touch_without_a_disk_tier(clock):
    async with CacheManager({"disk_cache_enabled": False}, clock=clock) as cm:
        await cm.set("a", 1, ttl=10)
        assert await cm.touch("a", 100) is True and await cm.touch("b", 100) is False
        clock.advance(50)
        assert await cm.get("a") == 1


# ---------------------------------------------------------------- stale_ttl


class Loader:
    """A loader returning "v1", "v2", ... that can be made to fail; counts its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail = False

    async def __call__(self) -> str:
        self.calls += 1
        await asyncio.sleep(0)
        if self.fail:
            raise RuntimeError("the API is down")
        return f"v{self.calls}"


async def test_stale_value_served_at_once_with_one_background_refresh(cm, clock):
    load = Loader()
    assert await cm.get_or_set("k", load, ttl=10, stale_ttl=30) == "v1"
    clock.advance(15)  # past the ttl, inside the window
    assert await cm.get("k") is None  # plain get: never past the ttl
    assert await asyncio.gather(*(cm.get_or_set("k", load, ttl=10, stale_ttl=30) for _ in range(20))) == ["v1"] * 20
    await wait_until(lambda: load.calls == 2 and not cm._here().refreshes)
    assert await cm.get_or_set("k", load, ttl=10, stale_ttl=30) == "v2"
    assert await cm.get("k") == "v2" and await cm.ttl("k") == 10
    stats = await cm.get_stats()
    assert (stats["stale_hits"], stats["stale_refreshes"], stats["stale_refresh_errors"]) == (20, 1, 0)
    assert load.calls == 2


async def test_stale_window_on_disk_survives_a_restart(cm, clock):
    load = Loader()
    await cm.get_or_set("k", load, ttl=10, stale_ttl=30)
    [(expires_at, stale_until)] = await disk_rows(cm, "SELECT expires_at, stale_until FROM entries")
    assert stale_until - expires_at == 30
    clock.advance(15)
    async with CacheManager(cm.config, clock=clock) as fresh:
        assert await fresh.get("k") is None
        assert await fresh.get_or_set("k", load, ttl=10, stale_ttl=30) == "v1"  # from disk, stale
        await wait_until(lambda: load.calls == 2 and not fresh._here().refreshes)
        assert await fresh.get("k") == "v2"


async def test_a_failed_refresh_keeps_the_stale_value_until_the_window_ends(cm, clock, caplog):
    load = Loader()
    await cm.get_or_set("k", load, ttl=10, stale_ttl=30)
    load.fail = True
    clock.advance(15)
    with caplog.at_level(logging.WARNING, logger="sqlcache"):
        assert await cm.get_or_set("k", load, ttl=10, stale_ttl=30) == "v1"
        await wait_until(lambda: not cm._here().refreshes)
    assert "background refresh of 'k' failed" in caplog.text and "the API is down" in caplog.text
    assert (await cm.get_stats())["stale_refresh_errors"] == 1
    clock.advance(15)  # 20 s past the ttl: still inside the window
    assert await cm.get_or_set("k", load, ttl=10, stale_ttl=30) == "v1"
    await wait_until(lambda: not cm._here().refreshes)
    clock.advance(15)  # the window is over: a miss, and the loader's error reaches the caller
    with pytest.raises(RuntimeError):
        await cm.get_or_set("k", load, ttl=10, stale_ttl=30)
    load.fail = False
    assert await cm.get_or_set("k", load, ttl=10, stale_ttl=30) == "v5"  # two refreshes and a load failed


async def test_a_caller_without_stale_ttl_never_gets_a_stale_value(cm, clock):
    load = Loader()
    await cm.get_or_set("k", load, ttl=10, stale_ttl=30)
    clock.advance(15)
    assert await cm.get_or_set("k", load, ttl=10) == "v2"  # loaded now
    clock.advance(15)
    assert await cm.get_or_set("k", load, ttl=10, stale_ttl=3) == "v3"  # 5 s past: over its 3 s


async def test_a_set_or_delete_during_a_refresh_wins(cm, clock):
    release = asyncio.Event()

    async def slow() -> str:
        await release.wait()
        return "refreshed"

    await cm.set("k", "old", ttl=10)
    await cm.get_or_set("j", lambda: "old", ttl=10, stale_ttl=30)
    clock.advance(15)
    assert await cm.get_or_set("j", slow, ttl=10, stale_ttl=30) == "old"
    await asyncio.sleep(0)
    await cm.set("j", "newer")
    release.set()
    await wait_until(lambda: not cm._here().refreshes)
    assert await cm.get("j") == "newer"


async def test_stale_values_without_a_disk_tier_and_a_delete_during_the_refresh(clock):
    release = asyncio.Event()

    async def slow() -> str:
        await release.wait()
        return "refreshed"

    async with CacheManager({"disk_cache_enabled": False}, clock=clock) as cm:
        await cm.get_or_set("k", lambda: "old", ttl=10, stale_ttl=30)
        clock.advance(15)
        assert await cm.get_or_set("k", slow, ttl=10, stale_ttl=30) == "old"  # from memory
        assert await cm.delete("k") is False  # past its ttl: not live, but gone
        release.set()
        await wait_until(lambda: not cm._here().refreshes)
        assert await cm.get_or_set("k", lambda: "loaded", ttl=10, stale_ttl=30) == "loaded"


async def test_the_stale_window_keeps_the_row_from_the_purge_until_it_ends(cm, clock):
    await cm.get_or_set("stale", lambda: 1, ttl=10, stale_ttl=30)
    await cm.set("plain", 2, ttl=10)
    clock.advance(15)
    assert await cm.purge_expired() == 1  # "plain" only
    assert await disk_rows(cm, "SELECT key FROM entries") == [("stale",)]
    clock.advance(30)
    assert await cm.purge_expired() == 1
    assert await disk_rows(cm, "SELECT count(*) FROM entries") == [(0,)]


async def test_eviction_takes_the_ended_entries_first_not_those_in_a_stale_window(disk_config, clock):
    config = {**disk_config(), "disk_max_size": 3000, "invalidation_strategy": "fifo", "memory_max_size": 0}
    async with CacheManager(config, clock=clock) as cm:
        await cm.get_or_set("stale", lambda: "s" * 900, ttl=10, stale_ttl=100)  # oldest, expires first
        await cm.set("ended", "e" * 900, ttl=15)
        await cm.set("fresh", "f" * 900, ttl=1000)
        clock.advance(20)
        await cm.set("new", "n" * 900, ttl=1000)  # over the bound by about one entry
        assert sorted(key for (key,) in await disk_rows(cm, "SELECT key FROM entries")) == ["fresh", "new", "stale"]
        assert await cm.get_or_set("stale", lambda: "x", ttl=10, stale_ttl=100) == "s" * 900


async def test_touch_moves_the_stale_window_along(cm, clock):
    await cm.get_or_set("k", lambda: 1, ttl=10, stale_ttl=30)
    assert await cm.touch("k", 100)
    [(expires_at, stale_until)] = await disk_rows(cm, "SELECT expires_at, stale_until FROM entries")
    assert (expires_at, stale_until) == (clock.now + 100, clock.now + 130)
    clock.advance(110)
    assert await cm.get("k") is None
    assert await cm.get_or_set("k", lambda: 2, ttl=10, stale_ttl=30) == 1  # stale, from memory


async def test_another_process_never_gets_a_value_past_its_ttl(cm, other, clock):
    await cm.get_or_set("k", lambda: 1, ttl=10, stale_ttl=30)
    assert await other.get("k") == 1
    clock.advance(15)
    assert await other.get("k") is None and await other.get_many(["k"]) == {}
    assert not await other.exists("k") and await other.ttl("k") is None


async def test_a_refresh_reaches_another_process_s_stale_copy(cm, other, clock):
    await cm.get_or_set("k", lambda: "v1", ttl=10, stale_ttl=30)
    assert await other.get_or_set("k", lambda: "other", ttl=10, stale_ttl=30) == "v1"  # in other's memory
    clock.advance(15)
    assert await cm.get_or_set("k", lambda: "v2", ttl=10, stale_ttl=30) == "v1"
    await wait_until(lambda: not cm._here().refreshes)
    await heard(other)
    assert await other.get_or_set("k", lambda: "other", ttl=10, stale_ttl=30) == "v2"  # no stale copy left


async def test_a_caller_without_stale_ttl_joining_a_stale_load_waits_for_a_fresh_value(cm, clock):
    await cm.get_or_set("k", lambda: "v1", ttl=10, stale_ttl=30)
    clock.advance(15)
    async with CacheManager(cm.config, clock=clock) as fresh:  # the stale value is on disk only
        stale, loaded = await asyncio.gather(
            fresh.get_or_set("k", lambda: "v2", ttl=10, stale_ttl=30),
            fresh.get_or_set("k", lambda: "v3", ttl=10),  # shares the first caller's disk lookup
        )
        assert (stale, loaded) == ("v1", "v3")
        await wait_until(lambda: not fresh._here().refreshes)


@pytest.mark.parametrize("stale_ttl, error", [(-1, ValueError), (math.inf, ValueError), ("5", TypeError), (True, TypeError)])
async def test_bad_stale_ttl_is_refused(cm, stale_ttl, error):
    with pytest.raises(error):
        await cm.get_or_set("k", lambda: 1, stale_ttl=stale_ttl)
    assert not await cm.exists("k")


# ---------------------------------------------------------------- ttl_jitter


async def test_ttl_jitter_spreads_the_expiries_of_keys_set_together(disk_config, clock):
    async with CacheManager({**disk_config(), "ttl_jitter": 0.2}, clock=clock) as cm:
        keys = [f"k{n}" for n in range(200)]
        await cm.set_many(dict.fromkeys(keys, 1), ttl=100)
        for key in keys[:5]:
            await cm.set(key, 1, ttl=100)
        left = [await cm.ttl(key) for key in keys]
        assert all(80 <= seconds <= 100 for seconds in left)
        assert min(left) < 82 and max(left) > 98 and len(set(left)) > 190
        await cm.set("forever", 1, ttl=0)
        assert await cm.ttl("forever") == math.inf


async def test_no_jitter_by_default(cm):
    await cm.set_many(dict.fromkeys(KEYS, 1), ttl=100)
    assert {await cm.ttl(key) for key in KEYS} == {100}


@pytest.mark.parametrize("jitter", [-0.1, 1, 1.5, "0.1", True, math.nan])
def test_bad_ttl_jitter_is_refused_naming_the_key(jitter):
    with pytest.raises(ValueError, match="'ttl_jitter'"):
        CacheManager({"ttl_jitter": jitter})


# ---------------------------------------------------------------- the pool


async def test_the_pool_offers_the_same_calls(disk_config, clock):
    manager = CacheManager(disk_config(), clock=clock)
    async with ResourcePool(manager, cache_ttl=60) as pool:
        await pool.cache_set_many({"a": 1, "b": 2})
        assert await pool.cache_get_many(["a", "b", "c"]) == {"a": 1, "b": 2}
        assert await pool.cache_ttl_left("a") == 60  # the pool's cache_ttl
        assert await pool.cache_exists("a") and not await pool.cache_exists("c")
        clock.advance(30)
        assert await pool.cache_touch("a") is True
        assert await pool.cache_ttl_left("a") == 60
        assert await pool.cache_delete_many(["a", "b", "c"]) == 2
        assert await pool.cache_get_or_set("s", lambda: "v1", ttl=10, stale_ttl=30) == "v1"
        clock.advance(15)
        assert await pool.cache_get_or_set("s", lambda: "v2", ttl=10, stale_ttl=30) == "v1"
        await wait_until(lambda: not manager._here().refreshes)
        assert await pool.cache_get("s") == "v2"

"""The disk tier on a real PostgreSQL server: the store's contract through `CacheManager`, hosts
sharing one database, a killed writer, a server that stops and comes back, secrets in messages."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from pg_server import PASSWORD, PostgresServer
from sqlcache import CacheBusyError, CacheLevel, CacheManager, DatabaseUnavailableError, SchemaVersionError
from sqlcache._engines import make_store
from sqlcache._config import CacheConfig
from sqlcache._postgres import LATEST_SCHEMA, WRITE_LOCK, PostgresStore
from sqlcache._sqlite import SQLiteStore
from sqlcache._urls import describe_server, parse, redact
from test_processes import next_line

WORKER = str(Path(__file__).with_name("pg_worker.py"))
SYNC_INTERVAL = 0.2


async def query(url: str, sql: str, *args):
    connection = await asyncpg.connect(url)
    try:
        return await connection.fetch(sql, *args)
    finally:
        await connection.close()


async def disk_keys(url: str) -> set[str]:
    return {row["key"] for row in await query(url, "SELECT key FROM entries")}


@pytest.fixture
async def cache(pg_url, clock):
    async with CacheManager({"disk_cache_url": pg_url}, clock=clock) as manager:
        yield manager


# ---------------------------------------------------------------- selecting the engine


def test_urls_select_the_engine_and_hide_the_password(tmp_path):
    assert parse("postgresql://u:pw@db.example:6432/cache").engine == "postgresql"
    assert parse("postgres://u@/cache?host=/run/postgresql").engine == "postgresql"
    assert parse("sqlite:////var/cache/app.db").path == Path("/var/cache/app.db")
    assert redact("postgresql://u:pw@h/d") == "postgresql://u:***@h/d"
    assert redact("postgresql://u@h/d?password=pw&sslmode=require") == "postgresql://u@h/d?password=***&sslmode=require"
    assert describe_server("postgresql://u:pw@h1,h2:5433/d") == "h1:5432,h2:5433/d"
    assert describe_server("postgresql:///d?host=/run/postgresql") == "/run/postgresql:5432/d"
    with pytest.raises(ValueError, match="disk_cache_url") as bad:
        CacheConfig.from_mapping({"disk_cache_url": "mysql://u:pw@h/d"})
    assert "pw" not in str(bad.value)
    config = CacheConfig.from_mapping({"disk_cache_url": "postgresql://u:pw@h/d"})
    assert config.disk_cache_url == "postgresql://u:pw@h/d" and "pw" not in repr(config)
    assert isinstance(make_store(config, "o"), PostgresStore)
    sqlite_config = CacheConfig.from_mapping({"disk_cache_url": f"sqlite:///{tmp_path}/x.db"})
    store = make_store(sqlite_config, "o")
    assert isinstance(store, SQLiteStore) and store.path == tmp_path / "x.db"


async def test_a_sqlite_url_puts_the_cache_in_that_file(tmp_path):
    async with CacheManager({"disk_cache_url": f"sqlite:///{tmp_path}/app.db"}) as manager:
        await manager.set("k", "v")
    assert (tmp_path / "app.db").exists() and not (Path("cache") / "app.db").exists()


async def test_a_unix_socket_url_with_host_parameter_works(postgres_server, pg_url):
    url = postgres_server.socket_url(pg_url.rsplit("/", 1)[1])
    async with CacheManager({"disk_cache_url": url}) as manager:
        await manager.set("k", "v")
    assert await disk_keys(pg_url) == {"k"}


# ---------------------------------------------------------------- the contract


async def test_set_get_delete_levels_and_ttl(cache, clock, pg_url):
    await cache.set("a", {"n": 1})
    await cache.set("d", [1, 2], level=CacheLevel.DISK)
    await cache.set("m", "memory only", level="memory")
    await cache.set("t", "short", ttl=10)
    assert await disk_keys(pg_url) == {"a", "d", "t"}
    assert [await cache.get(key) for key in ("a", "d", "m", "t")] == [{"n": 1}, [1, 2], "memory only", "short"]
    clock.advance(11)
    assert await cache.get("t") is None
    assert await cache.delete("a") is True and await cache.delete("a") is False
    assert await cache.get("a") is None
    await cache.set("e", b"\x00bytes", ttl=5)
    clock.advance(6)
    assert await cache.purge_expired() == 2  # t and e
    assert await disk_keys(pg_url) == {"d"}


async def test_a_fresh_manager_reads_what_another_wrote(pg_url, clock):
    async with CacheManager({"disk_cache_url": pg_url}, clock=clock) as first:
        await first.set("k", {"deep": [1, 2.5, None, "s"]}, ttl=0, tags=["x"])
    async with CacheManager({"disk_cache_url": pg_url, "memory_max_size": 0}, clock=clock) as second:
        assert await second.get("k") == {"deep": [1, 2.5, None, "s"]}
        assert await second.invalidate_by_tag("x") == 1


async def test_tags_and_patterns_remove_exactly_their_keys(cache, pg_url):
    for symbol in ("BTC", "ETH"):
        for frame in ("1m", "1h"):
            await cache.set(f"market_data:{symbol}:{frame}", frame, tags=[symbol, "market"])
    await cache.set("market_dataXBTC", "not in the prefix range")
    await cache.set("other", 1, tags=["market"])
    assert await cache.invalidate_by_tag("BTC") == 2
    assert await cache.invalidate_by_pattern(r"market_data:ETH:1.") == 2
    assert await disk_keys(pg_url) == {"market_dataXBTC", "other"}
    assert await cache.invalidate_by_pattern(r"(?!other).*") == 1  # no literal prefix: every key tested
    assert await cache.invalidate_by_tag("market") == 1
    assert await disk_keys(pg_url) == set()


async def test_a_re_set_replaces_the_tags_and_keeps_the_read_statistics(cache, pg_url):
    await cache.set("k", 1, tags=["old", "both"])
    await cache.get("k")
    await cache.set("k", 2, tags=["both", "new"])
    [row] = await query(pg_url, "SELECT tags, access_count FROM cache_entries")
    assert json.loads(row["tags"]) == ["both", "new"] and row["access_count"] == 1
    assert await cache.invalidate_by_tag("old") == 0
    assert {r["tag"] for r in await query(pg_url, "SELECT tag FROM cache_tags")} == {"both", "new"}


async def test_clear_and_size_are_exact(cache, pg_url):
    for i in range(50):
        await cache.set(f"k{i}", "v" * i, tags=[f"t{i % 3}"])
    await asyncio.gather(*(cache.set(f"k{i}", "w", tags=["t0"]) for i in range(0, 50, 2)))
    stats = await cache.get_stats()
    [(entries, size)] = await query(pg_url, "SELECT count(*), sum(size) FROM entries")
    assert (stats["disk_entries"], stats["disk_size"]) == (entries, size) == (50, size)
    await cache.clear()
    stats = await cache.get_stats()
    assert (stats["disk_entries"], stats["disk_size"], stats["memory_size"]) == (0, 0, 0)
    assert await query(pg_url, "SELECT * FROM tags") == []


async def test_the_debugging_views_have_sqlites_columns(cache, pg_url, tmp_path, clock):
    await cache.set("k", {"a": 1}, ttl=60, tags=["t"])
    await cache.get("k")
    await cache.close()
    [row] = await query(pg_url, "SELECT * FROM cache_entries")
    async with CacheManager({"disk_cache_dir": str(tmp_path)}, clock=clock) as on_sqlite:
        await on_sqlite.set("k", {"a": 1}, ttl=60, tags=["t"])
        await on_sqlite.get("k")
    import sqlite3

    with sqlite3.connect(tmp_path / "sqlcache.db") as db:
        sqlite_row = db.execute("SELECT * FROM cache_entries").fetchone()
        sqlite_columns = [d[0] for d in db.execute("SELECT * FROM cache_entries").description]
        tag_columns = [d[0] for d in db.execute("SELECT * FROM cache_tags").description]
        task_columns = [d[0] for d in db.execute("SELECT * FROM preload_tasks").description]
    assert list(row.keys()) == sqlite_columns
    on_sqlite_row = dict(zip(sqlite_columns, sqlite_row))
    assert dict(row) == {**on_sqlite_row, "expired": True} and on_sqlite_row["expired"] == 1  # a bool, not 1
    assert row["created_at"] == "2023-11-14T22:13:20.000Z" and json.loads(row["value_json"]) == {"a": 1}
    for view, columns in (("cache_tags", tag_columns), ("preload_tasks", task_columns)):
        statement = await (await asyncpg.connect(pg_url)).prepare(f"SELECT * FROM {view}")
        assert [attribute.name for attribute in statement.get_attributes()] == columns


# ---------------------------------------------------------------- schema


async def test_concurrent_opens_migrate_once_and_a_newer_schema_is_refused_untouched(pg_url):
    managers = [CacheManager({"disk_cache_url": pg_url}) for _ in range(4)]
    await asyncio.gather(*(manager.open() for manager in managers))
    await asyncio.gather(*(manager.close() for manager in managers))
    assert [row["version"] for row in await query(pg_url, "SELECT version FROM sqlcache_schema ORDER BY 1")] == list(
        range(1, LATEST_SCHEMA + 1)
    )
    await query(pg_url, "INSERT INTO sqlcache_schema VALUES ($1)", LATEST_SCHEMA + 1)
    before = await query(pg_url, "SELECT count(*) FROM pg_class")
    with pytest.raises(SchemaVersionError, match="newer") as refused:
        await CacheManager({"disk_cache_url": pg_url}).open()
    assert PASSWORD not in str(refused.value)
    assert await query(pg_url, "SELECT count(*) FROM pg_class") == before


# ---------------------------------------------------------------- coherence


async def test_changes_makes_no_round_trip_until_another_host_writes(pg_url):
    async with CacheManager({"disk_cache_url": pg_url}) as mine, CacheManager({"disk_cache_url": pg_url}) as theirs:
        store = mine._store
        calls = []

        class CountingSession:
            def __init__(self, connection):
                self.connection = connection

            def __getattr__(self, name):
                method = getattr(self.connection, name)
                return lambda *args: calls.append(name) or method(*args)

        store._session = CountingSession(store._session)
        await mine.set("own", 1)  # our own write: no read of the log needed
        await asyncio.sleep(0.1)
        assert await store.changes() is None and calls == []
        await theirs.set("k", 1)
        await theirs.invalidate_by_tag("t")
        for _ in range(100):
            changes = await store.changes()
            if changes is not None:
                break
            await asyncio.sleep(0.01)
        assert changes.complete and [(kind, arg) for _, kind, arg in changes.changes] == [("key", "k"), ("tag", "t")]
        await asyncio.sleep(0.1)
        await store.changes()  # reads once more if the second notification came during the first read
        calls.clear()
        assert await store.changes() is None and calls == []


async def test_a_host_that_missed_trimmed_log_rows_empties_its_memory_tier(pg_url):
    async with CacheManager({"disk_cache_url": pg_url}) as mine, CacheManager({"disk_cache_url": pg_url}) as theirs:
        store = mine._store
        await theirs.set("a", 1)
        await theirs.set("b", 2)
        await query(pg_url, "DELETE FROM invalidations WHERE seq < (SELECT max(seq) FROM invalidations)")
        await asyncio.sleep(0.1)
        changes = await store.changes()
        assert changes is not None and not changes.complete


def start(role: str, config: dict, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, WORKER, role, json.dumps(config), *args], stdout=subprocess.PIPE, text=True, env=env)


CHANGES = {  # each kind of change another host can make, and what this host must then read
    "overwrite": (lambda cache, key: cache.set(key, "new"), "new"),
    "memory-set": (lambda cache, key: cache.set(key, "mem", level=CacheLevel.MEMORY), None),
    "disk-set": (lambda cache, key: cache.set(key, "on disk", level=CacheLevel.DISK), "on disk"),
    "set_many": (lambda cache, key: cache.set_many({key: "batch", "other": 1}), "batch"),
    "delete": (lambda cache, key: cache.delete(key), None),
    "delete_many": (lambda cache, key: cache.delete_many([key, "other"]), None),
    "tag": (lambda cache, key: cache.invalidate_by_tag("t"), None),
    "pattern": (lambda cache, key: cache.invalidate_by_pattern("market_data:BTC:.*"), None),
    "clear": (lambda cache, key: cache.clear(), None),
}


async def test_another_host_drops_each_kind_of_change_within_the_bound(pg_url, tmp_path):
    key = "market_data:BTC:1m"
    other_host = {"disk_cache_url": pg_url, "disk_cache_dir": str(tmp_path / "b"), "sync_interval": SYNC_INTERVAL}
    async with CacheManager({"disk_cache_url": pg_url, "disk_cache_dir": str(tmp_path / "a")}) as cache:
        follower = start("follow", other_host, key)
        try:
            assert (await next_line(follower))["value"] is None
            for name, (change, new_value) in CHANGES.items():
                await cache.set(key, f"old {name}", 0, tags=["t"])
                seen_old = await next_line(follower)
                assert seen_old["value"] == f"old {name}"
                await asyncio.sleep(0.1)  # the follower now reads it from its memory tier
                await change(cache, key)
                changed_at = time.monotonic()
                seen = await next_line(follower)
                assert seen["value"] == new_value, name
                assert seen["memory_hits"] > seen_old["memory_hits"] + 5, name  # it was served from memory
                assert seen["at"] - changed_at <= SYNC_INTERVAL + 0.3, name  # the bound, plus scheduling slack
            await cache.set(key, "stop")
            assert (await next_line(follower))["value"] == "stop"
            assert follower.wait(timeout=30) == 0
        finally:
            follower.kill()
            follower.wait()


async def test_sets_that_returned_survive_kill_9_of_two_writers_on_the_same_keys(pg_url, tmp_path):
    writers = [start("write", {"disk_cache_url": pg_url, "disk_cache_dir": str(tmp_path / host)}) for host in "ab"]
    acknowledged = []
    for writer in writers:  # both run meanwhile, upserting the same keys from two backends
        done = -1
        while done < 300:
            done = (await next_line(writer))["i"]
        acknowledged.append(done)
    for n, writer in enumerate(writers):
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        # Every set it reported before the kill, the lines not read yet included (a line cut by the kill is no report).
        unread = [json.loads(line)["i"] for line in writer.stdout.read().splitlines(keepends=True) if line.endswith("\n")]
        acknowledged[n] = max([acknowledged[n], *unread])
    async with CacheManager({"disk_cache_url": pg_url}) as cache:
        for i in range(max(acknowledged) + 1):
            assert await cache.get(f"k{i}") == {"i": i, "pad": "x" * 200}
        stats = await cache.get_stats()
        [(entries, size)] = await query(pg_url, "SELECT count(*), coalesce(sum(size), 0) FROM entries")
        assert (stats["disk_entries"], stats["disk_size"]) == (entries, size)  # the 16 slots add up
        assert entries >= max(acknowledged) + 1
        assert await cache.invalidate_by_tag("t0") == len(range(0, entries, 7))


# ---------------------------------------------------------------- faults


@pytest.fixture
def own_server():
    """A server of this test's own, which it may stop and start."""
    server = PostgresServer().start()
    yield server
    server.remove()


class Writer:
    """Sets w0, w1, ... one after another while it runs, noting each one's outcome and duration."""

    def __init__(self, cache: CacheManager) -> None:
        self.cache, self.writes = cache, []  # (i, "ok" or "down", seconds)
        self.errors: list[str] = []  # the messages of the "down" ones
        self.task = asyncio.get_running_loop().create_task(self.run())

    async def run(self) -> None:
        for i in itertools.count():
            started = time.monotonic()
            try:
                await self.cache.set(f"w{i}", i)
                outcome = "ok"
            except DatabaseUnavailableError as error:
                outcome = "down"
                self.errors.append(str(error))
            self.writes.append((i, outcome, time.monotonic() - started))
            await asyncio.sleep(0.01)

    async def wait_for(self, outcome: str, count: int = 1) -> None:
        """Until the latest `count` writes had `outcome`."""
        for _ in range(1000):
            if len(self.writes) >= count and all(o == outcome for _, o, _ in self.writes[-count:]):
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"no {count} writes in a row {outcome}: {self.writes[-20:]}")


async def test_a_server_that_stops_and_comes_back(own_server, caplog):
    url = own_server.create_database()
    async with CacheManager({"disk_cache_url": url, "sync_interval": 0.05, "busy_timeout": 2.0}) as cache:
        await cache.set("k", "before")
        assert await cache.get("k") == "before"
        writer = Writer(cache)  # mid-run: a write in flight when the server stops, and more meanwhile
        await writer.wait_for("ok", 3)
        own_server.stop()
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailableError, match="127.0.0.1") as down:
            await cache.set("k2", "while down")
        with pytest.raises(DatabaseUnavailableError):
            await cache.delete("k")
        for _ in range(50):  # memory hits keep serving, while every sync_interval a reconnect fails
            assert await cache.get("k") == "before"
            await asyncio.sleep(0.01)
        with pytest.raises(DatabaseUnavailableError):
            await cache.get("never-cached")
        assert time.monotonic() - started < 2.5  # failing fast, not waiting for a timeout
        assert PASSWORD not in str(down.value)
        own_server.start()
        for _ in range(200):  # the next writes succeed without a new manager
            try:
                await cache.set("k3", "after")
                break
            except DatabaseUnavailableError:
                await asyncio.sleep(0.05)
        await query(url, "UPDATE entries SET value = '\"changed meanwhile\"' WHERE key = 'k'")
        for _ in range(100):  # reconnected, the memory tier was dropped: the disk's value shows
            if await cache.get("k") == "changed meanwhile":
                break
            await asyncio.sleep(0.02)
        assert await cache.get("k") == "changed meanwhile"
        assert await cache.get("k3") == "after"
        await writer.wait_for("ok", 3)
        writer.task.cancel()
    outcomes = [outcome for _, outcome, _ in writer.writes]
    assert "down" in outcomes and outcomes[-1] == "ok"  # failed while down, then wrote again
    assert not [error for error in writer.errors if "released back to the pool" in error]  # the cause, not asyncpg's bookkeeping
    assert max(seconds for *_, seconds in writer.writes) < 2.5  # no write hung on the outage
    async with CacheManager({"disk_cache_url": url}) as fresh:  # every write that returned is there
        for i, outcome, _ in writer.writes:
            if outcome == "ok":
                assert await fresh.get(f"w{i}") == i
    assert all(PASSWORD not in record.getMessage() for record in caplog.records)
    outage_warnings = [r for r in caplog.records if "reconnect to" in r.getMessage() and r.levelname == "WARNING"]
    assert len(outage_warnings) <= 1  # one warning per outage, not one per sync_interval


async def test_a_write_waiting_on_another_writer_past_the_busy_timeout_raises_busy(pg_url):
    async with CacheManager({"disk_cache_url": pg_url, "busy_timeout": 0.3}) as cache:
        await cache.set("k", 1)
        other_writer = await asyncpg.connect(pg_url)
        async with other_writer.transaction():
            await other_writer.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)
            started = time.monotonic()
            with pytest.raises(CacheBusyError, match="locked for over 0.3s") as busy:
                await cache.set("k", 2)
            assert time.monotonic() - started < 2 and "\n" not in str(busy.value)
        await other_writer.close()
        await cache.set("k", 3)  # the lock is free again; the connection was handed back clean
        assert await cache.get("k") == 3


@pytest.mark.parametrize("problem", ["wrong password", "nothing listening", "no such database"])
async def test_an_unreachable_or_refusing_server_names_the_host_and_never_the_password(postgres_server, problem):
    url = {
        "wrong password": postgres_server.url(password="Wr0ng-" + PASSWORD),
        "nothing listening": f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/postgres",
        "no such database": postgres_server.url("no_such_database"),
    }[problem]
    with pytest.raises(DatabaseUnavailableError, match="127.0.0.1:") as refused:
        await CacheManager({"disk_cache_url": url, "busy_timeout": 2.0}).open()
    message = str(refused.value)
    assert PASSWORD not in message and "Wr0ng" not in message and "\n" not in message


# ---------------------------------------------------------------- the preloader's table


async def test_the_preloader_statements_run_on_postgresql_and_one_host_gets_the_lease(pg_url):
    from sqlcache import _postgres_preload as sql

    async with CacheManager({"disk_cache_url": pg_url}) as first, CacheManager({"disk_cache_url": pg_url}) as second:
        hosts = [first._store.preloader_database(), second._store.preloader_database()]
        definition = {"name": "prices", "enabled": True, "interval": 60.0, "timeout": 10.0,
                      "cache_key": "prices", "cache_ttl": None, "tags": '["market"]'}
        await asyncio.gather(*(host.fetch(sql.REGISTER_TASK, definition) for host in hosts))
        claims = await asyncio.gather(*(
            host.fetch(sql.CLAIM_TASK, {"owner": f"host{i}", "lease": 30.0, "name": "prices", "force": False, "now": 100.0})
            for i, host in enumerate(hosts)
        ))
        assert sorted(len(rows) for rows in claims) == [0, 1]
        winner = [len(rows) for rows in claims].index(1)
        owner, [(failures, lease_until)] = f"host{winner}", claims[winner]
        assert failures == 0 and abs(lease_until - time.time() - 30) < 5  # on the server's clock
        [(enabled, next_run, lease_left)] = await hosts[0].fetch(sql.READ_SCHEDULE, ("prices",))
        assert enabled is True and next_run is None and 25 < lease_left <= 30
        assert len(await hosts[1].fetch(sql.RENEW_LEASE, {"lease": 60.0, "name": "prices", "owner": owner})) == 1
        assert await hosts[1].fetch(sql.RENEW_LEASE, {"lease": 60.0, "name": "prices", "owner": "nobody"}) == []
        run = {"name": "prices", "started": 100.0, "finished": 101.5, "duration": 1.5, "next_run": 160.0}
        await hosts[1].fetch(sql.FINISH_RUN, {**run, "owner": owner, "error": None})
        await hosts[1].fetch(sql.FINISH_RUN, {**run, "owner": "nobody", "error": "boom", "next_run": 999.0})
        [row] = await hosts[0].fetch(sql.READ_TASKS, ('["prices", "other"]',))
        assert row[0] == "prices" and row[7:10] == (2, 1, 1) and row[12] == "boom"
        assert row[15:] == (160.0, None, None, False)  # next run from the lease holder's finish; no lease
        await hosts[0].fetch(sql.SET_ENABLED, (False, "prices"))
        await hosts[0].fetch(sql.CLAIM_TASK, {"owner": "x", "lease": 5.0, "name": "prices", "force": True, "now": 0.0})
        await hosts[0].fetch(sql.RELEASE_LEASE, {"name": "prices", "owner": "x"})
        [view] = await query(pg_url, "SELECT enabled, last_run, run_count, running_in FROM preload_tasks")
        assert tuple(view) == (False, "1970-01-01T00:01:40.000Z", 2, None)


async def test_the_preloader_runs_on_postgresql_once_for_two_hosts_and_keeps_its_statistics_there(pg_url):
    from sqlcache import ResourcePool

    calls = []

    async def load_prices():
        calls.append(1)
        return {"BTC": 97000.5}

    pools = [ResourcePool(CacheManager({"disk_cache_url": pg_url})) for _ in range(2)]
    try:
        for pool in pools:  # the same task, registered on two hosts
            pool.register_preload_task("prices", load_prices, 3600, cache_key="market:prices", tags=["market"])
        ran = await asyncio.gather(*(pool.run_preload_task_now("prices") for pool in pools))
        assert sorted(ran) == [False, True] and len(calls) == 1  # one host held the lease
        assert await pools[1].cache_get("market:prices") == {"BTC": 97000.5}
        stats = await pools[0].get_preloader_stats()
        assert stats["task_stats"]["prices"]["run_count"] == 1  # read from the shared table
        cache_stats = await pools[0].cache_manager.get_stats()
        assert cache_stats["db_path"].startswith("postgresql://") and PASSWORD not in cache_stats["db_path"]
    finally:
        for pool in pools:
            await pool.close()
    [view] = await query(pg_url, "SELECT name, run_count, error_count FROM preload_tasks")
    assert tuple(view) == ("prices", 1, 0)


async def test_keys_and_tags_compare_in_code_point_order_whatever_the_database_collation(cache, pg_url):
    columns = await query(
        pg_url,
        "SELECT table_name, column_name, collation_name FROM information_schema.columns "
        "WHERE (table_name, column_name) IN (('entries', 'key'), ('tags', 'tag'))",
    )
    assert {(row["table_name"], row["collation_name"]) for row in columns} == {("entries", "C"), ("tags", "C")}
    for key in ("é:1", "e:1", "E:1", "e:\U0001f600", "e;", "e:", "e", "e:\x7f"):
        await cache.set(key, key)
    assert await cache.invalidate_by_pattern("e:.*") == 4
    assert await disk_keys(pg_url) == {"é:1", "E:1", "e;", "e"}


async def test_every_statement_of_the_store_can_walk_an_index(cache, pg_url):
    from sqlcache import _postgres as store_sql

    for i in range(200):
        await cache.set(f"k{i}", i, ttl=i % 2 * 100, tags=[f"t{i % 5}"])
    for strategy in ("lfu", "fifo", "ttl"):  # each makes the index its victims query walks
        async with CacheManager({"disk_cache_url": pg_url, "invalidation_strategy": strategy}):
            pass
    samples = {  # parameters for each statement of the write plan
        "record_reads": [[1], [2e9], ["k1"]], "upsert_entry": ["k1", b"1", 0, 3, "[]", 1.0, None],
        "set_stale_until": [2e9, 1], "touch_entry": [2e9, 2e9, "k1", 1e9], "insert_tag": ["t1", 1], "delete_key": ["k1"], "delete_tag": ["t1"], "delete_expired": [2e9, 64],
        "read_fill": [], "victims_lru": [10], "victims_lfu": [10], "victims_fifo": [10], "victims_ttl": [10],
        "catch_up_access": [2e9, 1], "delete_id": [1],
        "log_changes": [["origin"], ["key"], ["k1"], [1.0], 4096, "channel", "origin", ["t1"], ["k1"]], "read_log_since": [5],
        "last_seq": [],
        "trim_log": [5],
    }
    assert set(samples) == set(store_sql.STATEMENTS) - {"delete_all"}  # clear deletes every row: no index to use
    statements = [(store_sql.STATEMENTS[name], args) for name, args in samples.items()] + [
        (store_sql.READ_ONE, ["k1"]),
        (store_sql.READ_MANY, [["k1", "k2"]]),
        (store_sql.KEYS_IN_RANGE, ["k1", "k2"]),
        (store_sql.DELETE_IDS, [[1, 2]]),
        (store_sql.READ_CHANGES, [5]),
    ]
    connection = await asyncpg.connect(pg_url)
    try:
        await connection.execute("ANALYZE; SET enable_seqscan = off")
        for sql, args in statements:
            plan = "\n".join(row[0] for row in await connection.fetch(f"EXPLAIN {sql}", *args))
            assert "Seq Scan on entries" not in plan and "Seq Scan on tags" not in plan, (sql, plan)
            assert "Seq Scan on access" not in plan and "Seq Scan on invalidations" not in plan, (sql, plan)
    finally:
        await connection.close()


async def test_the_readmes_debugging_queries_work_in_postgresql_dialect(pg_url):
    """The README's queries, with PostgreSQL's time and JSON functions where SQLite's differ."""
    async with CacheManager({"disk_cache_url": pg_url}) as cache:
        await cache.set("market_data:BTC:1m", {"candles": [[1, 2, 3, 4, 40.5], [1, 2, 3, 4, 41.5]]}, ttl=30, tags=["BTC"])
        await cache.set("market_data:ETH:1m", {"candles": [[1, 2, 3, 4, 9.5]]}, ttl=3600, tags=["ETH"])
        await cache.get("market_data:BTC:1m")
    expiring = await query(pg_url, """
        SELECT key, expires_at FROM cache_entries
        WHERE expires_at BETWEEN sqlcache_iso(extract(epoch FROM now())) AND sqlcache_iso(extract(epoch FROM now()) + 60)
        ORDER BY expires_at""")
    assert [row["key"] for row in expiring] == ["market_data:BTC:1m"]
    biggest = await query(pg_url, "SELECT key, size, tags FROM cache_entries ORDER BY size DESC LIMIT 10")
    assert biggest[0]["key"] == "market_data:BTC:1m" and json.loads(biggest[0]["tags"]) == ["BTC"]
    assert len(await query(pg_url, "SELECT tag, entries, bytes FROM cache_tags ORDER BY bytes DESC LIMIT 10")) == 2
    hottest = await query(pg_url, "SELECT key, access_count, accessed_at, expired FROM cache_entries ORDER BY access_count DESC LIMIT 10")
    assert (hottest[0]["key"], hottest[0]["expired"]) == ("market_data:BTC:1m", False)
    closes = await query(pg_url, """
        SELECT key, (value_json::jsonb -> 'candles' -> -1 ->> 4)::numeric AS last_close
        FROM cache_entries WHERE key LIKE 'market_data:%' AND NOT expired ORDER BY key""")
    assert [(row["key"], float(row["last_close"])) for row in closes] == [("market_data:BTC:1m", 41.5), ("market_data:ETH:1m", 9.5)]
    assert await query(pg_url, "SELECT name FROM preload_tasks WHERE error_count > 0 ORDER BY error_count DESC") == []


@pytest.mark.parametrize("durability, setting", [("normal", "off"), ("full", "on")])
async def test_durability_sets_synchronous_commit_of_the_cache_sessions_only(pg_url, durability, setting):
    async with CacheManager({"disk_cache_url": pg_url, "durability": durability}) as cache:
        await cache.set("k", 1)
        assert await cache._store.run(lambda connection: connection.fetchval("SHOW synchronous_commit"), "read") == setting
    assert (await query(pg_url, "SHOW synchronous_commit"))[0][0] == "on"  # the server's own default is kept


def test_one_manager_serves_successive_event_loops(pg_url):
    manager = CacheManager({"disk_cache_url": pg_url})

    async def first() -> None:
        await manager.set("k", "from the first loop")

    async def second() -> tuple:
        await manager.set("k2", "from the second loop")
        found = (await manager.get("k"), await manager.get("k2"), await manager.invalidate_by_tag("none"))
        await manager.close()
        return found

    asyncio.run(first())
    assert asyncio.run(second()) == ("from the first loop", "from the second loop", 0)
    asyncio.run(first())
    asyncio.run(manager.close())  # closing from yet another loop


async def test_a_later_process_sees_what_an_earlier_one_left_on_either_store(disk_config, clock):
    async with CacheManager(disk_config(), clock=clock) as first:
        await first.set("k", {"v": 1}, ttl=60, tags=["t"])
        await first.set("gone", 1)
        await first.delete("gone")
    async with CacheManager(disk_config(), clock=clock) as second, CacheManager(disk_config("other"), clock=clock) as apart:
        assert (await second.get("k"), await second.get("gone"), await apart.get("k")) == ({"v": 1}, None, None)
        clock.advance(61)
        assert await second.get("k") is None


async def test_sets_of_one_key_in_one_batch_leave_the_last_value_and_tags(cache, pg_url):
    writes = []
    store = cache._store
    original = store.write

    async def counted(ops, reads, now):
        writes.append(len(ops))
        return await original(ops, reads, now)

    store.write = counted
    await asyncio.gather(
        cache.set("k", 1, tags=["a", "both"]), cache.set("other", 0, tags=["a"]), cache.set("k", 2, tags=["b", "both"])
    )
    assert writes == [3]  # one transaction
    [row] = await query(pg_url, "SELECT value_json, tags FROM cache_entries WHERE key = 'k'")
    assert (row["value_json"], json.loads(row["tags"])) == ("2", ["b", "both"])
    assert await cache.invalidate_by_tag("a") == 1  # "other" only
    assert await cache.invalidate_by_tag("both") == 1
    assert (await cache.get_stats())["disk_entries"] == 0


async def test_keys_tags_and_patterns_with_nul_work_like_on_sqlite(pg_url):
    keys = ["k\x00", "k\x00\x01", "k\x01", "k", "grp\x00A:1", "grp\x00B:1"]
    async with CacheManager({"disk_cache_url": pg_url}) as mine, CacheManager(
        {"disk_cache_url": pg_url, "sync_interval": 0.05}
    ) as theirs:
        for key in keys:
            await mine.set(key, key, tags=["\x00", f"grp\x00{key[-1]}"])
        assert [await theirs.get(key) for key in keys] == keys  # now in their memory tier too
        assert await mine.invalidate_by_pattern("k\x00.*") == 2
        assert await mine.invalidate_by_tag("grp\x00\x01") == 1  # k\x01 only
        assert await mine.delete("grp\x00A:1") is True
        await asyncio.sleep(0.1)
        assert [await theirs.get(key) for key in keys] == [None, None, None, "k", None, "grp\x00B:1"]
        assert await mine.invalidate_by_tag("\x00") == 2
        [(stored,)] = await query(pg_url, "SELECT count(*) FROM entries")
        assert stored == 0


@pytest.mark.parametrize("strategy, indexes", [
    ("lru", {"access_by_recency"}), ("lfu", {"access_by_frequency"}),
    ("fifo", {"entries_by_creation"}), ("ttl", {"entries_by_creation"}),
])
async def test_a_store_makes_only_its_strategys_eviction_index(pg_url, strategy, indexes):
    async with CacheManager({"disk_cache_url": pg_url, "invalidation_strategy": strategy}):
        pass
    rows = await query(pg_url, "SELECT indexname FROM pg_indexes WHERE tablename IN ('entries', 'access')")
    eviction = {"access_by_recency", "access_by_frequency", "entries_by_creation"}
    assert {row["indexname"] for row in rows} & eviction == indexes

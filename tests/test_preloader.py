"""CachePreloader through a real ResourcePool: the guide's examples, the schedule, the lease, the
statistics table, and stopping. Schedules run on the FakeClock with a sleep that follows it, so
no test waits an interval; only the multi-process test runs in real time."""

from __future__ import annotations

import asyncio
import math
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from loopback import Response
from pg_server import disk_rows
from sqlcache import CacheManager, CachePreloader, PreloadError, ResourcePool, RetryPolicy

KLINES = "/api/v3/klines"
BTC_KEY = "market_data:BTC:1m"
CANDLES = [[1700000000000, "42000.1", "42100.0"], [1700000060000, "42100.0", "42050.5"]]
NEWER_CANDLES = [[1700000120000, "42050.5", "41990.0"]]


class FollowingSleep:
    """The scheduler's sleep, driven by the test's FakeClock.

    A sleeper wakes when the test advances the clock past its wake time. Every scheduler loop
    ends each round in a sleep, so "n sleepers parked" means n tasks finished what was due.
    """

    def __init__(self, clock) -> None:
        self.clock = clock
        self.delays: list[float] = []
        self._parked: list[tuple[float, asyncio.Future[None]]] = []
        self._changed = asyncio.Condition()

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        entry = (self.clock.now + seconds, asyncio.get_running_loop().create_future())
        self._parked.append(entry)
        async with self._changed:
            self._changed.notify_all()
        try:
            await entry[1]
        finally:
            if entry in self._parked:
                self._parked.remove(entry)

    async def settle(self, sleepers: int) -> None:
        """Wait until `sleepers` scheduler loops are asleep again."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: len(self._parked) >= sleepers), 10)

    async def advance(self, seconds: float, sleepers: int) -> None:
        """Move the clock, wake the sleepers now due, and wait for the loops to settle."""
        self.clock.advance(seconds)
        for entry in [e for e in self._parked if e[0] <= self.clock.now]:
            self._parked.remove(entry)
            entry[1].set_result(None)
        await self.settle(sleepers)


@pytest.fixture
def sleep(clock) -> FollowingSleep:
    return FollowingSleep(clock)


def make_pool(cache_dir: Path, clock, sleep: FollowingSleep, **config) -> ResourcePool:
    """A real pool on `cache_dir` whose preloader follows the fake clock without jitter. HTTP
    errors are not retried, so one failing run is one request."""
    manager = CacheManager({"disk_cache_dir": str(cache_dir), **config}, clock=clock)
    pool = ResourcePool(manager, retry=RetryPolicy(max_retries=0))
    pool.cache_preloader.sleep = sleep
    pool.cache_preloader.jitter = 0.0
    return pool


@pytest.fixture
async def resource_pool(cache_dir, clock, sleep):
    pool = make_pool(cache_dir, clock, sleep)
    yield pool
    await pool.close()


def register_btc(resource_pool: ResourcePool, url: str, **overrides) -> None:
    """The guide's preload example, as written there (only the URL is the loopback server's)."""
    arguments = dict(
        name="market_data_btc",
        loader_func=resource_pool.cache_preloader.preload_market_data,
        interval=60,  # Every minute
        args=["BTC", "1m", "binance", url],
        kwargs={"params": {"symbol": "BTCUSDT", "interval": "1m", "limit": 100}},
        cache_key="market_data:BTC:1m",
        cache_ttl=120,  # 2 minutes
        tags=["market_data", "BTC"],
        enabled=True,
    )
    resource_pool.register_preload_task(**{**arguments, **overrides})


def counting_loader(calls: list[float], clock, value="fresh"):
    """A loader that records the (fake) time of each call."""

    async def load():
        calls.append(clock())
        return value

    return load


class GatedLoader:
    """A loader that says when it has started and finishes only when the test opens its gate."""

    def __init__(self, value: str) -> None:
        self.value = value
        self.calls = 0
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()
        self.cancelled = False

    async def __call__(self) -> str:
        self.calls += 1
        self.entered.set()
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return self.value


def table_rows(cache_dir: Path, sql: str, params=()) -> list[tuple]:
    """Read the database as a person debugging it would: plain sqlite3, read-only."""
    with sqlite3.connect(f"file:{cache_dir / 'sqlcache.db'}?mode=ro", uri=True) as db:
        return db.execute(sql, params).fetchall()


# ---------------------------------------------------------------- schedule


async def test_a_task_runs_on_schedule_and_fills_its_key_with_its_tags(resource_pool, http_server, sleep, clock):
    http_server.script(KLINES, Response.json(CANDLES))
    register_btc(resource_pool, http_server.url(KLINES))
    started = clock.now

    await resource_pool.start_cache_preloader()
    await sleep.settle(1)

    hits = http_server.hits(KLINES)
    assert len(hits) == 1
    assert hits[0].query == {"symbol": ["BTCUSDT"], "interval": ["1m"], "limit": ["100"]}
    assert await resource_pool.cache_get(BTC_KEY) == CANDLES
    stats = (await resource_pool.get_preloader_stats())["task_stats"]["market_data_btc"]
    assert (stats["last_run"], stats["next_run"], stats["run_count"]) == (started, started + 60, 1)

    await sleep.advance(59, 1)
    assert len(http_server.hits(KLINES)) == 1, "ran before its interval was up"
    await sleep.advance(1, 1)
    assert len(http_server.hits(KLINES)) == 2
    stats = (await resource_pool.get_preloader_stats())["task_stats"]["market_data_btc"]
    assert (stats["last_run"], stats["run_count"], stats["error_count"]) == (started + 60, 2, 0)

    assert await resource_pool.cache_invalidate_by_tag("BTC") == 1  # stored with the task's tags
    assert await resource_pool.cache_get(BTC_KEY) is None


async def test_a_little_jitter_lengthens_each_wait(resource_pool, sleep, clock):
    preloader = resource_pool.cache_preloader
    preloader.jitter = 0.2
    calls: list[float] = []
    resource_pool.register_preload_task("tick", counting_loader(calls, clock), 10, cache_key="tick")

    await resource_pool.start_cache_preloader()
    await sleep.settle(1)
    for _ in range(3):
        await sleep.advance(12, 1)

    waits = sleep.delays
    assert len(calls) == 4
    assert all(10 <= wait <= 12 for wait in waits)
    assert len(set(waits)) > 1


async def test_the_preloader_reads_the_cache_manager_the_guide_assigns_after_construction(tmp_path, http_server, clock, sleep):
    http_server.script(KLINES, Response.json(CANDLES))
    resource_pool = ResourcePool(CacheManager({"disk_cache_dir": str(tmp_path / "first")}))
    resource_pool.cache_preloader.sleep = sleep
    register_btc(resource_pool, http_server.url(KLINES))
    try:
        # The guide's "Resource Pool Configuration", with its own directory.
        cache_config = {
            "memory_max_size": 10000,
            "disk_max_size": 100 * 1024 * 1024,
            "default_ttl": 300,
            "disk_cache_enabled": True,
            "disk_cache_dir": str(tmp_path / "cache"),
            "invalidation_strategy": "lru",
        }
        resource_pool.http_pool_size = 30
        resource_pool.cache_ttl = 300
        resource_pool.cache_manager = CacheManager(cache_config, clock=clock)
        await resource_pool.start_cache_preloader()
        await sleep.settle(1)

        assert await resource_pool.cache_manager.get(BTC_KEY) == CANDLES
        assert table_rows(tmp_path / "cache", "SELECT name, run_count FROM preload_tasks") == [("market_data_btc", 1)]
        assert not (tmp_path / "first" / "sqlcache.db").exists()
    finally:
        await resource_pool.close()


async def test_run_now_fills_the_key_at_once_and_the_guide_prints_its_statistics(resource_pool, http_server, clock, capsys):
    http_server.script(KLINES, Response.json(CANDLES))
    register_btc(resource_pool, http_server.url(KLINES))

    # Run a preload task immediately
    assert await resource_pool.run_preload_task_now("market_data_btc") is True

    assert await resource_pool.cache_get(BTC_KEY) == CANDLES
    # The guide's "Preloader Statistics", as written there.
    stats = await resource_pool.get_preloader_stats()
    print(f"Preload tasks: {stats['tasks']}")
    print(f"Running tasks: {stats['running_tasks']}")
    print(f"Preload count: {stats['preload_count']}")
    print(f"Preload error count: {stats['preload_error_count']}")
    for name, task_stats in stats["task_stats"].items():
        print(f"Task {name}:")
        print(f"  Enabled: {task_stats['enabled']}")
        print(f"  Interval: {task_stats['interval']}s")
        print(f"  Last run: {task_stats['last_run']}")
        print(f"  Error count: {task_stats['error_count']}")
    assert capsys.readouterr().out.splitlines() == [
        "Preload tasks: 1",
        "Running tasks: 0",
        "Preload count: 1",
        "Preload error count: 0",
        "Task market_data_btc:",
        "  Enabled: True",
        "  Interval: 60s",
        f"  Last run: {clock.now}",
        "  Error count: 0",
    ]
    assert stats["task_stats"]["market_data_btc"]["run_count"] == 1
    assert stats["task_stats"]["market_data_btc"]["last_error"] is None
    with pytest.raises(KeyError, match="no_such_task"):
        await resource_pool.run_preload_task_now("no_such_task")


async def test_disabled_tasks_do_not_run_until_enabled(resource_pool, sleep, clock):
    preloader = resource_pool.cache_preloader
    quiet: list[float] = []
    busy: list[float] = []
    resource_pool.register_preload_task("quiet", counting_loader(quiet, clock), 10, cache_key="quiet", enabled=False)
    resource_pool.register_preload_task("busy", counting_loader(busy, clock), 10, cache_key="busy")

    await resource_pool.start_cache_preloader()
    await sleep.settle(2)
    for _ in range(3):
        await sleep.advance(10, 2)
    assert (len(quiet), len(busy)) == (0, 4)
    assert await resource_pool.cache_get("quiet") is None
    assert (await resource_pool.get_preloader_stats())["task_stats"]["quiet"]["enabled"] is False

    await preloader.set_task_enabled("quiet", True)
    await sleep.advance(10, 2)
    assert len(quiet) == 1
    assert await resource_pool.cache_get("quiet") == "fresh"

    await preloader.set_task_enabled("quiet", False)
    await sleep.advance(10, 2)
    await sleep.advance(10, 2)
    assert len(quiet) == 1
    assert table_rows(resource_pool.cache_manager.config.disk_cache_dir, "SELECT name, enabled FROM preload_tasks ORDER BY name") == [
        ("busy", 1), ("quiet", 0)
    ]


async def test_a_task_never_overlaps_itself_in_this_process_or_another(resource_pool, cache_dir, clock, sleep):
    slow_loader = GatedLoader("slow value")
    resource_pool.register_preload_task("slow", slow_loader, 10, cache_key="slow")
    await resource_pool.start_cache_preloader()
    await slow_loader.entered.wait()

    # While the scheduled run is in flight: run-now callers join it, and time passing does not
    # start a second run.
    joiners = [asyncio.create_task(resource_pool.run_preload_task_now("slow")) for _ in range(3)]
    clock.advance(5)  # still within the run's lease (interval 10 + margin)
    # Another process on the same file (its own manager and pool) sees the lease and does not run.
    other = make_pool(cache_dir, clock, sleep)
    other_calls: list[float] = []
    other.register_preload_task("slow", counting_loader(other_calls, clock), 10, cache_key="slow")
    try:
        assert await other.run_preload_task_now("slow") is False
        assert (await other.get_preloader_stats())["running_tasks"] == 1

        slow_loader.gate.set()
        assert await asyncio.gather(*joiners) == [True, True, True]
        assert (slow_loader.calls, other_calls) == (1, [])
        assert (await other.get_preloader_stats())["task_stats"]["slow"]["run_count"] == 1
        assert await other.cache_get("slow") == "slow value"
    finally:
        await other.close()


async def test_the_lease_follows_the_hosts_clock_not_the_schedules(resource_pool, cache_dir, clock, sleep):
    slow_loader = GatedLoader("slow value")
    resource_pool.register_preload_task("slow", slow_loader, 10, cache_key="slow")
    run = asyncio.create_task(resource_pool.run_preload_task_now("slow"))
    await slow_loader.entered.wait()
    other = make_pool(cache_dir, clock, sleep)
    other.register_preload_task("slow", counting_loader([], clock), 10, cache_key="slow")
    try:
        clock.advance(3600)  # the schedule's clock jumps: a live run's lease must not lapse with it
        assert await other.run_preload_task_now("slow") is False
        assert (await other.get_preloader_stats())["running_tasks"] == 1
        slow_loader.gate.set()
        assert await run is True

        # A process that died mid-run left a lease that lapsed a second ago on the host's clock;
        # a fake clock standing still (at 2023 here) must not keep it alive.
        with sqlite3.connect(cache_dir / "sqlcache.db") as db:
            db.execute("UPDATE preload_task_state SET lease_owner = 'crashed', lease_until = ?", (time.time() - 1,))
        assert await other.run_preload_task_now("slow") is True
    finally:
        await other.close()


async def test_a_run_that_lost_its_lease_does_not_store_its_result(resource_pool, cache_dir):
    late = GatedLoader("late value")
    await resource_pool.cache_set("prices", "new owner's value")
    resource_pool.register_preload_task("prices", late, 10, cache_key="prices")
    run = asyncio.create_task(resource_pool.run_preload_task_now("prices"))
    await late.entered.wait()
    with sqlite3.connect(cache_dir / "sqlcache.db") as db:  # as if the lease lapsed and was claimed
        db.execute("UPDATE preload_task_state SET lease_owner = 'other:1:x', lease_until = ?", (time.time() + 60,))
    late.gate.set()

    assert await run is False
    assert await resource_pool.cache_get("prices") == "new owner's value"
    stats = (await resource_pool.get_preloader_stats())["task_stats"]["prices"]
    assert stats["last_error"].startswith("lease lost")
    assert table_rows(cache_dir, "SELECT running_in FROM preload_tasks") == [("other:1:x",)]  # left to its owner


async def test_a_plain_function_loader_runs_off_the_event_loop(resource_pool):
    entered, release = threading.Event(), threading.Event()

    def blocking_fetch(symbol):
        entered.set()
        if not release.wait(5):  # set by the event loop below, which must keep running meanwhile
            raise RuntimeError("the event loop was blocked")
        return {"symbol": symbol, "price": 42000}

    resource_pool.register_preload_task("blocking", blocking_fetch, 10, args=["BTC"], cache_key="blocking")
    run = asyncio.create_task(resource_pool.run_preload_task_now("blocking"))
    assert await asyncio.to_thread(entered.wait, 5)
    assert (await resource_pool.get_preloader_stats())["running_tasks"] == 1
    release.set()

    assert await run is True
    assert await resource_pool.cache_get("blocking") == {"symbol": "BTC", "price": 42000}


async def test_a_plain_function_may_return_an_awaitable(resource_pool):
    async def fetch(symbol):
        return {"symbol": symbol}

    resource_pool.register_preload_task("lambda", lambda: fetch("ETH"), 10, cache_key="eth")

    assert await resource_pool.run_preload_task_now("lambda") is True
    assert await resource_pool.cache_get("eth") == {"symbol": "ETH"}


# ---------------------------------------------------------------- failures


async def test_errors_are_counted_kept_and_backed_off_while_other_tasks_run(resource_pool, http_server, sleep, clock):
    outage = Response.json({"code": -1003, "msg": "Too much request weight used"}, status=503)
    http_server.script(KLINES, Response.json(CANDLES), outage, outage, Response.json(NEWER_CANDLES))
    register_btc(resource_pool, http_server.url(KLINES))
    healthy: list[float] = []
    resource_pool.register_preload_task("eth", counting_loader(healthy, clock), 60, cache_key="eth")
    started = clock.now

    def btc_stats(stats):
        task = stats["task_stats"]["market_data_btc"]
        return task["run_count"], task["error_count"], task["consecutive_errors"], task["next_run"] - started

    await resource_pool.start_cache_preloader()
    await sleep.settle(2)
    await sleep.advance(60, 2)  # t=60: 503
    stats = await resource_pool.get_preloader_stats()
    assert btc_stats(stats) == (2, 1, 1, 60 + 120)
    assert "HTTP 503" in stats["task_stats"]["market_data_btc"]["last_error"]
    assert await resource_pool.cache_get(BTC_KEY) == CANDLES  # the old value stays until its TTL ends

    await sleep.advance(60, 2)  # t=120: backing off
    assert len(http_server.hits(KLINES)) == 2
    await sleep.advance(60, 2)  # t=180: 503 again, twice the wait
    assert btc_stats(await resource_pool.get_preloader_stats()) == (3, 2, 2, 180 + 240)
    failing = table_rows(
        resource_pool.cache_manager.config.disk_cache_dir,
        "SELECT name, consecutive_errors FROM preload_tasks WHERE consecutive_errors > 0",
    )
    assert failing == [("market_data_btc", 2)]
    for _ in range(3):
        await sleep.advance(60, 2)  # t=240..360: backing off
    assert len(http_server.hits(KLINES)) == 3
    await sleep.advance(60, 2)  # t=420: the API is back
    stats = await resource_pool.get_preloader_stats()
    assert btc_stats(stats) == (4, 2, 0, 420 + 60)
    assert stats["task_stats"]["market_data_btc"]["last_success"] == started + 420
    assert "HTTP 503" in stats["task_stats"]["market_data_btc"]["last_error"]  # kept for the post-mortem
    assert await resource_pool.cache_get(BTC_KEY) == NEWER_CANDLES
    assert len(healthy) == 8, "a failing task held up the healthy one"
    assert (stats["preload_count"], stats["preload_error_count"]) == (2 + 8, 2)


async def test_a_loader_that_hangs_is_cancelled_at_its_timeout(resource_pool):
    async def hangs():
        await asyncio.Event().wait()

    resource_pool.register_preload_task("hangs", hangs, 10, cache_key="hangs", timeout=0.05)  # through the pool

    assert await resource_pool.run_preload_task_now("hangs") is False

    stats = (await resource_pool.get_preloader_stats())["task_stats"]["hangs"]
    assert (stats["run_count"], stats["error_count"], stats["last_error"]) == (1, 1, "timed out after 0.05s")
    assert stats["running"] is False


async def test_preload_market_data_returns_the_data_and_raises_on_an_error_status(resource_pool, http_server):
    http_server.script(KLINES, Response.json(CANDLES), Response.json({"msg": "slow down"}, status=429))
    preloader = resource_pool.cache_preloader

    assert await preloader.preload_market_data("BTC", "1m", "binance", http_server.url(KLINES), {"limit": 2}) == CANDLES
    with pytest.raises(PreloadError) as raised:
        await preloader.preload_market_data("BTC", "1m", "binance", http_server.url(KLINES))
    assert (raised.value.status, raised.value.data) == (429, {"msg": "slow down"})
    assert http_server.hits(KLINES)[0].query == {"limit": ["2"]}


# ---------------------------------------------------------------- persistence


async def test_statistics_survive_close_and_reopen(cache_dir, clock, sleep):
    attempts: list[float] = []

    async def flaky():
        attempts.append(clock())
        if len(attempts) == 1:
            raise ConnectionError("exchange unreachable")
        return {"price": 42000}

    first = make_pool(cache_dir, clock, sleep)
    first.register_preload_task("flaky", flaky, 30, cache_key="price", tags=["prices"])
    assert await first.run_preload_task_now("flaky") is False
    clock.advance(5)
    assert await first.run_preload_task_now("flaky") is True
    last_run = clock.now
    await first.close()

    clock.advance(10)
    second = make_pool(cache_dir, clock, sleep)
    second.register_preload_task("flaky", flaky, 30, cache_key="price", tags=["prices"])
    try:
        stats = (await second.get_preloader_stats())["task_stats"]["flaky"]
        assert (stats["run_count"], stats["error_count"], stats["consecutive_errors"]) == (2, 1, 0)
        assert stats["last_error"] == "ConnectionError: exchange unreachable"
        assert (stats["last_run"], stats["last_success"], stats["next_run"]) == (last_run, last_run, last_run + 30)

        await second.start_cache_preloader()  # restarted: waits for the saved next run, no stampede
        await sleep.settle(1)
        assert len(attempts) == 2
        await sleep.advance(20, 1)
        assert len(attempts) == 3
    finally:
        await second.close()

    rows = table_rows(
        cache_dir,
        "SELECT name, enabled, interval, last_run, run_count, error_count, last_error, last_success,"
        " last_duration >= 0, next_run, running_in FROM preload_tasks",
    )
    iso = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(last_run + 30))
    assert rows == [("flaky", 1, 30.0, iso, 3, 1, "ConnectionError: exchange unreachable", iso, 1, rows[0][9], None)]
    assert rows[0][9] > iso


async def test_statistics_are_kept_in_memory_when_the_disk_tier_is_off(clock, sleep):
    pool = ResourcePool(CacheManager({"disk_cache_enabled": False}, clock=clock))
    pool.cache_preloader.sleep = sleep
    calls: list[float] = []
    pool.register_preload_task("memo", counting_loader(calls, clock), 10, cache_key="memo")
    try:
        assert await pool.run_preload_task_now("memo") is True
        await pool.start_cache_preloader()
        await pool.stop_cache_preloader()
        clock.advance(10)
        assert await pool.run_preload_task_now("memo") is True

        stats = await pool.get_preloader_stats()
        assert (stats["preload_count"], stats["task_stats"]["memo"]["last_run"]) == (2, clock.now)
        assert await pool.cache_get("memo") == "fresh"
    finally:
        await pool.close()


# ---------------------------------------------------------------- several processes


class Workers:
    """Agent processes (tests/preload_worker.py) sharing one task on one cache directory, or,
    given the `disk_config` of a PostgreSQL store, on one database as hosts of their own (each
    with its own `disk_cache_dir`).

    `async with Workers(...) as workers:` starts them and waits until each is ready; the body
    calls `go()`; leaving waits for them to finish cleanly (or kills them on an error).
    """

    def __init__(self, cache: Path | dict, count: int, *options: str) -> None:
        worker = Path(__file__).with_name("preload_worker.py")
        self.processes = [
            subprocess.Popen([sys.executable, str(worker), *self.location(cache, host), *options],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for host in range(count)
        ]

    @staticmethod
    def location(cache: Path | dict, host: int) -> list[str]:
        """The worker's arguments naming the cache: the directory, or a host's own and the URL."""
        if isinstance(cache, Path) or "disk_cache_url" not in cache:
            return [str(cache if isinstance(cache, Path) else cache["disk_cache_dir"])]
        return [str(Path(cache["disk_cache_dir"]) / f"host{host}"), "--disk-url", cache["disk_cache_url"]]

    async def __aenter__(self) -> "Workers":
        """Wait until every worker has opened the database and registered the task."""
        try:
            for process in self.processes:
                line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 30)
                assert line == b"ready\n", process.stderr.read().decode() if process.poll() is not None else line
        except BaseException:
            self.kill()
            raise
        return self

    async def __aexit__(self, error_type, error, traceback) -> None:
        try:
            if error_type is None:
                await self.finish()
        finally:
            self.kill()

    def go(self) -> None:
        """Start every worker's preloader at once."""
        for process in self.processes:
            process.stdin.write(b"go\n")
            process.stdin.flush()

    async def finish(self) -> None:
        for process in self.processes:
            _, stderr = await asyncio.to_thread(process.communicate, timeout=60)
            assert process.returncode == 0, stderr.decode()

    def kill(self) -> None:
        """End any worker still running (the test failed)."""
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()

    @property
    def pids(self) -> set[int]:
        return {process.pid for process in self.processes}


def logged_runs(run_log: Path) -> list[tuple[float, float, int]]:
    """The runs in a worker run log as (start, end, pid), by start; a run that never logged its
    end lasts forever."""
    starts: dict[int, list[float]] = {}
    runs = []
    for line in run_log.read_text().splitlines():
        kind, pid, at = line.split()
        if kind == "start":
            starts.setdefault(int(pid), []).append(float(at))
        else:
            runs.append((starts[int(pid)].pop(0), float(at), int(pid)))
    runs += [(start, math.inf, pid) for pid, left in starts.items() for start in left]
    return sorted(runs)


def assert_one_run_at_a_time(runs: list[tuple[float, float, int]], interval: float) -> None:
    """No run began before the one before it ended, nor within half an interval of its start."""
    for (start, end, pid), (next_start, _, next_pid) in zip(runs, runs[1:]):
        assert next_start >= end, f"run of {next_pid} at {next_start} overlapped that of {pid} {start}..{end}: {runs}"
        assert next_start - start > 0.5 * interval, f"two runs in one interval: {runs}"


async def test_two_processes_sharing_a_task_run_it_once_per_interval_in_all(disk_config, http_server):
    # On PostgreSQL the two processes are two hosts: a directory each, one database.
    config = disk_config()
    http_server.script("/shared", Response.json(CANDLES))
    interval, run_for = 0.5, 3.2
    options = ["--url", http_server.url("/shared"), "--interval", str(interval), "--run-for", str(run_for)]
    async with Workers(config, 2, *options) as workers:
        workers.go()

    hits = http_server.hits("/shared")
    starts = sorted(float(hit.query["started"][0]) for hit in hits)
    gaps = [round(later - earlier, 3) for earlier, later in zip(starts, starts[1:])]
    # Without the lease both processes would run at every interval: twice the requests, in pairs.
    assert 4 <= len(hits) <= run_for / interval + 1, gaps
    assert min(gaps) > 0.5 * interval, f"two runs in one interval: {gaps}"
    assert {hit.query["pid"][0] for hit in hits} <= {str(pid) for pid in workers.pids}
    assert await disk_rows(config, "SELECT run_count, error_count, running_in FROM preload_tasks") == [(len(hits), 0, None)]
    assert await disk_rows(config, "SELECT count(*) FROM cache_entries WHERE key = 'market_data:BTC:1m'") == [(1,)]


async def test_a_plain_function_loader_longer_than_any_lease_still_runs_once_in_all_processes(cache_dir, tmp_path):
    # The first run blocks in time.sleep for 6.5 s: over 6 lease lengths (1 s), and past its
    # timeout (0.5 s) plus any margin a lease taken once could have had. Its process must keep
    # the lease while it runs, so the other process waits, and both run once per interval after.
    run_log = tmp_path / "runs.log"
    interval = 0.5
    options = [
        "--run-log", str(run_log), "--plain", "--first-duration", "6.5", "--duration", "0.05",
        "--interval", str(interval), "--timeout", "0.5", "--lease", "1", "--run-for", "8.5",
    ]
    async with Workers(cache_dir, 2, *options) as workers:
        workers.go()

    runs = logged_runs(run_log)
    assert len(runs) >= 2, runs  # the long one, then (after a backoff: it timed out) short ones
    assert runs[0][1] - runs[0][0] >= 6.5
    assert_one_run_at_a_time(runs, interval)
    stats = table_rows(cache_dir, "SELECT run_count, error_count, last_error, running_in FROM preload_tasks")
    assert stats == [(len(runs), 1, "timed out after 0.5s", None)]  # the long run's result was not wanted
    assert table_rows(cache_dir, "SELECT json_extract(value_json, '$.pid') FROM cache_entries") != []


async def test_a_claim_that_waits_long_for_the_lock_still_holds_its_lease_for_the_whole_run(cache_dir, tmp_path):
    # Another connection holds the write lock for 5.7 s while both processes' claims wait for it
    # (their busy timeout is 10 s): longer than the lease (1 s), and than the timeout (1 s) plus
    # any margin a lease timed from before the wait could have. The process that gets the lock
    # first must hold the lease from then on, so the other cannot start while its run (0.9 s) lasts.
    run_log = tmp_path / "runs.log"
    interval = 1.0
    options = [
        "--run-log", str(run_log), "--duration", "0.9", "--interval", str(interval),
        "--timeout", "1", "--lease", "1", "--busy-timeout", "10", "--run-for", "8",
    ]
    async with Workers(cache_dir, 2, *options) as workers:
        with sqlite3.connect(cache_dir / "sqlcache.db", isolation_level=None) as blocker:
            blocker.execute("BEGIN IMMEDIATE")  # the write lock, as a `sqlite3` shell user could take it
            workers.go()
            await asyncio.sleep(5.7)
            blocker.execute("COMMIT")

    runs = logged_runs(run_log)
    assert len(runs) >= 2, runs
    assert_one_run_at_a_time(runs, interval)
    stats = table_rows(cache_dir, "SELECT run_count, error_count, last_error, running_in FROM preload_tasks")
    assert stats == [(len(runs), 0, None, None)]


# ---------------------------------------------------------------- stopping


async def test_stop_cancels_a_loader_past_its_grace_and_leaves_the_database_consistent(resource_pool, cache_dir, clock):
    stuck = GatedLoader("never stored")  # its gate never opens
    await resource_pool.cache_set("stuck", "old value", ttl=600)
    resource_pool.register_preload_task("stuck", stuck, 10, cache_key="stuck")
    resource_pool.register_preload_task("waiting", counting_loader([], clock), 10, cache_key="waiting", enabled=False)
    resource_pool.cache_preloader.stop_grace = 0.05
    await resource_pool.start_cache_preloader()
    await stuck.entered.wait()
    assert (await resource_pool.get_preloader_stats())["running_tasks"] == 1
    running = table_rows(cache_dir, "SELECT name, running_in FROM preload_tasks WHERE running_in IS NOT NULL")
    assert running == [("stuck", resource_pool.cache_preloader.owner)]

    await resource_pool.stop_cache_preloader()

    assert stuck.cancelled
    assert not [task for task in asyncio.all_tasks() if task.get_name().startswith("preload:")]
    stats = await resource_pool.get_preloader_stats()
    assert (stats["running_tasks"], stats["started"], stats["task_stats"]["stuck"]["run_count"]) == (0, False, 0)
    assert await resource_pool.cache_get("stuck") == "old value"
    assert table_rows(cache_dir, "SELECT name, running_in, next_run FROM preload_tasks ORDER BY name") == [
        ("stuck", None, None),  # lease given back, due again at the next start
        ("waiting", None, None),
    ]
    assert table_rows(cache_dir, "PRAGMA integrity_check") == [("ok",)]


async def test_stop_lets_a_loader_mid_flight_finish_within_its_grace(resource_pool, cache_dir):
    finishing = GatedLoader("landed")
    resource_pool.register_preload_task("finishing", finishing, 10, cache_key="finishing")
    await resource_pool.start_cache_preloader()
    await finishing.entered.wait()

    stopping = asyncio.create_task(resource_pool.stop_cache_preloader())
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.shield(stopping), 0.05)  # stop waits for the loader...
    finishing.gate.set()
    await stopping  # ...which then completes its run

    assert await resource_pool.cache_get("finishing") == "landed"
    assert table_rows(cache_dir, "SELECT run_count, error_count, running_in FROM preload_tasks") == [(1, 0, None)]
    assert not finishing.cancelled


def test_register_refuses_bad_arguments(tmp_path):
    preloader = CachePreloader(ResourcePool(CacheManager({"disk_cache_dir": str(tmp_path)})))

    async def load():
        return 1

    with pytest.raises(ValueError, match="interval"):
        preloader.register_preload_task("t", load, 0)
    with pytest.raises(ValueError, match="cache_ttl"):
        preloader.register_preload_task("t", load, 10, cache_ttl=-1)
    with pytest.raises(TypeError, match="tags"):
        preloader.register_preload_task("t", load, 10, tags="BTC")
    with pytest.raises(TypeError, match="callable"):
        preloader.register_preload_task("t", "not a function", 10)
    with pytest.raises(TypeError, match="keys must be str"):
        preloader.register_preload_task("t", load, 10, cache_key=42)
    assert not (tmp_path / "sqlcache.db").exists()

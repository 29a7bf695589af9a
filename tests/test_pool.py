"""ResourcePool against the real loopback HTTP server and a real cache directory.

Retry backoff and rate-limit waits run on an injected fake clock and sleep (`FakeTime`), so they are
checked exactly and instantly; only the rate limit as seen by the server, the connection-pool size
and the timeout use real time, briefly.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from pathlib import Path
from typing import Any, Dict

import httpx
import pytest

from loopback import Response
from sqlcache import CacheLevel, CacheManager, RateLimit, ResourcePool, RetryPolicy, TransportFailure
from sqlcache._ratelimit import TokenBucket

logger = logging.getLogger(__name__)


class FakeTime:
    """A monotonic clock and a sleep that records each wait and moves the clock instead of waiting."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
async def make_pool(cache_dir, clock, fake_time):
    """`make_pool(**options)`: a pool on a fresh cache in `cache_dir`, fake time unless overridden."""
    pools: list[ResourcePool] = []

    def make(**options: Any) -> ResourcePool:
        options.setdefault("monotonic", fake_time.monotonic)
        options.setdefault("sleep", fake_time.sleep)
        manager = CacheManager({"disk_cache_dir": str(cache_dir)}, clock=clock)
        pools.append(ResourcePool(manager, **options))
        return pools[-1]

    yield make
    for pool in pools:
        await pool.close()


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------- bodies and statuses


async def test_json_bodies_are_parsed_and_others_come_back_as_text(make_pool, http_server):
    http_server.script("/json", Response.json({"price": [1.5, 2]}))
    http_server.script("/problem", Response.json({"title": "x"}, headers={"Content-Type": "application/problem+json"}))
    http_server.script("/text", Response.text("plain ünïcode"))
    http_server.script("/fake-json", Response(200, b"not json{", {"Content-Type": "application/json"}))
    pool = make_pool()

    assert await pool.http_request("GET", http_server.url("/json")) == (200, {"price": [1.5, 2]})
    assert await pool.http_request("GET", http_server.url("/problem")) == (200, {"title": "x"})
    assert await pool.http_request("GET", http_server.url("/text")) == (200, "plain ünïcode")
    assert await pool.http_request("GET", http_server.url("/fake-json")) == (200, "not json{")


async def test_request_options_reach_the_server(make_pool, http_server):
    http_server.script("/echo", lambda request: Response.json({"q": request.query, "body": request.body.decode()}))
    pool = make_pool()

    status, data = await pool.http_request("POST", http_server.url("/echo"), params={"symbol": "BTC"}, json={"n": 1})

    assert status == 200
    assert data == {"q": {"symbol": ["BTC"]}, "body": '{"n":1}'}


async def test_a_client_error_is_returned_as_status_and_body_without_retry(make_pool, http_server, fake_time):
    pool = make_pool()

    assert await pool.http_request("GET", http_server.url("/missing")) == (404, "no such path")
    assert len(http_server.hits("/missing")) == 1
    assert fake_time.sleeps == []


# ---------------------------------------------------------------------- retries


async def test_500_then_200_is_retried_after_a_jittered_backoff(make_pool, http_server, fake_time):
    http_server.script("/flaky", Response.json({"error": "boom"}, status=500), Response.json({"ok": True}))
    pool = make_pool(retry=RetryPolicy(backoff_base=0.5))

    assert await pool.http_request("GET", http_server.url("/flaky"), api_name="ex") == (200, {"ok": True})
    assert len(http_server.hits("/flaky")) == 2
    [delay] = fake_time.sleeps
    assert 0.25 <= delay <= 0.5
    stats = (await pool.get_stats())["http"]["ex"]
    assert (stats["requests"], stats["attempts"], stats["retries"], stats["errors"]) == (1, 2, 1, 0)


async def test_a_lasting_5xx_backs_off_exponentially_then_comes_back_as_status_and_body(make_pool, http_server, fake_time):
    http_server.script("/down", Response.text("maintenance", status=503))
    pool = make_pool(retry=RetryPolicy(max_retries=3, backoff_base=1.0, backoff_max=3.0))

    assert await pool.http_request("GET", http_server.url("/down")) == (503, "maintenance")
    assert len(http_server.hits("/down")) == 4
    low_high = [(0.5, 1.0), (1.0, 2.0), (1.5, 3.0)]  # steps 1, 2, 4 capped at 3; each jittered to half..all
    assert all(low <= delay <= high for delay, (low, high) in zip(fake_time.sleeps, low_high, strict=True))
    assert (await pool.get_stats())["http"]["default"]["errors"] == 1


async def test_429_waits_as_long_as_retry_after_says(make_pool, http_server, fake_time):
    http_server.script(
        "/limited",
        Response.json({"code": -1003}, status=429, headers={"Retry-After": "2"}),
        Response.json([1, 2, 3]),
    )
    pool = make_pool()

    assert await pool.http_request("GET", http_server.url("/limited")) == (200, [1, 2, 3])
    assert fake_time.sleeps == [2.0]


async def test_429_that_persists_comes_back_as_the_guide_expects(make_pool, http_server, fake_time):
    http_server.script("/limited", Response.json({"code": -1003}, status=429, headers={"Retry-After": "1"}))
    pool = make_pool(retry=RetryPolicy(max_retries=2))

    assert await pool.http_request("GET", http_server.url("/limited")) == (429, {"code": -1003})
    assert len(http_server.hits("/limited")) == 3
    assert fake_time.sleeps == [1.0, 1.0]


async def test_a_retry_after_beyond_max_retry_after_is_returned_at_once(make_pool, http_server, fake_time):
    far = "Wed, 21 Oct 2099 07:28:00 GMT"
    http_server.script("/banned", Response.json({"ban": True}, status=429, headers={"Retry-After": far}))
    http_server.script("/seconds", Response.json({"ban": True}, status=503, headers={"Retry-After": "120"}))
    pool = make_pool(retry=RetryPolicy(max_retry_after=60))

    assert await pool.http_request("GET", http_server.url("/banned")) == (429, {"ban": True})
    assert await pool.http_request("GET", http_server.url("/seconds")) == (503, {"ban": True})
    assert len(http_server.hits()) == 2
    assert fake_time.sleeps == []


async def test_a_retry_after_date_in_the_past_means_plain_backoff(make_pool, http_server, fake_time):
    past = "Wed, 21 Oct 2015 07:28:00 GMT"
    http_server.script("/x", Response.text("slow down", status=429, headers={"Retry-After": past}), Response.text("ok"))
    pool = make_pool(retry=RetryPolicy(backoff_base=0.5))

    assert await pool.http_request("GET", http_server.url("/x")) == (200, "ok")
    [delay] = fake_time.sleeps
    assert 0.25 <= delay <= 0.5


async def test_a_post_is_retried_after_429_but_not_after_500(make_pool, http_server):
    http_server.script("/order", Response.json({"error": "internal"}, status=500), Response.json({"id": 1}))
    http_server.script("/limited-order", Response.json({}, status=429), Response.json({"id": 2}))
    pool = make_pool()

    assert await pool.http_request("POST", http_server.url("/order"), json={}) == (500, {"error": "internal"})
    assert len(http_server.hits("/order")) == 1  # the exchange may have placed the order
    assert await pool.http_request("POST", http_server.url("/limited-order"), json={}) == (200, {"id": 2})
    assert len(http_server.hits("/limited-order")) == 2


async def test_retry_non_idempotent_retries_a_post_after_500(make_pool, http_server):
    http_server.script("/order", Response.json({}, status=500), Response.json({"id": 1}))
    pool = make_pool(retry=RetryPolicy(retry_non_idempotent=True))

    assert await pool.http_request("POST", http_server.url("/order"), json={}) == (200, {"id": 1})


# ---------------------------------------------------------------------- transport failures


async def test_connection_refused_is_retried_then_returned_as_status_0(make_pool, closed_port, fake_time):
    pool = make_pool(retry=RetryPolicy(max_retries=2))

    status, failure = await pool.http_request("GET", f"http://127.0.0.1:{closed_port}/x", api_name="ex")

    assert status == 0
    assert isinstance(failure, TransportFailure)
    assert isinstance(failure.error, httpx.ConnectError)
    assert failure.attempts == 3 and not failure.timed_out
    assert str(failure).startswith("ConnectError after 3 attempt(s)")
    assert len(fake_time.sleeps) == 2
    stats = (await pool.get_stats())["http"]["ex"]
    assert (stats["errors"], stats["transport_failures"], stats["retries"]) == (1, 1, 2)


async def test_a_timeout_is_retried_then_returned_as_status_0(make_pool, http_server):
    http_server.script("/slow", Response.json({}, delay=0.5))
    pool = make_pool(timeout=0.1, retry=RetryPolicy(max_retries=1))

    status, failure = await pool.http_request("GET", http_server.url("/slow"))

    assert status == 0
    assert isinstance(failure.error, httpx.ReadTimeout) and failure.timed_out
    assert len(http_server.hits("/slow")) == 2


async def test_a_per_request_timeout_overrides_the_pools(make_pool, http_server):
    http_server.script("/slow", Response.json({"late": True}, delay=0.2))
    pool = make_pool(timeout=0.05, retry=RetryPolicy(max_retries=0))

    assert await pool.http_request("GET", http_server.url("/slow"), timeout=5) == (200, {"late": True})


async def test_a_dropped_connection_is_retried_for_get_but_not_for_post(make_pool):
    # A server that closes the connection without answering: a fault the loopback server cannot produce.
    answers = iter([httpx.RemoteProtocolError("Server disconnected"), httpx.Response(200, json={"ok": 1})])

    def handler(request: httpx.Request) -> httpx.Response:
        answer = next(answers, httpx.RemoteProtocolError("Server disconnected"))
        if isinstance(answer, Exception):
            raise answer
        return answer

    pool = make_pool(client_options={"transport": httpx.MockTransport(handler)})

    assert await pool.http_request("GET", "http://127.0.0.1/x") == (200, {"ok": 1})
    status, failure = await pool.http_request("POST", "http://127.0.0.1/order")
    assert status == 0 and isinstance(failure.error, httpx.RemoteProtocolError) and failure.attempts == 1


async def test_an_error_no_retry_can_cure_is_raised(make_pool, fake_time):
    pool = make_pool()

    with pytest.raises(httpx.UnsupportedProtocol):
        await pool.http_request("GET", "ftp://127.0.0.1/file")
    assert fake_time.sleeps == []


# ---------------------------------------------------------------------- rate limits


class RecordedSleeps(list):
    """A sleep that only records how long it was asked to wait (the clock stays put)."""

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)
        await asyncio.sleep(0)


async def test_token_bucket_lets_a_burst_through_then_spaces_callers_in_arrival_order(fake_time):
    bucket = TokenBucket(RateLimit(rate=10, burst=3), clock=fake_time.monotonic, sleep=RecordedSleeps())

    assert await asyncio.gather(*(bucket.acquire() for _ in range(6))) == pytest.approx([0, 0, 0, 0.1, 0.2, 0.3])
    fake_time.now += 10  # a long pause refills the bucket, but only up to the burst
    assert await asyncio.gather(*(bucket.acquire() for _ in range(4))) == pytest.approx([0, 0, 0, 0.1])


async def test_a_caller_cancelled_while_waiting_gives_its_token_back(fake_time):
    waits: list[float] = []

    async def sleep_until_cancelled(seconds: float) -> None:
        waits.append(seconds)
        await asyncio.Event().wait()

    bucket = TokenBucket(RateLimit(rate=1), clock=fake_time.monotonic, sleep=sleep_until_cancelled)
    assert await bucket.acquire() == 0.0
    for _ in range(2):
        waiter = asyncio.ensure_future(bucket.acquire())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    assert waits == [1.0, 1.0]  # not [1.0, 2.0]: the first waiter's token came back


@pytest.mark.parametrize("rate, burst", [(0, 1), (-1, 1), (float("inf"), 1), (1, 0), (1, 1.5)])
def test_a_bad_rate_limit_is_refused(rate, burst):
    with pytest.raises(ValueError):
        RateLimit(rate, burst)


async def test_rate_limit_holds_at_the_server_under_a_burst_of_concurrent_requests(make_pool, http_server):
    rate, burst, count = 20, 2, 24
    http_server.script("/limited", Response.json({}))
    http_server.script("/free", Response.json({}))
    pool = make_pool(rate_limits={"exchange": RateLimit(rate, burst)}, monotonic=time.monotonic, sleep=asyncio.sleep)
    await pool.http_request("GET", http_server.url("/free"))  # client made: its set-up does not skew arrivals
    limited = [pool.http_request("GET", http_server.url("/limited"), api_name="exchange") for _ in range(count)]
    # At most 5 connections opened at once: the loopback server's listen backlog is 5, and beyond it
    # the kernel drops SYNs, which the client only resends a second later.
    free = [pool.http_request("GET", http_server.url("/free"), api_name="other") for _ in range(3)]

    results = await asyncio.gather(*limited, *free)

    assert all(status == 200 for status, _ in results)
    arrivals = sorted(request.at for request in http_server.hits("/limited"))
    assert len(arrivals) == count
    # In every interval [arrivals[i], arrivals[j]] at most burst + rate * length requests arrived
    # (one more allowed for scheduling jitter between the client and the server's clock).
    for i in range(count):
        for j in range(i + 1, count):
            assert j - i + 1 <= burst + rate * (arrivals[j] - arrivals[i]) + 1, (i, j, arrivals)
    assert arrivals[-1] - arrivals[0] >= (count - burst) / rate - 0.05
    free_arrivals = sorted(request.at for request in http_server.hits("/free")[1:])
    assert free_arrivals[-1] - arrivals[0] < 0.2  # another api_name is not held back
    stats = (await pool.get_stats())["http"]
    assert stats["exchange"]["rate_limit_waits"] == count - burst
    assert stats["other"]["rate_limit_waits"] == 0


async def test_rate_limits_can_be_set_after_construction_and_retries_pass_through_them(make_pool, http_server, fake_time):
    http_server.script("/x", Response.json({}, status=500), Response.json({"ok": True}))
    pool = make_pool(retry=RetryPolicy(backoff_base=0.01))
    pool.rate_limits["ex"] = 2  # requests per second, burst 1

    assert await pool.http_request("GET", http_server.url("/x"), api_name="ex") == (200, {"ok": True})
    backoff, rate_wait = fake_time.sleeps
    assert rate_wait == pytest.approx(0.5 - backoff)  # the retry waited for its token too
    stats = (await pool.get_stats())["http"]["ex"]
    assert stats["rate_limit_waits"] == 1
    assert stats["rate_limit_wait_seconds"] == pytest.approx(rate_wait)


# ---------------------------------------------------------------------- connection pool


async def test_http_pool_size_bounds_connections_and_a_new_size_takes_effect(make_pool, http_server):
    http_server.script("/slow", Response.json({}, delay=0.25))
    pool = make_pool(http_pool_size=2)

    async def arrivals_in_first_wave() -> int:
        before = len(http_server.hits("/slow"))
        await asyncio.gather(*(pool.http_request("GET", http_server.url("/slow")) for _ in range(5)))
        times = sorted(request.at for request in http_server.hits("/slow")[before:])
        return sum(1 for at in times if at - times[0] < 0.15)

    assert await arrivals_in_first_wave() == 2
    pool.http_pool_size = 5
    assert await arrivals_in_first_wave() == 5
    with pytest.raises(ValueError, match="http_pool_size"):
        pool.http_pool_size = 0


class ClosingTransport(httpx.AsyncHTTPTransport):
    """A real transport that notes when it is closed."""

    closed = 0

    async def aclose(self) -> None:
        self.closed += 1
        await super().aclose()


async def test_close_closes_the_http_client_and_releases_the_database(make_pool, http_server, cache_dir, clock):
    http_server.script("/x", Response.json({"v": 1}))
    transport = ClosingTransport()
    pool = make_pool(client_options={"transport": transport})

    async with pool:
        assert await pool.http_request("GET", http_server.url("/x")) == (200, {"v": 1})
        await pool.cache_set("k", 1)
        assert (cache_dir / "sqlcache.db-wal").exists()

    assert transport.closed == 1
    assert not (cache_dir / "sqlcache.db-wal").exists()  # SQLite removes the WAL when the last connection closes
    async with CacheManager({"disk_cache_dir": str(cache_dir)}, clock=clock) as reopened:
        assert await reopened.get("k") == 1


async def test_a_custom_transport_keeps_working_when_the_pool_size_changes(make_pool, http_server):
    http_server.script("/x", Response.json({"v": 1}))
    pool = make_pool(client_options={"transport": ClosingTransport()})

    assert await pool.http_request("GET", http_server.url("/x")) == (200, {"v": 1})
    pool.http_pool_size = 5  # the transport has its own limits; the client is kept
    assert await pool.http_request("GET", http_server.url("/x")) == (200, {"v": 1})


# ---------------------------------------------------------------------- cache calls


async def test_cache_set_uses_cache_ttl_as_reassigned(make_pool, clock):
    pool = make_pool()
    pool.cache_ttl = 10

    await pool.cache_set("market_data:BTC:1m", {"close": 1})
    await pool.cache_set("market_data:BTC:1h", {"close": 2}, ttl=100)
    clock.advance(9)
    assert await pool.cache_get("market_data:BTC:1m") == {"close": 1}
    clock.advance(2)
    assert await pool.cache_get("market_data:BTC:1m") is None
    assert await pool.cache_get("market_data:BTC:1m", "gone") == "gone"
    assert await pool.cache_get("market_data:BTC:1h") == {"close": 2}


async def test_the_guides_cache_calls(make_pool):
    pool = make_pool()
    data = [[1700000000, "42000.1"]]

    await pool.cache_set(key="market_data:BTC:1m", value=data, ttl=300, tags=["market_data", "BTC"])
    await pool.cache_set(key="market_data:BTC:5m", value=data, tags=["market_data", "BTC", "5m"])
    await pool.cache_set(key="market_data:ETH:1m", value=data, tags=["market_data", "ETH"])
    await pool.cache_set(key="order_book:ETH:depth_20", value={"bids": []}, tags=["order_book", "ETH"])
    assert await pool.cache_get("market_data:BTC:1m") == data

    assert await pool.cache_delete("market_data:BTC:1m") is True
    assert await pool.cache_get("market_data:BTC:1m") is None
    assert await pool.cache_invalidate_by_pattern("market_data:BTC:.*") == 1
    assert await pool.cache_invalidate_by_tag("ETH") == 2
    await pool.cache_set("k", 1)
    await pool.cache_clear()
    assert await pool.cache_get("k") is None


async def test_cache_get_or_set_uses_cache_ttl_and_calls_the_loader_once(make_pool, clock):
    pool = make_pool(cache_ttl=5)
    calls = 0

    async def load() -> dict:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return {"n": calls}

    values = await asyncio.gather(*(pool.cache_get_or_set("k", load, tags=["t"]) for _ in range(20)))
    assert values == [{"n": 1}] * 20 and calls == 1
    clock.advance(6)
    assert await pool.cache_get_or_set("k", load) == {"n": 2}


async def test_the_guides_configuration_with_a_default_manager_then_a_new_one(tmp_path, monkeypatch, http_server):
    monkeypatch.chdir(tmp_path)
    cache_config = {
        "memory_max_size": 10000,
        "disk_max_size": 100 * 1024 * 1024,
        "default_ttl": 300,
        "disk_cache_enabled": True,
        "disk_cache_dir": str(tmp_path / "agents-cache"),
        "invalidation_strategy": "lru",
    }
    resource_pool = ResourcePool()
    assert resource_pool.cache_manager.config.disk_cache_dir == Path("cache")
    await resource_pool.cache_set("before", 1)  # opens ./cache/sqlcache.db

    resource_pool.http_pool_size = 30
    resource_pool.cache_ttl = 300
    resource_pool.cache_manager = CacheManager(cache_config)
    await resource_pool.cache_set("after", 2)

    assert await resource_pool.cache_get("before") is None
    stats = await resource_pool.get_stats()
    assert stats["advanced_cache"]["db_path"] == str(tmp_path / "agents-cache" / "sqlcache.db")
    await resource_pool.close()
    assert not (tmp_path / "cache" / "sqlcache.db-wal").exists()  # the replaced default manager was closed too
    assert not (tmp_path / "agents-cache" / "sqlcache.db-wal").exists()


# ---------------------------------------------------------------------- fetch-through and single flight


async def test_100_concurrent_misses_cause_one_request(make_pool, http_server):
    http_server.script("/market/BTC/1m", Response.json({"candles": [1, 2, 3]}, delay=0.05))
    pool = make_pool()
    url = http_server.url("/market/BTC/1m")

    results = await asyncio.gather(
        *(pool.cached_http_request("market_data:BTC:1m", "GET", url, api_name="ex", tags=["BTC"]) for _ in range(100))
    )

    assert results == [(200, {"candles": [1, 2, 3]})] * 100
    assert len(http_server.hits("/market/BTC/1m")) == 1
    assert await pool.cached_http_request("market_data:BTC:1m", "GET", url) == (200, {"candles": [1, 2, 3]})
    assert len(http_server.hits("/market/BTC/1m")) == 1
    assert await pool.cache_invalidate_by_tag("BTC") == 1


async def test_a_failed_shared_fetch_reaches_every_caller_and_is_not_cached(make_pool, http_server, clock):
    http_server.script("/market/ETH/1m", Response.json({"error": "down"}, status=500), Response.json({"ok": True}))
    pool = make_pool(retry=RetryPolicy(max_retries=0))
    url = http_server.url("/market/ETH/1m")

    results = await asyncio.gather(*(pool.cached_http_request("m:ETH", "GET", url) for _ in range(10)))

    assert results == [(500, {"error": "down"})] * 10
    assert len(http_server.hits("/market/ETH/1m")) == 1
    assert await pool.cached_http_request("m:ETH", "GET", url, ttl=60) == (200, {"ok": True})
    clock.advance(61)
    assert await pool.cache_get("m:ETH") is None


# ---------------------------------------------------------------------- the guide's agent


class Agent:
    """The guide's agent; only the URL of the market-data API points at the loopback server."""

    def __init__(self, symbol: str, timeframe: str, base_url: str) -> None:
        self.symbol, self.timeframe, self.base_url = symbol, timeframe, base_url

    async def _run_cycle(self, resource_pool: ResourcePool) -> Dict[str, Any]:
        """Run a single agent execution cycle."""
        # Try to get data from cache
        cache_key = f"market_data:{self.symbol}:{self.timeframe}"
        market_data = await resource_pool.cache_get(cache_key)

        if market_data is None:
            # Data not in cache, fetch it
            status, market_data = await resource_pool.http_request(
                method="GET",
                url=f"{self.base_url}/market/{self.symbol}/{self.timeframe}",
                api_name="example"
            )

            if status == 200:
                # Cache the data
                await resource_pool.cache_set(
                    key=cache_key,
                    value=market_data,
                    ttl=300,  # 5 minutes
                    tags=["market_data", self.symbol, self.timeframe]
                )
            else:
                logger.error(f"Error fetching market data: {market_data}")
                return {"error": "Failed to fetch market data"}

        # Process the data
        # ...

        return {"processed": True}


async def test_the_guides_agent_fetches_once_then_reads_the_cache(make_pool, http_server, clock):
    http_server.script("/market/BTC/1m", Response.json([[1700000000, "42000.1", "42010.0"]]))
    pool = make_pool()
    agent = Agent("BTC", "1m", http_server.base_url)

    assert await agent._run_cycle(pool) == {"processed": True}
    assert len(http_server.hits("/market/BTC/1m")) == 1
    assert await agent._run_cycle(pool) == {"processed": True}
    assert len(http_server.hits("/market/BTC/1m")) == 1
    assert await pool.cache_get("market_data:BTC:1m") == [[1700000000, "42000.1", "42010.0"]]

    clock.advance(301)
    assert await agent._run_cycle(pool) == {"processed": True}
    assert len(http_server.hits("/market/BTC/1m")) == 2
    stats = await pool.get_stats()
    assert stats["http"]["example"]["requests"] == 2


async def test_the_guides_agent_reports_a_lasting_429_and_an_unreachable_api(make_pool, http_server, closed_port, caplog):
    http_server.script("/market/BTC/1m", Response.json({"code": -1003}, status=429, headers={"Retry-After": "1"}))
    pool = make_pool(retry=RetryPolicy(max_retries=1))

    assert await Agent("BTC", "1m", http_server.base_url)._run_cycle(pool) == {"error": "Failed to fetch market data"}
    assert await Agent("BTC", "1m", f"http://127.0.0.1:{closed_port}")._run_cycle(pool) == {
        "error": "Failed to fetch market data"
    }
    assert await pool.cache_get("market_data:BTC:1m") is None
    messages = [record.getMessage() for record in caplog.records if record.name == __name__]
    assert messages == [
        "Error fetching market data: {'code': -1003}",
        "Error fetching market data: ConnectError after 2 attempt(s): All connection attempts failed",
    ]


# ---------------------------------------------------------------------- statistics


async def test_stats_combine_memory_and_disk_hits_and_time_each_api(make_pool, http_server):
    http_server.script("/x", Response.json({}))
    pool = make_pool(monotonic=time.monotonic)
    assert (await pool.get_stats())["combined_cache_hit_rate"] == 0.0

    await pool.cache_manager.set("on-disk", 1, level=CacheLevel.DISK)
    await pool.cache_set("in-memory", 2)
    assert await pool.cache_get("on-disk") == 1
    assert await pool.cache_get("in-memory") == 2
    assert await pool.cache_get("absent") is None
    await pool.http_request("GET", http_server.url("/x"), api_name="binance")
    await pool.http_request("GET", http_server.url("/nope"), api_name="binance")

    stats = await pool.get_stats()
    cache = stats["advanced_cache"]
    assert (cache["memory_hits"], cache["disk_hits"], cache["gets"]) == (1, 1, 3)
    assert stats["combined_cache_hit_rate"] == pytest.approx(2 / 3)
    binance = stats["http"]["binance"]
    assert (binance["requests"], binance["errors"], binance["retries"]) == (2, 1, 0)
    assert 0 < binance["latency_avg"] <= binance["latency_max"] < 5

"""`@cache_manager.cached(...)` and `@resource_pool.cached(...)` on a real SQLite cache."""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sqlcache import CacheLevel, CacheManager, ResourcePool

TESTS = Path(__file__).parent


@pytest.fixture
async def cm(cache_dir, clock):
    manager = CacheManager({"disk_cache_dir": str(cache_dir)}, clock=clock)
    yield manager
    await manager.close()


class Calls:
    """Counts the calls of a decorated function, which returns what it was called with."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    async def __call__(self, *args: object) -> dict:
        self.calls.append(args)
        return {"args": list(args), "call": len(self.calls)}


# ---------------------------------------------------------------- keys and tags


async def test_guide_example_format_key_and_tags(cm):
    loads = Calls()

    @cm.cached(ttl=60, key="market_data:{symbol}:{timeframe}", tags=["market_data", "{symbol}"])
    async def fetch_market_data(symbol: str, timeframe: str = "1m") -> dict:
        return await loads(symbol, timeframe)

    first = await fetch_market_data("BTC")
    assert await fetch_market_data("BTC", "1m") == first  # defaults applied: the same key
    assert await fetch_market_data(timeframe="1m", symbol="BTC") == first
    assert len(loads.calls) == 1
    assert await cm.get("market_data:BTC:1m") == first  # the key a user can read and invalidate
    await fetch_market_data("ETH", "5m")
    assert await cm.invalidate_by_tag("BTC") == 1
    assert await cm.get("market_data:ETH:5m") is not None
    await fetch_market_data("BTC")
    assert loads.calls == [("BTC", "1m"), ("ETH", "5m"), ("BTC", "1m")]


async def test_format_fields_may_reach_into_an_argument(cm):
    class Venue:
        def __init__(self, name: str) -> None:
            self.name = name

        @cm.cached(key="book:{self.name}:{pair[0]}-{pair[1]}")
        async def book(self, pair: tuple[str, str]) -> str:
            return f"{self.name} {pair}"

    await Venue("kraken").book(("BTC", "USD"))
    assert await cm.get("book:kraken:BTC-USD") == "kraken ('BTC', 'USD')"


async def test_key_callable_gets_the_call_arguments(cm):
    loads = Calls()

    @cm.cached(key=lambda symbol, **options: f"quote:{symbol.upper()}")
    async def quote(symbol: str, **options: object) -> dict:
        return await loads(symbol)

    await quote("btc", venue="a")
    await quote("BTC")
    assert len(loads.calls) == 1
    assert await cm.get("quote:BTC") is not None


async def test_key_callable_must_return_a_str(cm):
    @cm.cached(key=lambda n: n)
    async def double(n: int) -> int:
        return 2 * n

    with pytest.raises(TypeError, match="returned int, not str"):
        await double(3)


async def test_default_key_tells_apart_functions_and_arguments(cm):
    loads = Calls()

    @cm.cached()
    async def first(symbol: str, depth: int = 5, venues: tuple = ("a",), filters: dict | None = None) -> dict:
        return await loads("first", symbol, depth)

    @cm.cached()
    async def second(symbol: str, depth: int = 5) -> dict:
        return await loads("second", symbol, depth)

    await first("BTC")
    await first("BTC", 5, ["a"], None)  # the same arguments once defaults are applied
    await first("BTC", filters={"b": 1, "a": [1.5, True]})
    await first("BTC", filters={"a": [1.5, True], "b": 1})  # dict order does not matter
    await first("BTC", depth=True)  # True is not 1
    await second("BTC")
    assert [call[:1] for call in loads.calls] == [("first",), ("first",), ("first",), ("second",)]


def quote_function(manager: CacheManager):
    """The function the cross-process test decorates, in this process and in another one."""

    @manager.cached(ttl=0)
    async def quote(symbol: str, depth: int = 5, venues: tuple = ("binance",), filters: dict | None = None) -> dict:
        return {"symbol": symbol, "pid": os.getpid()}

    return quote


def _other_process(directory: str) -> None:
    """Run in a child process: one call of `quote`, which stores its result under the default key."""

    async def main() -> None:
        async with CacheManager({"disk_cache_dir": directory}) as manager:
            # a set iterates in another order in another process (PYTHONHASHSEED), a dict's order is the caller's
            print(json.dumps(await quote_function(manager)("BTC", filters={"x": 1, "y": [1, 2]})))

    asyncio.run(main())


async def test_default_key_is_the_same_in_another_process(cm, cache_dir):
    script = "import sys, test_cached; test_cached._other_process(sys.argv[1])"
    env = {**os.environ, "PYTHONPATH": str(TESTS), "PYTHONHASHSEED": "random"}
    child = subprocess.run([sys.executable, "-c", script, str(cache_dir)], env=env, capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    stored = json.loads(child.stdout)
    assert stored["pid"] != os.getpid()
    quote = quote_function(cm)
    assert quote.__module__ == "test_cached"  # as in the child, which imported this file by that name
    assert await quote(filters={"y": [1, 2], "x": 1}, symbol="BTC", venues=["binance"]) == stored


@pytest.mark.parametrize("argument, what", [
    (object(), "object"),
    ({1, 2}, "set"),
    (b"raw", "bytes"),
    ({1: "a"}, "int dict key"),
    ([1, float("nan")], "nan"),
    (2**70, "beyond 64 bits"),
])
async def test_default_key_refuses_arguments_without_a_stable_encoding(cm, argument, what):
    loads = Calls()

    @cm.cached()
    async def lookup(value: object) -> dict:
        return await loads(value)

    with pytest.raises(TypeError, match="key=") as raised:
        await lookup(argument)
    assert "lookup" in str(raised.value)
    assert loads.calls == []  # refused before the function ran


# ---------------------------------------------------------------- caching behaviour


async def test_concurrent_calls_with_one_key_share_one_call(cm):
    release = asyncio.Event()
    loads = Calls()

    @cm.cached(key="slow:{n}")
    async def slow(n: int) -> dict:
        await release.wait()
        return await loads(n)

    callers = [asyncio.ensure_future(slow(1)) for _ in range(50)] + [asyncio.ensure_future(slow(2))]
    await asyncio.sleep(0.01)
    release.set()
    results = await asyncio.gather(*callers)
    assert sorted(loads.calls) == [(1,), (2,)]
    assert all(result == results[0] for result in results[:50])


async def assert_lives(decorated, ttl: float, clock, loads: Calls) -> None:
    """`decorated("BTC")` is called once in `ttl` seconds (by the clock), and again after."""
    calls = len(loads.calls)
    await decorated("BTC")
    clock.advance(ttl - 1)
    await decorated("BTC")
    assert len(loads.calls) == calls + 1
    clock.advance(2)
    await decorated("BTC")
    assert len(loads.calls) == calls + 2


async def test_ttl_follows_the_clock(cm, clock):
    loads = Calls()

    @cm.cached(ttl=60, key="price:{symbol}")
    async def price(symbol: str) -> dict:
        return await loads(symbol)

    await assert_lives(price, 60, clock, loads)


async def test_ttl_none_means_default_ttl(cache_dir, clock):
    async with CacheManager({"disk_cache_dir": str(cache_dir), "default_ttl": 10}, clock=clock) as manager:
        loads = Calls()

        @manager.cached()
        async def value() -> dict:
            return await loads()

        await value()
        clock.advance(11)
        await value()
        assert len(loads.calls) == 2


async def test_level_memory_keeps_it_off_disk(cm):
    @cm.cached(key="local", level=CacheLevel.MEMORY)
    async def local() -> int:
        return 7

    assert await local() == 7
    assert (await cm.get_stats())["disk_entries"] == 0
    assert await cm.get("local") == 7


async def test_an_exception_is_not_cached(cm):
    outcomes = [ConnectionError("down"), "up"]

    @cm.cached(key="flaky")
    async def flaky() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    with pytest.raises(ConnectionError):
        await flaky()
    assert await flaky() == "up"


async def test_a_stored_value_survives_a_restart(cache_dir, clock):
    loads = Calls()
    for _ in range(2):
        async with CacheManager({"disk_cache_dir": str(cache_dir)}, clock=clock) as manager:

            @manager.cached(key="durable:{n}")
            async def durable(n: int) -> dict:
                return await loads(n)

            await durable(1)
    assert len(loads.calls) == 1


@pytest.mark.skipif(
    "stale_ttl" not in inspect.signature(CacheManager.get_or_set).parameters,
    reason="CacheManager.get_or_set has no stale_ttl yet",
)
async def test_stale_ttl_serves_the_old_value_and_refreshes_once(cm, clock):
    loads = Calls()

    @cm.cached(ttl=10, key="swr", stale_ttl=30)
    async def swr() -> dict:
        return await loads()

    first = await swr()
    clock.advance(15)  # past the ttl, inside the stale window
    assert await asyncio.gather(*(swr() for _ in range(5))) == [first] * 5
    for _ in range(100):
        if len(loads.calls) == 2:
            break
        await asyncio.sleep(0.01)
    assert len(loads.calls) == 2  # one background refresh for five callers
    assert (await swr())["call"] == 2


# ---------------------------------------------------------------- the decorated function


async def test_keeps_name_docstring_and_signature(cm):
    async def fetch(symbol: str, timeframe: str = "1m") -> dict:
        """Candles of `symbol`."""
        return {}

    decorated = cm.cached(key="{symbol}")(fetch)
    assert decorated.__name__ == "fetch" and decorated.__doc__ == "Candles of `symbol`."
    assert decorated.__wrapped__ is fetch
    assert inspect.signature(decorated) == inspect.signature(fetch)
    assert inspect.iscoroutinefunction(decorated)


async def test_bad_call_arguments_raise_as_without_the_decorator(cm):
    @cm.cached(key="{symbol}")
    async def fetch(symbol: str) -> str:
        return symbol

    with pytest.raises(TypeError, match="symbol"):
        await fetch()


# ---------------------------------------------------------------- refused at decoration time


def test_a_plain_function_is_refused(cm):
    with pytest.raises(TypeError, match="async def"):
        cm.cached()(lambda: 1)

    def plain(symbol: str) -> str:
        return symbol

    with pytest.raises(TypeError, match="plain"):
        cm.cached(key="{symbol}")(functools.partial(plain, "x"))


@pytest.mark.parametrize("options, match", [
    ({"key": "market_data:{symbol}:{timefrme}"}, r"\{timefrme\} names no parameter"),
    ({"key": "market_data:{}"}, r"\{\} names no parameter"),
    ({"key": "market_data:{0}"}, r"\{0\} names no parameter"),
    ({"tags": ["market_data", "{sym}"]}, r"\{sym\} names no parameter"),
    ({"key": "market_data:{symbol"}, "bad format string"),
    ({"key": "price:{symbol}:{timeframe:>{width}}"}, r"\{width\} names no parameter"),
])
def test_a_format_field_that_names_no_parameter_is_refused(cm, options, match):
    async def fetch(symbol: str, timeframe: str = "1m") -> dict:
        return {}

    with pytest.raises(ValueError, match=match):
        cm.cached(**options)(fetch)


@pytest.mark.parametrize("options, error", [
    ({"ttl": -1}, ValueError),
    ({"ttl": "60"}, TypeError),
    ({"stale_ttl": -5}, ValueError),
    ({"level": "everywhere"}, ValueError),
    ({"tags": "market_data"}, TypeError),
    ({"tags": ["a", 1]}, TypeError),
    ({"key": 42}, TypeError),
])
def test_bad_options_are_refused_up_front(cm, options, error):
    with pytest.raises(error):
        cm.cached(**options)


# ---------------------------------------------------------------- through the pool


async def test_pool_cached_uses_the_manager_it_holds_at_each_call(cache_dir, clock, tmp_path):
    first = CacheManager({"disk_cache_dir": str(cache_dir)}, clock=clock)
    second = CacheManager({"disk_cache_dir": str(tmp_path / "other")}, clock=clock)
    loads = Calls()
    async with ResourcePool(first, cache_ttl=30) as pool:

        @pool.cached(key="ticker:{symbol}", tags=["{symbol}"])
        async def ticker(symbol: str) -> dict:
            return await loads(symbol)

        await assert_lives(ticker, 30, clock, loads)  # the pool's cache_ttl, which ttl=None means
        pool.cache_manager = second  # the guide reassigns it after construction
        await ticker("BTC")
        assert len(loads.calls) == 3
        assert await second.invalidate_by_tag("BTC") == 1
    await first.close()

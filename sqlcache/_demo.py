"""`sqlcache demo`: agents, the preloader and a market-data API, all on this machine.

A stdlib `http.server` on 127.0.0.1 plays the exchange. Two "engines" (two `ResourcePool`s,
each with its own `CacheManager` on one cache directory, as two agent processes would be)
run agents with the guide's `_run_cycle`; engine A also runs the preloader. Halfway through, a
tag is invalidated. The summary shows the hit rates, the HTTP calls the cache saved, and the
commands to look inside the file the demo leaves behind.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import shlex
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict
from urllib.parse import parse_qs, urlsplit

from ._manager import CacheManager
from ._pool import ResourcePool

logger = logging.getLogger("sqlcache.demo")

PRICES = {"BTC": 65_000.0, "ETH": 3_400.0, "SOL": 150.0, "ADA": 0.45}  # LUNA is delisted: HTTP 404
TIMEFRAMES = {"1m": 60, "5m": 300, "1h": 3600}
# What each agent watches, in order: agent i takes WATCHLIST[i % len].
WATCHLIST = [("BTC", "1m"), ("ETH", "1m"), ("SOL", "1m"), ("BTC", "5m"), ("ETH", "1h"), ("ADA", "5m")]
# TTL by timeframe, after the guide's advice to follow the data's volatility (seconds).
TTL = {"1m": 15, "5m": 150, "1h": 1800}
PRELOADED = [("BTC", "1m"), ("ETH", "1m"), ("LUNA", "1m")]  # the hot series, and one that fails
PRELOAD_INTERVAL = 5.0  # the guide's 60 s, scaled down so the demo shows several runs
API_LATENCY = 0.03  # seconds the fake exchange takes per request
CANDLES = 100
INVALIDATED_TAG = "BTC"


# ---------------------------------------------------------------- the exchange


class MarketDataServer:
    """GET /market/{symbol}/{timeframe}?limit=N -> JSON candles [time, open, high, low, close, volume]."""

    def __init__(self) -> None:
        self.requests = 0
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="market-data-server", daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> "MarketDataServer":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def answer(self, path: str, query: str) -> tuple[int, dict[str, Any]]:
        """The status and JSON body for a request."""
        with self._lock:
            self.requests += 1
        parts = path.strip("/").split("/")
        if len(parts) != 3 or parts[0] != "market":
            return 404, {"error": "no such endpoint; try /market/BTC/1m"}
        symbol, timeframe = parts[1], parts[2]
        if symbol not in PRICES:
            return 404, {"error": f"unknown or delisted symbol {symbol}"}
        if timeframe not in TIMEFRAMES:
            return 400, {"error": f"timeframe must be one of {', '.join(TIMEFRAMES)}"}
        limit = parse_qs(query).get("limit", [str(CANDLES)])[0]
        if not limit.isdigit() or not 1 <= int(limit) <= 500:
            return 400, {"error": "limit must be a whole number from 1 to 500"}
        return 200, {"symbol": symbol, "timeframe": timeframe, "candles": candles(symbol, timeframe, int(limit))}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                time.sleep(API_LATENCY)  # a remote API is never instant; this thread is the server's
                parts = urlsplit(self.path)
                status, body = server.answer(parts.path, parts.query)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


def candles(symbol: str, timeframe: str, limit: int) -> list[list[float]]:
    """A random walk that depends on the symbol, timeframe and current candle, like a real feed."""
    step = TIMEFRAMES[timeframe]
    now = int(time.time()) // step * step
    rng = random.Random(f"{symbol}:{timeframe}:{now}")
    price, rows = PRICES[symbol], []
    for start in range(now - step * (limit - 1), now + 1, step):
        close = price * (1 + rng.gauss(0, 0.002))
        high, low = max(price, close) * (1 + rng.random() / 1000), min(price, close) * (1 - rng.random() / 1000)
        rows.append([start, round(price, 4), round(high, 4), round(low, 4), round(close, 4), round(rng.uniform(1, 50), 3)])
        price = close
    return rows


# ---------------------------------------------------------------- agents


@dataclass
class MarketAgent:
    """An agent as in the guide: each cycle reads its market data through the cache."""

    symbol: str
    timeframe: str
    base_url: str
    cycles: int = 0
    api_calls: int = 0
    signals: Dict[str, int] = field(default_factory=lambda: {"buy": 0, "sell": 0, "hold": 0})

    async def _run_cycle(self, resource_pool: ResourcePool) -> Dict[str, Any]:
        """Run a single agent execution cycle (the guide's pattern)."""
        self.cycles += 1
        cache_key = f"market_data:{self.symbol}:{self.timeframe}"
        market_data = await resource_pool.cache_get(cache_key)

        if market_data is None:
            self.api_calls += 1
            status, market_data = await resource_pool.http_request(
                method="GET",
                url=f"{self.base_url}/market/{self.symbol}/{self.timeframe}",
                api_name="example",
                params={"limit": CANDLES},
            )
            if status == 200:
                await resource_pool.cache_set(
                    key=cache_key,
                    value=market_data,
                    ttl=TTL[self.timeframe],
                    tags=["market_data", self.symbol, self.timeframe],
                )
            else:
                logger.error("Error fetching market data: %s", market_data)
                return {"error": "Failed to fetch market data"}

        signal = _signal(market_data["candles"])
        self.signals[signal] += 1
        return {"processed": True, "signal": signal}

    async def run_until(self, resource_pool: ResourcePool, deadline: float) -> None:
        while time.monotonic() < deadline:
            await self._run_cycle(resource_pool)
            await asyncio.sleep(random.uniform(0.05, 0.15))


def _signal(rows: list[list[float]]) -> str:
    """A toy strategy: the last close against the average of the last 20."""
    closes = [row[4] for row in rows[-20:]]
    average = sum(closes) / len(closes)
    if closes[-1] > average * 1.001:
        return "buy"
    return "sell" if closes[-1] < average * 0.999 else "hold"


# ---------------------------------------------------------------- the run


def run(directory: Path, *, duration: float, agents: int) -> int:
    """Run the demo in `directory` for `duration` seconds with `agents` agents; the exit code."""
    _fresh(directory)
    logging.getLogger("sqlcache").addHandler(_PrintHandler())
    with MarketDataServer() as server:
        print(f"sqlcache demo: market-data API on {server.base_url}, cache in {directory}/")
        print(f"{agents} agents in 2 engines for {duration:g} s; the preloader refreshes "
              f"{', '.join(f'{s} {t}' for s, t in PRELOADED)} every {PRELOAD_INTERVAL:g} s")
        summary = asyncio.run(_demo(directory, server, duration, agents))
    _print_summary(summary, directory)
    return 0


def _fresh(directory: Path) -> None:
    """Start from an empty cache: remove an earlier demo's database files (and nothing else)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("sqlcache.db", "sqlcache.db-wal", "sqlcache.db-shm"):
        (directory / name).unlink(missing_ok=True)


class _PrintHandler(logging.Handler):
    """The library's warnings (the failing preload task) as indented lines among the progress."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        print(f"      ! {record.getMessage()}")


async def _demo(directory: Path, server: MarketDataServer, duration: float, count: int) -> dict[str, Any]:
    engines = [ResourcePool(CacheManager({"disk_cache_dir": directory})) for _ in range(2)]
    team = [MarketAgent(symbol, timeframe, server.base_url)
            for symbol, timeframe in (WATCHLIST[i % len(WATCHLIST)] for i in range(count))]
    try:
        _register_preload_tasks(engines[0], server.base_url)
        await engines[0].start_cache_preloader()
        started = time.monotonic()
        deadline = started + duration
        work = [asyncio.create_task(agent.run_until(engines[i % 2], deadline)) for i, agent in enumerate(team)]
        await _watch(engines, team, server, started, deadline)
        await asyncio.gather(*work)
        elapsed = time.monotonic() - started
        await engines[0].stop_cache_preloader()
        stats = [await engine.get_stats() for engine in engines]
        preloader = await engines[0].get_preloader_stats()
    finally:
        for engine in engines:
            await engine.close()
    return {"elapsed": elapsed, "agents": team, "server_calls": server.requests, "stats": stats, "preloader": preloader}


def _register_preload_tasks(pool: ResourcePool, base_url: str) -> None:
    for symbol, timeframe in PRELOADED:
        pool.register_preload_task(
            name=f"market_data_{symbol.lower()}_{timeframe}",
            loader_func=pool.cache_preloader.preload_market_data,
            interval=PRELOAD_INTERVAL,
            args=[symbol, timeframe, "example", f"{base_url}/market/{symbol}/{timeframe}"],
            kwargs={"params": {"limit": CANDLES}},
            cache_key=f"market_data:{symbol}:{timeframe}",
            cache_ttl=TTL[timeframe],
            tags=["market_data", symbol, timeframe],
        )


async def _watch(engines: list[ResourcePool], team: list[MarketAgent], server: MarketDataServer,
                 started: float, deadline: float) -> None:
    """A progress line every second; the tag invalidation halfway."""
    invalidate_at, invalidated = started + (deadline - started) / 2, False
    next_line = started + 1.0
    while (now := time.monotonic()) < deadline:
        await asyncio.sleep(max(0.0, min(next_line, deadline) - now))
        if not invalidated and time.monotonic() >= invalidate_at:
            invalidated = True
            removed = await engines[1].cache_invalidate_by_tag(INVALIDATED_TAG)
            print(f"{time.monotonic() - started:5.1f}s  market event: invalidated tag {INVALIDATED_TAG!r} "
                  f"({removed} entries) from engine B; engine A hears of it through the database")
        if time.monotonic() >= next_line:
            next_line += 1.0
            await _progress(engines, team, server, started)


async def _progress(engines: list[ResourcePool], team: list[MarketAgent], server: MarketDataServer,
                    started: float) -> None:
    stats = [await engine.get_stats() for engine in engines]
    cache = stats[0]["advanced_cache"]
    cycles = sum(agent.cycles for agent in team)
    agent_calls = sum(agent.api_calls for agent in team)
    print(f"{time.monotonic() - started:5.1f}s  cycles {cycles:5d}  hit rate {_combined(stats):6.1%}  "
          f"API calls {server.requests:3d} (agents {agent_calls}, preloader {server.requests - agent_calls})  "
          f"disk {cache['disk_entries']} entries, {cache['disk_size'] / 1024:.1f} KiB")


def _combined(stats: list[dict[str, Any]]) -> float:
    return _rate(stats, "hits", "misses")


def _rate(stats: list[dict[str, Any]], hits: str, misses: str) -> float:
    """Hits / (hits + misses) over every engine's cache statistics."""
    found = sum(s["advanced_cache"][hits] for s in stats)
    total = found + sum(s["advanced_cache"][misses] for s in stats)
    return found / total if total else 0.0


def _print_summary(summary: dict[str, Any], directory: Path) -> None:
    stats, team = summary["stats"], summary["agents"]
    cycles = sum(agent.cycles for agent in team)
    agent_calls = sum(agent.api_calls for agent in team)
    calls = summary["server_calls"]
    saved = cycles - calls
    print()
    print(f"Done in {summary['elapsed']:.1f} s: {len(team)} agents ran {cycles} cycles.")
    print(f"  memory hit rate    {_rate(stats, 'memory_hits', 'memory_misses'):6.1%}  (gets served from each engine's memory)")
    print(f"  disk hit rate      {_rate(stats, 'disk_hits', 'disk_misses'):6.1%}  (memory misses served from the shared file)")
    print(f"  combined hit rate  {_combined(stats):6.1%}")
    print(f"  HTTP calls saved   {saved} of {cycles}: without a cache every cycle calls the API; with it the API "
          f"got {calls} calls ({agent_calls} from agents, {calls - agent_calls} from the preloader)")
    print(f"  agents waited about {max(saved, 0) * API_LATENCY:.0f} s less for the API, all together "
          f"({API_LATENCY * 1000:.0f} ms per call)")
    for name, task in sorted(summary["preloader"]["task_stats"].items()):
        failure = f", last error: {task['last_error']}" if task["error_count"] else ""
        print(f"  preload task {name}: {task['run_count']} runs, {task['error_count']} errors{failure}")
    longest = max(team, key=lambda agent: TTL[agent.timeframe])
    _print_commands(directory, f"market_data:{longest.symbol}:{longest.timeframe}")


def _print_commands(directory: Path, key: str) -> None:
    """The commands to look inside the file; `key` is a live key worth a `get`."""
    where, db = shlex.quote(str(directory)), shlex.quote(str(directory / "sqlcache.db"))
    print()
    print("Look inside the cache file it wrote:")
    for command in ("stats", "keys", f"keys --tag {INVALIDATED_TAG}", f"get {key}", "tags", "tasks", "check"):
        print(f"  sqlcache --dir {where} {command}")
    print(f'  sqlcache --dir {where} sql "SELECT key, size, expires_at, access_count FROM cache_entries ORDER BY access_count DESC"')
    print(f'  sqlite3 {db} "SELECT tag, entries, bytes FROM cache_tags ORDER BY bytes DESC"')
    print(f'  sqlite3 {db} "SELECT name, run_count, error_count, last_error FROM preload_tasks"')
    sys.stdout.flush()

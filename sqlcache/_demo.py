"""`sqlcache demo`: agents, the preloader and a market-data API, all on this machine.

A stdlib `http.server` on 127.0.0.1 plays the exchange. Two "engines" (two `ResourcePool`s,
each with its own `CacheManager` on one cache directory, as two agent processes would be)
run agents with the guide's `_run_cycle`; engine A also runs the preloader. Halfway through, a
tag is invalidated. The summary shows the hit rates, the HTTP calls the cache saved, and the
commands to look inside the file the demo leaves behind.

The demo only ever writes to a directory of its own: one it creates (mode 0700, with a marker
file), or an empty one. Given a directory with anything else in it, another cache above all, it
refuses and changes nothing. A re-run in its own directory starts afresh, unless another process
has that cache open. Ctrl-C stops the agents early; the summary is still printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import random
import shlex
import signal
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, Iterator
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

DEFAULT_DIR = "sqlcache-demo"  # also in .gitignore
MARKER = ".sqlcache-demo"  # written into a directory the demo creates: the proof it is the demo's
DB_FILES = ("sqlcache.db", "sqlcache.db-wal", "sqlcache.db-shm")  # what a re-run removes
DEMO_FILES = frozenset({MARKER, "sqlcache.lock", *DB_FILES})  # all a demo directory ever holds
# SQLite's "DMS" byte in the -shm file: every connection to a WAL database holds a shared lock
# on it while open (https://sqlite.org/walformat.html), so an exclusive lock means nobody has it.
SHM_DMS_BYTE = 128

# Rows the demo did not write: keys other than its series, tasks other than its preload tasks.
FOREIGN_ENTRIES = "SELECT count(*) FROM entries WHERE key NOT IN (SELECT value FROM json_each(?))"
FOREIGN_TASKS = "SELECT count(*) FROM preload_task_state WHERE name NOT IN (SELECT value FROM json_each(?))"


class ForeignDirectory(Exception):
    """The directory holds something the demo did not create; nothing was changed."""


class DirectoryInUse(Exception):
    """The demo's own directory is open in another process; nothing was changed."""


def cache_key(symbol: str, timeframe: str) -> str:
    """The key an agent or a preload task stores a series under."""
    return f"market_data:{symbol}:{timeframe}"


def task_name(symbol: str, timeframe: str) -> str:
    """The preload task that refreshes a series."""
    return f"market_data_{symbol.lower()}_{timeframe}"


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
        key = cache_key(self.symbol, self.timeframe)
        market_data = await resource_pool.cache_get(key)

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
                    key=key,
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

    async def run_until(self, resource_pool: ResourcePool, deadline: float, stop: asyncio.Event) -> None:
        """Run cycles until the deadline, or until `stop` (Ctrl-C) ends the current one."""
        while time.monotonic() < deadline and not stop.is_set():
            await self._run_cycle(resource_pool)
            await _pause(stop, random.uniform(0.05, 0.15))


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    """Sleep `seconds`, or less if `stop` is set meanwhile."""
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def _signal(rows: list[list[float]]) -> str:
    """A toy strategy: the last close against the average of the last 20."""
    closes = [row[4] for row in rows[-20:]]
    average = sum(closes) / len(closes)
    if closes[-1] > average * 1.001:
        return "buy"
    return "sell" if closes[-1] < average * 0.999 else "hold"


# ---------------------------------------------------------------- the run


def run(directory: Path, *, duration: float, agents: int) -> bool:
    """Run the demo in `directory` for `duration` seconds with `agents` agents.

    Returns False when Ctrl-C cut it short (the summary is printed either way). Raises
    `ForeignDirectory` or `DirectoryInUse`, having changed nothing, for a directory it may not use.
    """
    _claim(directory)
    logging.getLogger("sqlcache").addHandler(_PrintHandler())
    failing = [f"{s} {t}" for s, t in PRELOADED if s not in PRICES]
    with MarketDataServer() as server:
        print(f"sqlcache demo: market-data API on {server.base_url}, cache in {directory}/")
        print(f"Note: the preload task for {', '.join(failing)} fails on purpose (the API answers 404 for a "
              f"delisted symbol), so its errors below are expected and `sqlcache tasks` has one to show.")
        print(f"{agents} agents in 2 engines for {duration:g} s (Ctrl-C stops early); the preloader refreshes "
              f"{', '.join(f'{s} {t}' for s, t in PRELOADED)} every {PRELOAD_INTERVAL:g} s", flush=True)
        summary = asyncio.run(_demo(directory, server, duration, agents))
    _print_summary(summary, directory)
    return not summary["interrupted"]


def _claim(directory: Path) -> None:
    """Make `directory` the demo's, empty of cache files, or raise having changed nothing.

    A new directory is created 0700 and marked. An empty one is marked. One with the marker,
    only demo files, and only the demo's keys and tasks in its database is an earlier run's: its
    database files are removed, under the library's open lock, once no process has them open.
    """
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True)
        directory.chmod(0o700)  # whatever the umask
        _mark(directory)
        return
    if not directory.is_dir():
        raise ForeignDirectory(f"refused: {directory} is not a directory; nothing was changed")
    names = set(os.listdir(directory))
    if not names:
        _mark(directory)
        return
    if MARKER not in names:
        what = "another cache" if "sqlcache.db" in names else "files"
        raise _foreign(directory, f"it holds {what} the demo did not create")
    if names - DEMO_FILES:
        raise _foreign(directory, f"it holds files the demo does not write ({', '.join(sorted(names - DEMO_FILES)[:3])})")
    with _opening_lock(directory):
        _require_idle(directory)
        _require_demo_rows(directory / "sqlcache.db")
        with _idle(directory):
            for name in DB_FILES:
                (directory / name).unlink(missing_ok=True)


def _foreign(directory: Path, why: str) -> ForeignDirectory:
    return ForeignDirectory(
        f"refused: {directory} is not a directory the demo created ({why}); nothing was changed: "
        f"give --dir a new or empty directory"
    )


def _mark(directory: Path) -> None:
    (directory / MARKER).write_text(
        "Created by `sqlcache demo`, which may reset the cache here on its next run.\n", encoding="utf-8"
    )


@contextlib.contextmanager
def _opening_lock(directory: Path) -> Iterator[None]:
    """The flock the library holds while it opens the cache (SQLiteStore._lock_file), so no
    process can open it meanwhile; refused at once if one is opening it now."""
    with open(directory / "sqlcache.lock", "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _in_use(directory) from None
        yield  # closing the file releases the flock


def _in_use(directory: Path) -> DirectoryInUse:
    return DirectoryInUse(
        f"refused: the demo cache in {directory} is open in another process; nothing was changed: "
        f"stop that process or give --dir a new directory"
    )


@contextlib.contextmanager
def _idle(directory: Path) -> Iterator[None]:
    """Hold SQLite's DMS lock, which no connection to the database can share: proof that none is
    open. Without a -shm file no WAL connection is open either."""
    shm = directory / "sqlcache.db-shm"
    try:
        fd = os.open(shm, os.O_RDWR)
    except FileNotFoundError:
        yield
        return
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, SHM_DMS_BYTE, os.SEEK_SET)
        except OSError:
            raise _in_use(directory) from None
        yield
    finally:
        os.close(fd)


def _require_idle(directory: Path) -> None:
    """Refuse before reading the database if another process has it open."""
    with _idle(directory):
        pass


def _require_demo_rows(db: Path) -> None:
    """Refuse a database holding any key or preload task the demo does not write."""
    if not db.exists():
        return
    keys = [cache_key(symbol, timeframe) for symbol in [*PRICES, *(s for s, _ in PRELOADED)] for timeframe in TIMEFRAMES]
    tasks = [task_name(symbol, timeframe) for symbol, timeframe in PRELOADED]
    try:
        with contextlib.closing(sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True)) as connection:
            foreign = connection.execute(FOREIGN_ENTRIES, (json.dumps(keys),)).fetchone()[0]
            foreign += connection.execute(FOREIGN_TASKS, (json.dumps(tasks),)).fetchone()[0]
    except sqlite3.Error as error:
        raise _foreign(db.parent, f"its sqlcache.db cannot be read as the demo's: {error}") from None
    if foreign:
        raise _foreign(db.parent, f"its sqlcache.db holds {foreign} entries or tasks the demo did not write")


class _PrintHandler(logging.Handler):
    """The library's warnings (the failing preload task) as indented lines among the progress."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        print(f"      ! {record.getMessage()}", flush=True)


async def _demo(directory: Path, server: MarketDataServer, duration: float, count: int) -> dict[str, Any]:
    engines = [ResourcePool(CacheManager({"disk_cache_dir": directory})) for _ in range(2)]
    team = [MarketAgent(symbol, timeframe, server.base_url)
            for symbol, timeframe in (WATCHLIST[i % len(WATCHLIST)] for i in range(count))]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, _interrupted, loop, stop)
    try:
        _register_preload_tasks(engines[0], server.base_url)
        await engines[0].start_cache_preloader()
        started = time.monotonic()
        deadline = started + duration
        work = [asyncio.create_task(agent.run_until(engines[i % 2], deadline, stop)) for i, agent in enumerate(team)]
        await _watch(engines, team, server, started, deadline, stop)
        await asyncio.gather(*work)
        elapsed = time.monotonic() - started
        await engines[0].stop_cache_preloader()
        stats = [await engine.get_stats() for engine in engines]
        preloader = await engines[0].get_preloader_stats()
    finally:
        for engine in engines:
            await engine.close()
        loop.remove_signal_handler(signal.SIGINT)
    return {"elapsed": elapsed, "agents": team, "server_calls": server.requests, "stats": stats,
            "preloader": preloader, "interrupted": stop.is_set()}


def _interrupted(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """The first Ctrl-C: let the agents finish their cycle, then close and summarise. A second
    one gets Python's own KeyboardInterrupt (the command exits 130 at once)."""
    print("\nInterrupted: stopping the agents, closing the cache, then the summary (Ctrl-C again to quit now)",
          flush=True)
    stop.set()
    loop.remove_signal_handler(signal.SIGINT)


def _register_preload_tasks(pool: ResourcePool, base_url: str) -> None:
    for symbol, timeframe in PRELOADED:
        pool.register_preload_task(
            name=task_name(symbol, timeframe),
            loader_func=pool.cache_preloader.preload_market_data,
            interval=PRELOAD_INTERVAL,
            args=[symbol, timeframe, "example", f"{base_url}/market/{symbol}/{timeframe}"],
            kwargs={"params": {"limit": CANDLES}},
            cache_key=cache_key(symbol, timeframe),
            cache_ttl=TTL[timeframe],
            tags=["market_data", symbol, timeframe],
        )


async def _watch(engines: list[ResourcePool], team: list[MarketAgent], server: MarketDataServer,
                 started: float, deadline: float, stop: asyncio.Event) -> None:
    """A progress line every second; the tag invalidation halfway."""
    invalidate_at, invalidated = started + (deadline - started) / 2, False
    next_line = started + 1.0
    while (now := time.monotonic()) < deadline and not stop.is_set():
        await _pause(stop, max(0.0, min(next_line, deadline) - now))
        if stop.is_set():
            break
        if not invalidated and time.monotonic() >= invalidate_at:
            invalidated = True
            removed = await engines[1].cache_invalidate_by_tag(INVALIDATED_TAG)
            print(f"{time.monotonic() - started:5.1f}s  market event: invalidated tag {INVALIDATED_TAG!r} "
                  f"({removed} entries) from engine B; engine A hears of it through the database", flush=True)
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
          f"disk {cache['disk_entries']} entries, {cache['disk_size'] / 1024:.1f} KiB", flush=True)


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
    ended = "Interrupted after" if summary["interrupted"] else "Done in"
    how = " (Ctrl-C)" if summary["interrupted"] else ""
    print(f"{ended} {summary['elapsed']:.1f} s{how}: {len(team)} agents ran {cycles} cycles.")
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
    _print_commands(directory, cache_key(longest.symbol, longest.timeframe))


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

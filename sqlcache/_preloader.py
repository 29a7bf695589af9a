"""`CachePreloader`: loaders that keep hot keys warm, scheduled on asyncio, watched in SQL.

Each registered task runs its loader every `interval` seconds (plus a little jitter) and stores
the result under its `cache_key` with its TTL and tags. Task definitions, statistics, schedule
and a lease live in the `preload_task_state` table of the cache's SQLite file (view
`preload_tasks`), shared by every process that registers the task: a process runs a task only
after claiming its lease in one `UPDATE`, so each interval runs it once in all, and every
process's runs add up in the task's one row. With the disk tier disabled the same table lives in
an in-memory SQLite database: statistics then last as long as the preloader object.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import os
import random
import socket
import sqlite3
import time
import uuid
from dataclasses import dataclass
from importlib import resources
from typing import Any, Awaitable, Callable, Iterable, Mapping, NamedTuple, Protocol, Sequence

import aiosqlite
import orjson

from ._manager import CacheManager, _check_key, _tags
from ._sqlite import connect

logger = logging.getLogger("sqlcache")

LEASE_MARGIN = 5.0
"""Seconds a lease outlives its run's timeout: how late a task runs after its process died."""
MAX_JITTER = 5.0
"""Most seconds of jitter, however long the interval: enough to spread processes and tasks."""
MAX_BACKOFF_EXPONENT = 30  # 2**30 intervals is past any max_backoff; keeps the float finite
ERROR_TEXT_LIMIT = 500  # characters of an error message kept in last_error

# ---------------------------------------------------------------- statements

# Create a task's row, or update the definition of an existing one; its statistics, schedule and
# lease are kept, so a restarted process neither forgets them nor runs the task early.
REGISTER_TASK = """
INSERT INTO preload_task_state (name, enabled, interval, timeout, cache_key, cache_ttl, tags)
VALUES (:name, :enabled, :interval, :timeout, :cache_key, :cache_ttl, :tags)
ON CONFLICT (name) DO UPDATE SET
    enabled = excluded.enabled, interval = excluded.interval, timeout = excluded.timeout,
    cache_key = excluded.cache_key, cache_ttl = excluded.cache_ttl, tags = excluded.tags
"""

# Take the lease of a task that is due (or of any task when forced), unless a live lease is held:
# one atomic statement, so of several processes waking together exactly one gets the row.
CLAIM_TASK = """
UPDATE preload_task_state SET lease_owner = :owner, lease_until = :lease_until
WHERE name = :name
  AND (lease_until IS NULL OR lease_until <= :now)
  AND (:force OR (enabled AND coalesce(next_run, 0) <= :now))
RETURNING consecutive_errors
"""

# What a process that did not get the lease needs to decide how long to wait.
READ_SCHEDULE = "SELECT enabled, next_run, lease_until FROM preload_task_state WHERE name = ?"

# Add a finished run to the statistics, and, if this process still holds the lease (it lapses
# only when a run outlived its timeout and margin), set the next run and release the lease.
FINISH_RUN = """
UPDATE preload_task_state SET
    run_count = run_count + 1,
    error_count = error_count + (:error IS NOT NULL),
    consecutive_errors = CASE WHEN :error IS NULL THEN 0 ELSE consecutive_errors + 1 END,
    last_run = :started,
    last_duration = :duration,
    last_success = CASE WHEN :error IS NULL THEN :finished ELSE last_success END,
    last_error = coalesce(:error, last_error),
    last_error_at = CASE WHEN :error IS NULL THEN last_error_at ELSE :finished END,
    next_run = CASE WHEN lease_owner = :owner THEN :next_run ELSE next_run END,
    lease_until = CASE WHEN lease_owner = :owner THEN NULL ELSE lease_until END,
    lease_owner = CASE WHEN lease_owner = :owner THEN NULL ELSE lease_owner END
WHERE name = :name
"""

SET_ENABLED = "UPDATE preload_task_state SET enabled = ? WHERE name = ?"

# On stop: give back the leases of runs that were cancelled, so the tasks are due again at once.
RELEASE_LEASES = "UPDATE preload_task_state SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = ?"

# The statistics of the tasks registered in this process, by the primary key.
READ_TASKS = """
SELECT name, enabled, interval, timeout, cache_key, cache_ttl, tags, run_count, error_count,
       consecutive_errors, last_run, last_success, last_error, last_error_at, last_duration,
       next_run, lease_owner, lease_until
FROM preload_task_state WHERE name IN (SELECT value FROM json_each(?))
"""
_STAT_COLUMNS = (
    "enabled", "interval", "timeout", "cache_key", "cache_ttl", "tags", "run_count", "error_count",
    "consecutive_errors", "last_run", "last_success", "last_error", "last_error_at", "last_duration",
    "next_run", "lease_owner", "lease_until",
)


class PreloadError(RuntimeError):
    """A preload fetch got an answer it cannot cache (`preload_market_data` on a non-200 status).

    Raised inside a task's run, it counts as the run's error: the cached value stays until its
    TTL ends, and the task backs off.
    """

    def __init__(self, message: str, status: int, data: Any):
        super().__init__(message)
        self.status = status
        self.data = data


@dataclass
class PreloadTask:
    """One registered task: what to call, where to store its result, how often."""

    name: str
    loader: Callable[..., Any]
    interval: float
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    cache_key: str | None
    cache_ttl: float | None
    tags: tuple[str, ...]
    enabled: bool
    timeout: float

    def definition(self) -> dict[str, Any]:
        """The columns `REGISTER_TASK` writes."""
        return {
            "name": self.name, "enabled": self.enabled, "interval": self.interval, "timeout": self.timeout,
            "cache_key": self.cache_key, "cache_ttl": self.cache_ttl, "tags": orjson.dumps(self.tags).decode(),
        }


class Schedule(NamedTuple):
    """A task's row as seen by a process deciding when to try again."""

    enabled: bool
    next_run: float | None
    lease_until: float | None


# ---------------------------------------------------------------- storage


class _Database(Protocol):
    async def fetch(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[tuple[Any, ...]]: ...

    async def close(self) -> None: ...


class _FileDatabase:
    """The cache's SQLite file, through a connection of our own in autocommit mode: every
    statement above is one atomic statement, so none needs a transaction around it."""

    def __init__(self, connection: aiosqlite.Connection):
        self._connection = connection

    @classmethod
    async def open(cls, manager: CacheManager) -> "_FileDatabase":
        await manager.open()  # creates the file and applies the migrations, ours included
        config = manager.config
        connection = await connect(config.db_path, busy_timeout=config.busy_timeout, isolation_level=None)
        return cls(connection)

    async def fetch(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in await self._connection.execute_fetchall(sql, params)]

    async def close(self) -> None:
        await self._connection.close()


class _MemoryDatabase:
    """The same table in an in-memory SQLite database, for a cache whose disk tier is off.

    Statements on memory take microseconds, so they run on the event loop; closing keeps the
    data, so statistics survive stop and start of the same preloader.
    """

    def __init__(self) -> None:
        self._connection = sqlite3.connect(":memory:", isolation_level=None)
        script = resources.files("sqlcache.migrations").joinpath("0002_preloader.sql").read_text(encoding="utf-8")
        self._connection.executescript(script)

    async def fetch(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[tuple[Any, ...]]:
        return self._connection.execute(sql, params).fetchall()

    async def close(self) -> None:
        pass


class TaskTable:
    """The preloader's statements on `preload_task_state`, one method each."""

    def __init__(self, database: _Database):
        self.database = database

    async def register(self, task: PreloadTask) -> None:
        await self.database.fetch(REGISTER_TASK, task.definition())

    async def claim(self, name: str, owner: str, now: float, lease_until: float, force: bool) -> int | None:
        """Take the lease; the task's consecutive failures so far, or None if not claimed."""
        params = {"name": name, "owner": owner, "now": now, "lease_until": lease_until, "force": force}
        rows = await self.database.fetch(CLAIM_TASK, params)
        return rows[0][0] if rows else None

    async def schedule(self, name: str) -> Schedule | None:
        rows = await self.database.fetch(READ_SCHEDULE, (name,))
        return Schedule(bool(rows[0][0]), rows[0][1], rows[0][2]) if rows else None

    async def finish(self, name: str, owner: str, *, started: float, finished: float, duration: float,
                     error: str | None, next_run: float) -> None:
        params = {"name": name, "owner": owner, "started": started, "finished": finished,
                  "duration": duration, "error": error, "next_run": next_run}
        await self.database.fetch(FINISH_RUN, params)

    async def set_enabled(self, name: str, enabled: bool) -> None:
        await self.database.fetch(SET_ENABLED, (enabled, name))

    async def release(self, owner: str) -> None:
        await self.database.fetch(RELEASE_LEASES, (owner,))

    async def stats(self, names: Iterable[str]) -> dict[str, dict[str, Any]]:
        rows = await self.database.fetch(READ_TASKS, (orjson.dumps(list(names)).decode(),))
        return {row[0]: dict(zip(_STAT_COLUMNS, row[1:])) for row in rows}


# ---------------------------------------------------------------- the preloader


class CachePreloader:
    """Runs registered loaders on a schedule and stores their results in the pool's cache.

    `resource_pool` needs `cache_manager` (read at every use: the guide reassigns it after
    construction) and, for `preload_market_data`, `http_request`. The clock is the manager's,
    so tests that move a fake clock move the schedule. Knobs, also plain attributes:
    `sleep` (the coroutine the scheduler waits with; tests inject one that follows the fake
    clock), `jitter` (each wait is lengthened by up to this fraction of the interval, at most
    `MAX_JITTER` seconds, so processes and tasks do not fire in lockstep), `max_backoff`
    (longest wait after failures, in seconds, unless the interval is longer) and `stop_grace`
    (seconds `stop` lets a running loader finish before cancelling it).
    """

    def __init__(
        self,
        resource_pool: Any,
        *,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        jitter: float = 0.1,
        max_backoff: float = 600.0,
        stop_grace: float = 5.0,
    ):
        self.resource_pool = resource_pool
        self.sleep = sleep
        self.jitter = jitter
        self.max_backoff = max_backoff
        self.stop_grace = stop_grace
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._rng = random.Random()
        self._tasks: dict[str, PreloadTask] = {}
        self._unsaved: set[str] = set()  # registered since the table last saw them
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._runs: dict[str, asyncio.Task[bool | None]] = {}
        self._table: TaskTable | None = None
        self._table_manager: CacheManager | None = None
        self._memory: tuple[CacheManager, _MemoryDatabase] | None = None
        self._open_lock = asyncio.Lock()
        self._started = False
        self._last_stats: dict[str, Any] | None = None

    # ------------------------------------------------------------ registering

    def register_preload_task(
        self,
        name: str,
        loader_func: Callable[..., Any],
        interval: float,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        cache_key: str | None = None,
        cache_ttl: float | None = None,
        tags: Iterable[str] | None = None,
        enabled: bool = True,
        *,
        timeout: float | None = None,
    ) -> None:
        """Register (or redefine) a task: every `interval` seconds, `await loader_func(*args,
        **kwargs)` (a plain function works too) and store its result under `cache_key`
        (if given) for `cache_ttl` seconds (None: the cache's default) with `tags`.

        A run taking longer than `timeout` seconds (default: the interval) is cancelled and
        counted as an error. The definition reaches the database at the next awaited call.
        """
        if not isinstance(name, str) or not name:
            raise TypeError("a preload task needs a non-empty str name")
        if not callable(loader_func):
            raise TypeError(f"loader_func of task {name!r} is not callable")
        if cache_key is not None:
            _check_key(cache_key)
        task = PreloadTask(
            name=name,
            loader=loader_func,
            interval=_positive_seconds("interval", interval),
            args=tuple(args or ()),
            kwargs=dict(kwargs or {}),
            cache_key=cache_key,
            cache_ttl=None if cache_ttl is None else _seconds("cache_ttl", cache_ttl),
            tags=_tags(tags),
            enabled=bool(enabled),
            timeout=_positive_seconds("timeout", interval if timeout is None else timeout),
        )
        self._tasks[name] = task
        self._unsaved.add(name)
        if self._started:
            self._spawn(name)

    async def set_task_enabled(self, name: str, enabled: bool) -> None:
        """Enable or disable a task in every process that shares the database.

        A disabled task is skipped by the scheduler (a run in progress finishes); a task
        enabled again runs when it is due, at the latest one interval later.
        """
        task = self._task(name)
        task.enabled = bool(enabled)
        table = await self._tasks_table()
        await table.set_enabled(name, task.enabled)

    def _task(self, name: str) -> PreloadTask:
        try:
            return self._tasks[name]
        except KeyError:
            raise KeyError(f"no preload task named {name!r}") from None

    # ------------------------------------------------------------ running

    async def run_preload_task_now(self, name: str) -> bool:
        """Run a task now, whatever its schedule or enabled flag; True if it stored a fresh value.

        If the task is running in this process the call waits for that run and reports it;
        if another process holds its lease, it returns False at once (that run's value will
        land in the shared cache). A failure is counted like a scheduled one, not raised.
        """
        self._task(name)
        return bool(await self._run(name, force=True))

    async def _run(self, name: str, force: bool) -> bool | None:
        """Run the task unless it is running (then join that run): True on success, False on
        failure or cancellation, None if the lease was not taken (not due, or held elsewhere)."""
        while (running := self._runs.get(name)) is not None:
            outcome = await _outcome(running)
            if outcome is not None or not force:
                return outcome
        run = asyncio.get_running_loop().create_task(self._claim_and_load(self._tasks[name], force))
        self._runs[name] = run
        run.add_done_callback(lambda done: self._runs.pop(name) if self._runs.get(name) is done else None)
        return await _outcome(run)

    async def _claim_and_load(self, task: PreloadTask, force: bool) -> bool | None:
        table = await self._tasks_table()
        started = self._clock()
        failures = await table.claim(task.name, self.owner, started, started + task.timeout + LEASE_MARGIN, force)
        if failures is None:
            return None
        began = time.monotonic()
        error = None
        try:
            value = await self._load(task)
            if task.cache_key is not None:
                await self._manager().set(task.cache_key, value, task.cache_ttl, tags=task.tags)
        except Exception as exc:  # any loader failure is the run's error, never the scheduler's
            error = _describe(exc, task.timeout)
            logger.warning("sqlcache: preload task %r failed: %s", task.name, error)
        finished = self._clock()
        if error is None:
            next_run = max(started + task.interval, finished)
        else:
            next_run = finished + self._backoff(task.interval, failures + 1)
        await table.finish(task.name, self.owner, started=started, finished=finished,
                           duration=time.monotonic() - began, error=error, next_run=next_run)
        return error is None

    @staticmethod
    async def _load(task: PreloadTask) -> Any:
        result = task.loader(*task.args, **task.kwargs)
        if inspect.isawaitable(result):
            result = await asyncio.wait_for(result, task.timeout)
        return result

    def _backoff(self, interval: float, failures: int) -> float:
        """Seconds to wait after `failures` failures in a row: the interval, doubled per failure,
        at most `max_backoff` (or the interval, if that is longer)."""
        return min(interval * 2 ** min(failures, MAX_BACKOFF_EXPONENT), max(interval, self.max_backoff))

    # ------------------------------------------------------------ scheduling

    async def start(self) -> None:
        """Start scheduling every registered task (and any registered later). Idempotent."""
        await self._tasks_table()
        self._started = True
        for name in self._tasks:
            self._spawn(name)

    def _spawn(self, name: str) -> None:
        if name not in self._loops:
            self._loops[name] = asyncio.get_running_loop().create_task(self._schedule(name), name=f"preload:{name}")

    async def _schedule(self, name: str) -> None:
        """One task's loop: run it when due, then sleep until it may be due again."""
        while True:
            try:
                delay = await self._run_if_due(name)
            except Exception as error:  # a locked or failing database: try again an interval later
                logger.warning("sqlcache: preload task %r not scheduled: %s", name, error)
                delay = self._tasks[name].interval
            await self.sleep(delay + self._rng.uniform(0, min(self.jitter * self._tasks[name].interval, MAX_JITTER)))

    async def _run_if_due(self, name: str) -> float:
        """Run the task if it is due and free; the seconds until it may be due again."""
        await self._run(name, force=False)
        task = self._tasks[name]
        table = await self._tasks_table()
        schedule = await table.schedule(name)
        now = self._clock()
        if schedule is None:  # the row was deleted by hand: define it again
            await table.register(task)
            return 0.0
        if schedule.lease_until is not None and schedule.lease_until > now:
            return min(schedule.lease_until - now, task.interval)  # running elsewhere
        if not schedule.enabled:
            return task.interval  # look again later: it may be enabled from anywhere
        return max((schedule.next_run or now) - now, 0.0)

    async def stop(self) -> None:
        """Stop scheduling: cancel waiting tasks, let running loaders finish within
        `stop_grace` seconds, cancel the rest, release their leases, close the connection."""
        self._started = False
        loops = list(self._loops.values())
        self._loops.clear()
        for loop in loops:
            loop.cancel()  # a loop waiting on a run leaves the run alone (see _outcome)
        await asyncio.gather(*loops, return_exceptions=True)
        runs = list(self._runs.values())
        if runs:
            _, late = await asyncio.wait(runs, timeout=self.stop_grace)
            for run in late:
                run.cancel()
            if late:
                await asyncio.wait(late)
        async with self._open_lock:
            table, self._table, self._table_manager = self._table, None, None
            if table is not None:
                try:
                    await table.release(self.owner)
                finally:
                    await table.database.close()

    # ------------------------------------------------------------ statistics

    async def get_stats(self) -> dict[str, Any]:
        """Counts over the registered tasks, and `task_stats[name]` from the shared table
        (so they include every process's runs). `running_tasks` counts live leases."""
        table = await self._tasks_table()
        rows = await table.stats(self._tasks)
        now = self._clock()
        task_stats = {name: _task_stats(rows[name], task, now) for name, task in self._tasks.items() if name in rows}
        self._last_stats = {
            "tasks": len(self._tasks),
            "running_tasks": sum(stats["running"] for stats in task_stats.values()),
            "preload_count": sum(stats["run_count"] - stats["error_count"] for stats in task_stats.values()),
            "preload_error_count": sum(stats["error_count"] for stats in task_stats.values()),
            "started": self._started,
            "task_stats": task_stats,
        }
        return self._last_stats

    def stats_snapshot(self) -> dict[str, Any] | None:
        """What the last `get_stats` returned (None before the first): the figures live in the
        database, which a metrics scrape in another thread must not wait for."""
        return self._last_stats

    # ------------------------------------------------------------ loaders

    async def preload_market_data(
        self, symbol: str, timeframe: str, exchange: str, url: str, params: Mapping[str, Any] | None = None
    ) -> Any:
        """GET `url` through the pool (rate limit and connections of `exchange`); the data.

        Any status other than 200 raises `PreloadError`, so a task's run counts as failed and
        the value cached before stays until its TTL ends.
        """
        status, data = await self.resource_pool.http_request("GET", url, api_name=exchange, params=params)
        if status != 200:
            raise PreloadError(f"{exchange} answered HTTP {status} for {symbol} {timeframe}: {str(data)[:200]}", status, data)
        return data

    # ------------------------------------------------------------ plumbing

    def _manager(self) -> CacheManager:
        return self.resource_pool.cache_manager

    def _clock(self) -> float:
        return self._manager().clock()

    async def _tasks_table(self) -> TaskTable:
        """The table of the current manager's database (reopened if the manager was replaced),
        with every registration saved in it."""
        manager = self._manager()
        async with self._open_lock:
            if self._table is None or self._table_manager is not manager:
                if self._table is not None:
                    await self._table.database.close()
                self._table = TaskTable(await self._open_database(manager))
                self._table_manager = manager
                self._unsaved = set(self._tasks)
            table = self._table
            while self._unsaved:
                name = self._unsaved.pop()
                try:
                    await table.register(self._tasks[name])
                except BaseException:
                    self._unsaved.add(name)
                    raise
        return table

    async def _open_database(self, manager: CacheManager) -> _Database:
        if manager.config.disk_cache_enabled:
            return await _FileDatabase.open(manager)
        if self._memory is None or self._memory[0] is not manager:
            self._memory = (manager, _MemoryDatabase())
        return self._memory[1]


async def _outcome(run: asyncio.Task[bool | None]) -> bool | None:
    """Wait for a run without cancelling it if the waiter is cancelled; a cancelled run failed."""
    await asyncio.wait((run,))
    return False if run.cancelled() else run.result()


def _task_stats(row: dict[str, Any], task: PreloadTask, now: float) -> dict[str, Any]:
    stats = dict(row)
    stats["interval"] = task.interval  # as this process registered it: 60, not SQLite's 60.0
    stats["enabled"] = bool(row["enabled"])
    stats["tags"] = orjson.loads(row["tags"])
    stats["running"] = row["lease_until"] is not None and row["lease_until"] > now
    return stats


def _describe(error: Exception, timeout: float) -> str:
    """The text kept in last_error. `wait_for` raises its timeout from the cancellation it
    caused, which tells it from a TimeoutError the loader raised itself."""
    if isinstance(error, asyncio.TimeoutError) and isinstance(error.__cause__, asyncio.CancelledError):
        return f"timed out after {timeout:g}s"
    return f"{type(error).__name__}: {error}"[:ERROR_TEXT_LIMIT]


def _seconds(name: str, value: Any) -> float:
    """`value` unchanged (an int stays an int, as the user wrote it) if it is a number of seconds >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
    return value


def _positive_seconds(name: str, value: Any) -> float:
    seconds = _seconds(name, value)
    if seconds == 0 or math.isinf(seconds):
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    return seconds

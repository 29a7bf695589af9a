"""`CachePreloader`: loaders that keep hot keys warm, scheduled on asyncio, watched in SQL.

Each registered task runs its loader every `interval` seconds (plus a little jitter) and stores
the result under its `cache_key` with its TTL and tags. Task definitions, statistics, schedule
and a lease live in the `preload_task_state` table of the cache's SQLite file (view
`preload_tasks`), shared by every process that registers the task: a process runs a task only
after claiming its lease in one `UPDATE`, so each interval runs it once in all, and every
process's runs add up in the task's one row. With the disk tier disabled the same table lives in
an in-memory SQLite database: statistics then last as long as the preloader object.

Two clocks, on purpose. The schedule (`next_run`, `last_run`, ...) follows the manager's clock,
so a test that moves a fake clock moves the schedule. The lease does not: `lease_until` is on
the database's clock, SQLite's `'now'`, which is the host's wall clock read while the statement
runs, after it got the write lock. Every process on the host reads the same clock, a clock that
does not move cannot keep a dead process's lease alive, and a claim or renewal that waited long
for the lock still gets its full lease length from the moment it took the row.

A run keeps its lease for as long as it runs, however long that is: its process renews it
every `1/RENEWALS_PER_LEASE` of the lease length with an `UPDATE` that succeeds only while this
process still owns the row. A claim by another process succeeds only once a lease has lapsed,
that is after a lease length without renewal: its owner died, or could not reach the database
for two renewal periods. A run that finds its lease lost (a renewal found another owner, or none
succeeded in time) stops its loader if it can, and never stores its result.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import os
import random
import contextvars
import socket
import sys
import sqlite3
import threading
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

LEASE_BUSY_TIMEOUTS = 6
"""Default lease length, in busy timeouts (30 s with the default 5 s). Renewed every third of
it (10 s), a lease is given up only if no renewal got through for over 3 busy timeouts on end,
long after every write of the cache has failed with `CacheBusyError`. It is also the longest a
task waits after a process died in the middle of a run (a stopped process gives its leases back)."""
RENEWALS_PER_LEASE = 3
"""Renewals due per lease length: a renewal may fail, or wait out a busy timeout, twice in a row
and the lease still holds."""
LEASE_GIVE_UP = 0.1
"""Fraction of the lease length before it lapses at which a run that could not renew it gives it
up and cancels its loader: time for the loader to stop before another process may claim."""
MAX_JITTER = 5.0
"""Most seconds of jitter, however long the interval: enough to spread processes and tasks."""
MAX_BACKOFF_EXPONENT = 30  # 2**30 intervals is past any max_backoff; keeps the float finite
ERROR_TEXT_LIMIT = 500  # characters of an error message kept in last_error

# ---------------------------------------------------------------- statements

# The database's clock in epoch seconds (the Julian day of 1970-01-01T00:00Z is 2440587.5,
# 86400 seconds a day): the host's wall clock, read while the statement runs, so after any wait
# for the lock. SQLite reads it once per statement. Every lease time is on this clock.
DB_NOW = "((julianday('now') - 2440587.5) * 86400.0)"

# Create a task's row, or update the definition of an existing one; its statistics, schedule and
# lease are kept, so a restarted process neither forgets them nor runs the task early.
REGISTER_TASK = """
INSERT INTO preload_task_state (name, enabled, interval, timeout, cache_key, cache_ttl, tags)
VALUES (:name, :enabled, :interval, :timeout, :cache_key, :cache_ttl, :tags)
ON CONFLICT (name) DO UPDATE SET
    enabled = excluded.enabled, interval = excluded.interval, timeout = excluded.timeout,
    cache_key = excluded.cache_key, cache_ttl = excluded.cache_ttl, tags = excluded.tags
"""

# Take the lease of a task that is due on the schedule's clock (or of any task when forced),
# unless a live lease is held: one atomic statement, so of several processes waking together
# exactly one gets the row. The lease runs for :lease seconds from the database's now.
CLAIM_TASK = f"""
UPDATE preload_task_state SET lease_owner = :owner, lease_until = {DB_NOW} + :lease
WHERE name = :name
  AND (lease_until IS NULL OR lease_until <= {DB_NOW})
  AND (:force OR (enabled AND coalesce(next_run, 0) <= :now))
RETURNING consecutive_errors, lease_until
"""

# Extend a running task's lease to :lease seconds from the database's now, only if this process
# still owns it (a lapsed lease nobody claimed is still ours: nobody else ran the task).
RENEW_LEASE = f"""
UPDATE preload_task_state SET lease_until = {DB_NOW} + :lease
WHERE name = :name AND lease_owner = :owner
RETURNING lease_until
"""

# Give back the lease of a run that was cancelled, so the task is due again at once.
RELEASE_LEASE = """
UPDATE preload_task_state SET lease_owner = NULL, lease_until = NULL
WHERE name = :name AND lease_owner = :owner
"""

# What a process that did not get the lease needs to decide how long to wait: the schedule,
# and the seconds until the current lease may lapse (NULL: no lease).
READ_SCHEDULE = f"SELECT enabled, next_run, lease_until - {DB_NOW} FROM preload_task_state WHERE name = ?"

# Add a finished run to the statistics, and, if this process still holds the lease (it is lost
# only when this process could not renew it), set the next run and release the lease.
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

# Enable or disable a task for every process.
SET_ENABLED = "UPDATE preload_task_state SET enabled = ? WHERE name = ?"

# The statistics of the tasks registered in this process, by the primary key; `running` is
# whether a live lease is held, on the database's clock.
READ_TASKS = f"""
SELECT name, enabled, interval, timeout, cache_key, cache_ttl, tags, run_count, error_count,
       consecutive_errors, last_run, last_success, last_error, last_error_at, last_duration,
       next_run, lease_owner, lease_until, coalesce(lease_until > {DB_NOW}, 0)
FROM preload_task_state WHERE name IN (SELECT value FROM json_each(?))
"""
_STAT_COLUMNS = (
    "enabled", "interval", "timeout", "cache_key", "cache_ttl", "tags", "run_count", "error_count",
    "consecutive_errors", "last_run", "last_success", "last_error", "last_error_at", "last_duration",
    "next_run", "lease_owner", "lease_until", "running",
)
LEASE_LOST = "lease lost (not renewed in time, or taken by another process): the result was not stored"


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
    lease_left: float | None
    """Seconds until the current lease may lapse, on the database's clock; None: no lease."""


class _RunFailed(Exception):
    """A run that ended without a result to store: its message is the run's error."""


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
    """The preloader's statements on `preload_task_state`, one method each.

    `sql` holds the statements under the names this module gives them: this module itself for
    SQLite, `sqlcache._postgres_preload` (the same names in PostgreSQL's dialect) for PostgreSQL.
    """

    def __init__(self, database: _Database, sql: Any = None):
        self.database = database
        self.sql = sql if sql is not None else sys.modules[__name__]

    async def register(self, task: PreloadTask) -> None:
        await self.database.fetch(self.sql.REGISTER_TASK, task.definition())

    async def claim(self, name: str, owner: str, now: float, lease: float, force: bool) -> tuple[int, float] | None:
        """Take the lease for `lease` seconds if the task is due at `now` (the schedule's clock):
        the task's consecutive failures so far and the lease's end, or None if not claimed."""
        params = {"name": name, "owner": owner, "now": now, "lease": lease, "force": force}
        rows = await self.database.fetch(self.sql.CLAIM_TASK, params)
        return (rows[0][0], rows[0][1]) if rows else None

    async def renew(self, name: str, owner: str, lease: float) -> float | None:
        """Extend this owner's lease to `lease` seconds from now: its new end, or None if it is
        not ours any more."""
        rows = await self.database.fetch(self.sql.RENEW_LEASE, {"name": name, "owner": owner, "lease": lease})
        return rows[0][0] if rows else None

    async def release(self, name: str, owner: str) -> None:
        await self.database.fetch(self.sql.RELEASE_LEASE, {"name": name, "owner": owner})

    async def schedule(self, name: str) -> Schedule | None:
        rows = await self.database.fetch(self.sql.READ_SCHEDULE, (name,))
        return Schedule(bool(rows[0][0]), rows[0][1], rows[0][2]) if rows else None

    async def finish(self, name: str, owner: str, *, started: float, finished: float, duration: float,
                     error: str | None, next_run: float) -> None:
        params = {"name": name, "owner": owner, "started": started, "finished": finished,
                  "duration": duration, "error": error, "next_run": next_run}
        await self.database.fetch(self.sql.FINISH_RUN, params)

    async def set_enabled(self, name: str, enabled: bool) -> None:
        await self.database.fetch(self.sql.SET_ENABLED, (enabled, name))

    async def stats(self, names: Iterable[str]) -> dict[str, dict[str, Any]]:
        rows = await self.database.fetch(self.sql.READ_TASKS, (orjson.dumps(list(names)).decode(),))
        return {row[0]: dict(zip(_STAT_COLUMNS, row[1:])) for row in rows}


class _Lease:
    """A run's hold on its task's row, renewed in the background until the run ends.

    `until` is the row's `lease_until` as the claim or the latest renewal set it, on the
    database's clock, which is this host's wall clock: `time.time` reads the same clock, so this
    process knows when another could claim the row. `lost` is a task that finishes when the lease
    may be gone: a renewal found that this process no longer owns the row, or none succeeded by
    `LEASE_GIVE_UP` of a lease length before `until`. Renewals sleep in real time
    (`asyncio.sleep`), never on a test's fake clock.
    """

    def __init__(self, table: TaskTable, name: str, owner: str, seconds: float, until: float):
        self.table = table
        self.name = name
        self.owner = owner
        self.seconds = seconds
        self.until = until
        self.thread: asyncio.Future[Any] | None = None
        """The thread of a plain-function loader: while it runs, the lease is never given back."""
        self.lost: asyncio.Task[None] = asyncio.get_running_loop().create_task(
            self._renew_until_lost(), name=f"preload-lease:{name}"
        )

    async def renew(self) -> bool:
        """Extend the lease by its length from now; False if this process no longer owns it.
        A database error is raised."""
        until = await self.table.renew(self.name, self.owner, self.seconds)
        if until is not None:
            self.until = until
        return until is not None

    async def end(self) -> None:
        """Stop renewing (the run is over)."""
        self.lost.cancel()
        await asyncio.wait((self.lost,))

    async def _renew_until_lost(self) -> None:
        period = self.seconds / RENEWALS_PER_LEASE
        while True:
            await asyncio.sleep(max(0.0, min(period, self._time_left())))
            try:
                if not await asyncio.wait_for(self.renew(), self._time_left()):
                    logger.warning("sqlcache: preload task %r: lease taken by another process", self.name)
                    return
            except asyncio.TimeoutError:
                logger.warning("sqlcache: preload task %r: lease not renewed in time, run given up", self.name)
                return
            except Exception as error:  # a locked or failing database: try again while the lease holds
                logger.warning("sqlcache: preload task %r: lease not renewed: %s", self.name, error)

    def _time_left(self) -> float:
        """Seconds until this run must give the lease up if it has not renewed it."""
        return self.until - LEASE_GIVE_UP * self.seconds - time.time()


# ---------------------------------------------------------------- the preloader


class CachePreloader:
    """Runs registered loaders on a schedule and stores their results in the pool's cache.

    `resource_pool` needs `cache_manager` (read at every use: the guide reassigns it after
    construction) and, for `preload_market_data`, `http_request`. The clock is the manager's,
    so tests that move a fake clock move the schedule. Knobs, also plain attributes:
    `sleep` (the coroutine the scheduler waits with; tests inject one that follows the fake
    clock), `jitter` (each wait is lengthened by up to this fraction of the interval, at most
    `MAX_JITTER` seconds, so processes and tasks do not fire in lockstep), `max_backoff`
    (longest wait after failures, in seconds, unless the interval is longer), `stop_grace`
    (seconds `stop` lets a running loader finish before cancelling it) and `lease_seconds`
    (length of a run's lease, renewed while it runs; None: `LEASE_BUSY_TIMEOUTS` busy timeouts
    of the manager's config). The lease is on the database's clock, not the manager's: see the
    module's docstring.
    """

    def __init__(
        self,
        resource_pool: Any,
        *,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        jitter: float = 0.1,
        max_backoff: float = 600.0,
        stop_grace: float = 5.0,
        lease_seconds: float | None = None,
    ):
        self.resource_pool = resource_pool
        self.sleep = sleep
        self.jitter = jitter
        self.max_backoff = max_backoff
        self.stop_grace = stop_grace
        self.lease_seconds = lease_seconds
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

        A coroutine function is awaited on the event loop; a plain function runs in a thread
        of its own (an awaitable it returns is then awaited), so it never blocks the loop.
        A run taking longer than `timeout` seconds (default: the interval) counts as an error
        and its result is not stored; a coroutine is cancelled then, but a thread cannot be
        stopped, so the run keeps its lease until the function returns: no process starts the
        task meanwhile. The definition reaches the database at the next awaited call.
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
        lease_seconds = self._lease_seconds()
        claimed = await table.claim(task.name, self.owner, self._clock(), lease_seconds, force)
        if claimed is None:
            return None
        failures, lease_until = claimed
        started = self._clock()  # after the claim, which may have waited for the lock
        began = time.monotonic()
        lease = _Lease(table, task.name, self.owner, lease_seconds, lease_until)
        error = None
        try:
            value = await _load(task, lease)
            if task.cache_key is not None:
                if not await lease.renew():  # and so it holds for the set below
                    raise _RunFailed(LEASE_LOST)
                await self._manager().set(task.cache_key, value, task.cache_ttl, tags=task.tags)
        except Exception as exc:  # any loader failure is the run's error, never the scheduler's
            error = _describe(exc)
            logger.warning("sqlcache: preload task %r failed: %s", task.name, error)
        except asyncio.CancelledError:  # stopped: give the lease back, unless the loader runs on
            await lease.end()
            if lease.thread is None or lease.thread.done():
                await _release(table, task.name, self.owner)
            raise
        finally:
            await lease.end()
        finished = self._clock()
        if error is None:
            next_run = max(started + task.interval, finished)
        else:
            next_run = finished + self._backoff(task.interval, failures + 1)
        await table.finish(task.name, self.owner, started=started, finished=finished,
                           duration=time.monotonic() - began, error=error, next_run=next_run)
        return error is None

    def _lease_seconds(self) -> float:
        if self.lease_seconds is None:
            return LEASE_BUSY_TIMEOUTS * self._manager().config.busy_timeout
        return _positive_seconds("lease_seconds", self.lease_seconds)

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
        if schedule.lease_left is not None and schedule.lease_left > 0:
            return min(schedule.lease_left, task.interval)  # running elsewhere
        if not schedule.enabled:
            return task.interval  # look again later: it may be enabled from anywhere
        return max((schedule.next_run or now) - now, 0.0)

    async def stop(self) -> None:
        """Stop scheduling: cancel waiting tasks, let running loaders finish within
        `stop_grace` seconds, cancel the rest, release their leases, close the connection.

        A plain-function loader still running then cannot be stopped: its run is abandoned (its
        result never stored) and its lease, no longer renewed, lapses a lease length later.
        """
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
        async with self._open_lock:  # each cancelled run gave its lease back
            table, self._table, self._table_manager = self._table, None, None
            if table is not None:
                await table.database.close()

    # ------------------------------------------------------------ statistics

    async def get_stats(self) -> dict[str, Any]:
        """Counts over the registered tasks, and `task_stats[name]` from the shared table
        (so they include every process's runs). `running_tasks` counts live leases."""
        table = await self._tasks_table()
        rows = await table.stats(self._tasks)
        task_stats = {name: _task_stats(rows[name], task) for name, task in self._tasks.items() if name in rows}
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
                self._table = await self._open_table(manager)
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

    async def _open_table(self, manager: CacheManager) -> TaskTable:
        """The task table in the cache's own database: the SQLite file, the PostgreSQL server
        (through the store's pool, in that dialect), or memory when the disk tier is off."""
        store = await manager._disk()
        if store is not None and hasattr(store, "preloader_database"):
            from . import _postgres_preload  # imports this module's shared statements

            return TaskTable(store.preloader_database(), _postgres_preload)
        if store is not None:
            return TaskTable(await _FileDatabase.open(manager))
        if self._memory is None or self._memory[0] is not manager:
            self._memory = (manager, _MemoryDatabase())
        return TaskTable(self._memory[1])


async def _load(task: PreloadTask, lease: _Lease) -> Any:
    """The loader's result, once it returned within the task's timeout with the lease held."""
    deadline = time.monotonic() + task.timeout
    if _is_coroutine_function(task.loader):
        result = task.loader(*task.args, **task.kwargs)
    else:
        lease.thread = _in_thread(task.loader, task.args, task.kwargs, name=f"preload:{task.name}")
        result = await _within(lease.thread, task, lease, deadline, cancellable=False)
        if not inspect.isawaitable(result):
            return result
    return await _within(asyncio.ensure_future(result), task, lease, deadline, cancellable=True)


async def _within(loading: asyncio.Future[Any], task: PreloadTask, lease: _Lease, deadline: float, *,
                  cancellable: bool) -> Any:
    """`loading`'s result if it is done by `deadline` and before the lease is lost; else it
    raises `_RunFailed`, after cancelling `loading` if it is `cancellable` or, if not (a thread),
    waiting for it to end with the lease still renewed, so no other process starts meanwhile."""
    try:
        done, _ = await asyncio.wait(
            (loading, lease.lost), timeout=max(0.0, deadline - time.monotonic()), return_when=asyncio.FIRST_COMPLETED
        )
        if loading in done:
            return loading.result()
        failure = _RunFailed(LEASE_LOST if lease.lost.done() else f"timed out after {task.timeout:g}s")
        if cancellable:
            loading.cancel()
        await asyncio.wait((loading,))
        raise failure
    finally:
        if cancellable:
            loading.cancel()  # nothing if done; stops the loader if this run was cancelled


def _is_coroutine_function(loader: Callable[..., Any]) -> bool:
    """Whether calling `loader` only makes a coroutine (an `async def`, a bound or partial one,
    or an object whose `__call__` is one), so it may be called on the event loop."""
    return inspect.iscoroutinefunction(loader) or inspect.iscoroutinefunction(getattr(loader, "__call__", None))


def _in_thread(function: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any], *, name: str) -> asyncio.Future[Any]:
    """Start `function(*args, **kwargs)` in a thread of its own; a future of its outcome, done
    only when the function has returned (cancelling the future does not stop the thread).

    Not the loop's default executor: that pool is shared and bounded, and `asyncio.run` waits
    for its threads at exit, so one plain loader that never returns would hang the program.
    This thread is a daemon, and runs in a copy of the caller's context, as `to_thread` would.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    context = contextvars.copy_context()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)

    def run() -> None:
        result, error = None, None
        try:
            result = context.run(function, *args, **kwargs)
        except Exception as exc:
            error = exc
        except BaseException as exc:  # SystemExit and the like end this run, not the loop
            error = RuntimeError(f"the loader raised {type(exc).__name__}")
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop has closed: nobody waits for this run any more
            pass

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


async def _release(table: TaskTable, name: str, owner: str) -> None:
    """Give a cancelled run's lease back; if the database refuses, it lapses on its own."""
    try:
        await table.release(name, owner)
    except Exception as error:
        logger.warning("sqlcache: preload task %r: lease not given back, it lapses on its own: %s", name, error)


async def _outcome(run: asyncio.Task[bool | None]) -> bool | None:
    """Wait for a run without cancelling it if the waiter is cancelled; a cancelled run failed."""
    await asyncio.wait((run,))
    return False if run.cancelled() else run.result()


def _task_stats(row: dict[str, Any], task: PreloadTask) -> dict[str, Any]:
    stats = dict(row)
    stats["interval"] = task.interval  # as this process registered it: 60, not SQLite's 60.0
    stats["enabled"] = bool(row["enabled"])
    stats["tags"] = orjson.loads(row["tags"])
    stats["running"] = bool(row["running"])
    return stats


def _describe(error: Exception) -> str:
    """The text kept in last_error."""
    if isinstance(error, _RunFailed):
        return str(error)
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

"""The preloader's table on PostgreSQL: its statements in PostgreSQL's dialect, and a `_Database`.

`sqlcache._preloader.TaskTable` runs its statements through an object with
`fetch(sql, params) -> list[tuple]` and `close()`, written for SQLite (`?` and `:name`
placeholders). `PostgresDatabase` is that object over the store's connection pool: it turns both
placeholder styles into asyncpg's `$n` (once per statement), each statement one atomic
autocommit statement, as on SQLite. This module holds every statement of the preloader under its
name in `_preloader`, in PostgreSQL (three are valid as they are and imported from there; the
others differ in the clock, `json_each` and parameter types), so that `TaskTable` can take its
statements from this module when its database is PostgreSQL.
"""

from __future__ import annotations

import functools
import itertools
import re
from typing import Any, Mapping, Sequence

from ._preloader import REGISTER_TASK, RELEASE_LEASE, SET_ENABLED  # valid PostgreSQL as they are

__all__ = ["CLAIM_TASK", "FINISH_RUN", "READ_SCHEDULE", "READ_TASKS", "REGISTER_TASK", "RELEASE_LEASE",
           "RENEW_LEASE", "SET_ENABLED", "PostgresDatabase"]

# The server's clock in epoch seconds, read when it is evaluated (so after any wait for a row
# lock, the row being re-checked then): every lease time is on this clock.
DB_NOW = "extract(epoch FROM clock_timestamp())::double precision"

# Take the lease of a task that is due on the schedule's clock (or of any task when forced),
# unless a live lease is held: one atomic statement (the row lock decides), so of several hosts
# waking together exactly one gets the row. The lease runs for :lease seconds from the server's now.
CLAIM_TASK = f"""
UPDATE preload_task_state SET lease_owner = :owner, lease_until = {DB_NOW} + :lease::double precision
WHERE name = :name
  AND (lease_until IS NULL OR lease_until <= {DB_NOW})
  AND (:force::boolean OR (enabled AND coalesce(next_run, 0) <= :now))
RETURNING consecutive_errors, lease_until
"""

# Extend a running task's lease to :lease seconds from the server's now, if this process still owns it.
RENEW_LEASE = f"""
UPDATE preload_task_state SET lease_until = {DB_NOW} + :lease::double precision
WHERE name = :name AND lease_owner = :owner
RETURNING lease_until
"""

# The schedule, and the seconds until the current lease may lapse (NULL: no lease).
READ_SCHEDULE = f"SELECT enabled, next_run, lease_until - {DB_NOW} FROM preload_task_state WHERE name = ?"

# Add a finished run to the statistics, and, if this process still holds the lease, set the next
# run and release the lease. (`:error::text`: PostgreSQL must know the type of a NULL parameter.)
FINISH_RUN = """
UPDATE preload_task_state SET
    run_count = run_count + 1,
    error_count = error_count + CASE WHEN :error::text IS NULL THEN 0 ELSE 1 END,
    consecutive_errors = CASE WHEN :error::text IS NULL THEN 0 ELSE consecutive_errors + 1 END,
    last_run = :started,
    last_duration = :duration,
    last_success = CASE WHEN :error::text IS NULL THEN :finished ELSE last_success END,
    last_error = coalesce(:error::text, last_error),
    last_error_at = CASE WHEN :error::text IS NULL THEN last_error_at ELSE :finished END,
    next_run = CASE WHEN lease_owner = :owner THEN :next_run ELSE next_run END,
    lease_until = CASE WHEN lease_owner = :owner THEN NULL ELSE lease_until END,
    lease_owner = CASE WHEN lease_owner = :owner THEN NULL ELSE lease_owner END
WHERE name = :name
"""

# The statistics of the tasks registered in this process (a JSON array of names), by the primary
# key; the last column is whether a live lease is held, on the server's clock.
READ_TASKS = f"""
SELECT name, enabled, interval, timeout, cache_key, cache_ttl, tags, run_count, error_count,
       consecutive_errors, last_run, last_success, last_error, last_error_at, last_duration,
       next_run, lease_owner, lease_until, coalesce(lease_until > {DB_NOW}, false)
FROM preload_task_state WHERE name IN (SELECT jsonb_array_elements_text(?::jsonb))
"""

_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@functools.lru_cache(maxsize=64)
def positional(sql: str) -> tuple[str, tuple[str, ...] | None]:
    """`sql` with `?` or `:name` placeholders as `$1, $2...`, and the names in `$n` order (None
    for `?`, whose parameters come as a sequence). `::type` casts are left alone."""
    if "?" in sql:
        numbers = itertools.count(1)
        return re.sub(r"\?", lambda _: f"${next(numbers)}", sql), None
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    return _NAMED.sub(number, sql), tuple(names)


class PostgresDatabase:
    """The preloader's `_Database` on a `PostgresStore`'s pool (which the store owns and closes)."""

    def __init__(self, store: Any):
        self._store = store

    async def fetch(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[tuple[Any, ...]]:
        text, names = positional(sql)
        values = [params[name] for name in names] if names is not None else list(params)  # type: ignore[call-overload,index]
        rows = await self._store.run(lambda connection: connection.fetch(text, *values), "update the preloader tasks of")
        return [tuple(row) for row in rows]

    async def close(self) -> None:
        """Nothing: the pool is the store's."""

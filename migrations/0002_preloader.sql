-- sqlcache schema, version 2: the cache preloader's tasks.
--
-- One row per preload task name, shared by every process that registers the task: the
-- definition the latest registration gave it, the statistics of every run in every process
-- (they add up here), the schedule (`next_run`) and the lease that lets one process at a time
-- run it. Times are epoch seconds (REAL); the `preload_tasks` view shows ISO-8601 UTC text.

CREATE TABLE preload_task_state (
    name               TEXT    PRIMARY KEY,
    enabled            INTEGER NOT NULL DEFAULT 1,    -- 0: the scheduler skips it everywhere
    interval           REAL    NOT NULL,              -- seconds between runs
    timeout            REAL    NOT NULL,              -- seconds a run may take before it is cancelled
    cache_key          TEXT,                          -- where the loader's result is stored (NULL: not stored)
    cache_ttl          REAL,                          -- NULL: the cache's default_ttl
    tags               TEXT    NOT NULL DEFAULT '[]', -- JSON array given to the stored entry
    run_count          INTEGER NOT NULL DEFAULT 0,    -- finished runs, failed ones included
    error_count        INTEGER NOT NULL DEFAULT 0,    -- failed runs (loader raised or timed out)
    consecutive_errors INTEGER NOT NULL DEFAULT 0,    -- failures since the last success: the backoff
    last_run           REAL,                          -- start of the latest finished run
    last_success       REAL,                          -- end of the latest successful run
    last_error         TEXT,                          -- the latest failure, kept after a later success
    last_error_at      REAL,
    last_duration      REAL,                          -- seconds the latest finished run took
    next_run           REAL,                          -- earliest start of the next run; NULL: due now
    lease_owner        TEXT,                          -- the process running it now (host:pid:id)
    lease_until        REAL                           -- when a lease of a dead process lapses
);

CREATE VIEW preload_tasks AS
SELECT name,
       enabled,
       interval,
       strftime('%Y-%m-%dT%H:%M:%fZ', last_run, 'unixepoch') AS last_run,
       run_count,
       error_count,
       last_error,
       strftime('%Y-%m-%dT%H:%M:%fZ', last_success, 'unixepoch') AS last_success,
       last_duration,
       strftime('%Y-%m-%dT%H:%M:%fZ', next_run, 'unixepoch') AS next_run,
       consecutive_errors,
       strftime('%Y-%m-%dT%H:%M:%fZ', last_error_at, 'unixepoch') AS last_error_at,
       timeout,
       cache_key,
       cache_ttl,
       tags,
       lease_owner AS running_in,
       strftime('%Y-%m-%dT%H:%M:%fZ', lease_until, 'unixepoch') AS lease_until
FROM preload_task_state;

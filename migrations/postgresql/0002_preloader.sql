-- sqlcache schema for PostgreSQL, version 2: the cache preloader's tasks (SQLite's 0002).
--
-- One row per preload task name, shared by every process on every host that registers it: the
-- definition the latest registration gave it, the statistics of every run everywhere, the
-- schedule (`next_run`) and the lease that lets one process at a time run it. Times are epoch
-- seconds; the `preload_tasks` view shows ISO-8601 UTC text.

CREATE TABLE preload_task_state (
    name               text PRIMARY KEY,
    enabled            boolean NOT NULL DEFAULT true,  -- false: the scheduler skips it everywhere
    interval           double precision NOT NULL,      -- seconds between runs
    timeout            double precision NOT NULL,      -- seconds a run may take before it is cancelled
    cache_key          text,                           -- where the loader's result is stored (NULL: not stored)
    cache_ttl          double precision,               -- NULL: the cache's default_ttl
    tags               text NOT NULL DEFAULT '[]',     -- JSON array given to the stored entry
    run_count          bigint NOT NULL DEFAULT 0,      -- finished runs, failed ones included
    error_count        bigint NOT NULL DEFAULT 0,      -- failed runs (loader raised or timed out)
    consecutive_errors bigint NOT NULL DEFAULT 0,      -- failures since the last success: the backoff
    last_run           double precision,               -- start of the latest finished run
    last_success       double precision,               -- end of the latest successful run
    last_error         text,                           -- the latest failure, kept after a later success
    last_error_at      double precision,
    last_duration      double precision,               -- seconds the latest finished run took
    next_run           double precision,               -- earliest start of the next run; NULL: due now
    lease_owner        text,                           -- the process running it now (host:pid:id)
    lease_until        double precision                -- when a lease of a dead process lapses
);

CREATE VIEW preload_tasks AS
SELECT name,
       enabled,
       interval,
       sqlcache_iso(last_run) AS last_run,
       run_count,
       error_count,
       last_error,
       sqlcache_iso(last_success) AS last_success,
       last_duration,
       sqlcache_iso(next_run) AS next_run,
       consecutive_errors,
       sqlcache_iso(last_error_at) AS last_error_at,
       timeout,
       cache_key,
       cache_ttl,
       tags,
       lease_owner AS running_in,
       sqlcache_iso(lease_until) AS lease_until
FROM preload_task_state;

-- sqlcache schema for PostgreSQL, version 1: the same tables and views as SQLite's 0001.
--
-- One row per disk entry in `entries`, written once per set. Read statistics, which change on
-- every batch of reads, live in the narrow `access` table so that updating them never copies the
-- row holding the value. `tags` is the tag index, `counters` the entry count and byte total in
-- 16 slots, `invalidations` the log other hosts read to drop stale copies from their memory tiers.
-- Statement-level triggers (one run per statement, over its transition tables) keep access rows
-- and counters in step with `entries` and drop the tag rows of a set that changed them; the store
-- inserts tag rows itself, with bound parameters (as SQLite's 0003 does). Times are epoch seconds (double precision); the views show
-- ISO-8601 UTC text like SQLite's. Keys and tags use the "C" collation: byte order, which for
-- UTF-8 is code-point order, the order Python compares strings in; so the key index serves the
-- prefix ranges of pattern invalidation.

CREATE TABLE entries (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key         text COLLATE "C" NOT NULL UNIQUE,   -- its index also serves prefix ranges (patterns)
    value       bytea    NOT NULL,
    codec       smallint NOT NULL,                  -- 0 JSON, 1 bytes, 2 pickle, 3 JSON with NaN/big ints
    size        integer  NOT NULL,                  -- bytes of key and value, what disk_max_size bounds
    tags        text     NOT NULL DEFAULT '[]',     -- JSON array, the source of the tags table
    created_at  double precision NOT NULL,          -- time of the latest set (FIFO order)
    expires_at  double precision                    -- NULL: never expires
);
CREATE INDEX entries_by_expiry ON entries (expires_at) WHERE expires_at IS NOT NULL;
-- The eviction indexes (by creation, recency, frequency) are made by the store of the strategy
-- that walks them (STRATEGY_INDEXES in sqlcache/_postgres.py), as on SQLite since its 0004.

-- Updated by reads (batched: one UPDATE per key per access_flush_interval per process). LRU and
-- LFU evict by these columns, so a store of theirs indexes them, and an indexed column's update
-- cannot be HOT: each one leaves a dead heap tuple and dead index entries. The table is narrow
-- (three numbers) so that cost is small; fillfactor 80 keeps the new version on the same page
-- (HOT when no index covers them, under FIFO and TTL), and autovacuum visits it after 2% of its
-- rows changed instead of the default 20%.
CREATE TABLE access (
    entry_id     bigint PRIMARY KEY,                -- entries.id
    accessed_at  double precision NOT NULL,         -- last read, or the write if never read
    access_count bigint NOT NULL DEFAULT 0          -- reads since the entry was first written
) WITH (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.05);

CREATE TABLE tags (
    tag      text COLLATE "C" NOT NULL,
    entry_id bigint NOT NULL,
    PRIMARY KEY (tag, entry_id)
);
CREATE INDEX tags_by_entry ON tags (entry_id);

-- Entry count and bytes as the sum of 16 slots: a writing backend adds its deltas to slot
-- pg_backend_pid() % 16 only, so writers on different backends never wait on one row, and a
-- transaction never holds two slots (no lock-order cycle between slots). No index covers the
-- numbers, so every update is HOT and its dead tuple is pruned on the page.
CREATE TABLE counters (
    slot    smallint PRIMARY KEY CHECK (slot BETWEEN 0 AND 15),
    entries bigint NOT NULL,
    bytes   bigint NOT NULL
) WITH (fillfactor = 50);
INSERT INTO counters (slot, entries, bytes) SELECT slot, 0, 0 FROM generate_series(0, 15) AS slot;

CREATE TABLE invalidations (
    seq       bigint PRIMARY KEY,                   -- max+1, assigned under the write lock: gapless in commit order
    origin    text NOT NULL,                        -- the writing CacheManager, which skips its own rows
    kind      text NOT NULL CHECK (kind IN ('key', 'tag', 'pattern', 'clear')),
    arg       text,
    logged_at double precision NOT NULL             -- wall-clock time, for trimming the log
);

-- The slot of the current backend (see counters).
CREATE FUNCTION sqlcache_slot() RETURNS smallint LANGUAGE sql STABLE
AS $$ SELECT (pg_backend_pid() % 16)::smallint $$;

-- New entries: count them, give each an access row (its write is its last use). The store inserts
-- the tag rows itself (statement insert_tag), with bound parameters.
CREATE FUNCTION sqlcache_entries_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE counters AS c SET entries = c.entries + d.n, bytes = c.bytes + d.b
    FROM (SELECT count(*) AS n, coalesce(sum(size), 0) AS b FROM new_rows) AS d
    WHERE c.slot = sqlcache_slot() AND d.n > 0;
    INSERT INTO access (entry_id, accessed_at, access_count) SELECT id, created_at, 0 FROM new_rows;
    RETURN NULL;
END $$;
CREATE TRIGGER entries_inserted AFTER INSERT ON entries REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION sqlcache_entries_inserted();

-- Sets over existing entries: the write counts as a use; reads are kept; the tag rows go if the
-- tags changed (the store then inserts the new ones).
CREATE FUNCTION sqlcache_entries_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE counters AS c SET bytes = c.bytes + d.b
    FROM (SELECT coalesce(sum(n.size - o.size), 0) AS b FROM new_rows AS n JOIN old_rows AS o USING (id)) AS d
    WHERE c.slot = sqlcache_slot() AND d.b <> 0;
    UPDATE access AS a SET accessed_at = greatest(a.accessed_at, n.created_at)
    FROM new_rows AS n WHERE a.entry_id = n.id;
    DELETE FROM tags AS t USING old_rows AS o JOIN new_rows AS n USING (id)
    WHERE t.entry_id = o.id AND o.tags <> n.tags;
    RETURN NULL;
END $$;
CREATE TRIGGER entries_updated AFTER UPDATE ON entries REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION sqlcache_entries_updated();

-- Removed entries take their statistics and tags with them.
CREATE FUNCTION sqlcache_entries_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE counters AS c SET entries = c.entries - d.n, bytes = c.bytes - d.b
    FROM (SELECT count(*) AS n, coalesce(sum(size), 0) AS b FROM old_rows) AS d
    WHERE c.slot = sqlcache_slot() AND d.n > 0;
    DELETE FROM access WHERE entry_id IN (SELECT id FROM old_rows);
    DELETE FROM tags WHERE entry_id IN (SELECT id FROM old_rows);
    RETURN NULL;
END $$;
CREATE TRIGGER entries_deleted AFTER DELETE ON entries REFERENCING OLD TABLE AS old_rows
FOR EACH STATEMENT EXECUTE FUNCTION sqlcache_entries_deleted();

-- Epoch seconds as SQLite's views show them: ISO-8601 UTC with milliseconds, 2024-01-31T12:00:00.000Z.
CREATE FUNCTION sqlcache_iso(seconds double precision) RETURNS text LANGUAGE sql IMMUTABLE
AS $$ SELECT to_char(timestamp 'epoch' + seconds * interval '1 second', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') $$;

CREATE VIEW cache_entries AS
SELECT e.key,
       e.tags,
       e.size,
       sqlcache_iso(e.created_at) AS created_at,
       sqlcache_iso(e.expires_at) AS expires_at,
       sqlcache_iso(a.accessed_at) AS accessed_at,
       a.access_count,
       CASE WHEN e.codec IN (0, 3) THEN convert_from(e.value, 'UTF8') END AS value_json,
       CASE e.codec WHEN 0 THEN 'json' WHEN 1 THEN 'bytes' WHEN 2 THEN 'pickle' WHEN 3 THEN 'json' END AS codec,
       e.expires_at IS NOT NULL AND e.expires_at <= extract(epoch FROM now()) AS expired
FROM entries AS e
LEFT JOIN access AS a ON a.entry_id = e.id;

CREATE VIEW cache_tags AS
SELECT t.tag, count(*) AS entries, sum(e.size) AS bytes
FROM tags AS t
JOIN entries AS e ON e.id = t.entry_id
GROUP BY t.tag;

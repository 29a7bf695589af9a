-- sqlcache schema for PostgreSQL, version 4: a set over an existing entry leaves its read
-- statistics alone (SQLite's 0006).
--
-- Until now the update trigger moved each rewritten entry's `access.accessed_at` to the set's
-- time (a write counts as a use): under LRU and LFU an indexed column, so a dead tuple and dead
-- index entries per set. Now the write's use is read from `entries.created_at`: an entry's
-- recency is greatest(accessed_at, created_at), which the LRU and LFU victim queries return
-- beside the index's order, and the write plan (`sqlcache._plan._evict_if_over`) catches a
-- candidate's `accessed_at` up to its `created_at` (statement `catch_up_access`) when it reaches
-- the eviction front, so the order stays exact. The counters and tag rows are kept as before.

CREATE OR REPLACE FUNCTION sqlcache_entries_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE counters AS c SET bytes = c.bytes + d.b
    FROM (SELECT coalesce(sum(n.size - o.size), 0) AS b FROM new_rows AS n JOIN old_rows AS o USING (id)) AS d
    WHERE c.slot = sqlcache_slot() AND d.b <> 0;
    DELETE FROM tags AS t USING old_rows AS o JOIN new_rows AS n USING (id)
    WHERE t.entry_id = o.id AND o.tags <> n.tags;
    RETURN NULL;
END $$;

-- `accessed_at` as before: the last read, or the latest write if it came after.
CREATE OR REPLACE VIEW cache_entries AS
SELECT e.key,
       e.tags,
       e.size,
       sqlcache_iso(e.created_at) AS created_at,
       sqlcache_iso(e.expires_at) AS expires_at,
       sqlcache_iso(greatest(a.accessed_at, e.created_at)) AS accessed_at,
       a.access_count,
       CASE WHEN e.codec IN (0, 3) THEN convert_from(e.value, 'UTF8') END AS value_json,
       CASE e.codec WHEN 0 THEN 'json' WHEN 1 THEN 'bytes' WHEN 2 THEN 'pickle' WHEN 3 THEN 'json' END AS codec,
       e.expires_at IS NOT NULL AND e.expires_at <= extract(epoch FROM now()) AS expired,
       sqlcache_iso(e.stale_until) AS stale_until
FROM entries AS e
LEFT JOIN access AS a ON a.entry_id = e.id;

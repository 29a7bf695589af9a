-- sqlcache schema for PostgreSQL, version 3: stale windows, for get_or_set(..., stale_ttl=...)
-- (SQLite's 0005).
--
-- An entry stored with a stale window keeps its row past `expires_at` until `stale_until`, so
-- that get_or_set can serve the old value while one background call refreshes it. Plain reads
-- still end at `expires_at`; the purge, the "expired first" step of eviction and the TTL
-- strategy's order go by the end of the entry's life, `coalesce(stale_until, expires_at)` (the
-- same as `expires_at` for an entry without a window), through the expression index below. It
-- takes the place of the expiry index, which nothing walks any more: a set maintains as many
-- indexes as before.

ALTER TABLE entries ADD COLUMN stale_until double precision;  -- NULL: no stale window; else >= expires_at
CREATE INDEX entries_by_end ON entries ((coalesce(stale_until, expires_at))) WHERE expires_at IS NOT NULL;
DROP INDEX entries_by_expiry;

-- The same columns as before, and the window's end last (as on SQLite).
CREATE OR REPLACE VIEW cache_entries AS
SELECT e.key,
       e.tags,
       e.size,
       sqlcache_iso(e.created_at) AS created_at,
       sqlcache_iso(e.expires_at) AS expires_at,
       sqlcache_iso(a.accessed_at) AS accessed_at,
       a.access_count,
       CASE WHEN e.codec IN (0, 3) THEN convert_from(e.value, 'UTF8') END AS value_json,
       CASE e.codec WHEN 0 THEN 'json' WHEN 1 THEN 'bytes' WHEN 2 THEN 'pickle' WHEN 3 THEN 'json' END AS codec,
       e.expires_at IS NOT NULL AND e.expires_at <= extract(epoch FROM now()) AS expired,
       sqlcache_iso(e.stale_until) AS stale_until
FROM entries AS e
LEFT JOIN access AS a ON a.entry_id = e.id;

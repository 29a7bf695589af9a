-- sqlcache schema, version 5: stale windows, for get_or_set(..., stale_ttl=...).
--
-- An entry stored with a stale window keeps its row past `expires_at` until `stale_until`, so
-- that get_or_set can serve the old value while one background call refreshes it. Plain reads
-- still end at `expires_at`; the purge, the "expired first" step of eviction and the TTL
-- strategy's order go by the end of the entry's life, `coalesce(stale_until, expires_at)`
-- (the same as `expires_at` for an entry without a window), through the index below. It takes
-- the place of the expiry index, which nothing walks any more: a set writes as many index
-- pages as before.

ALTER TABLE entries ADD COLUMN stale_until REAL;  -- NULL: no stale window; else >= expires_at
CREATE INDEX entries_by_end ON entries (coalesce(stale_until, expires_at)) WHERE expires_at IS NOT NULL;
DROP INDEX entries_by_expiry;

-- The same columns as before, and the window's end last.
DROP VIEW cache_entries;
CREATE VIEW cache_entries AS
SELECT e.key,
       e.tags,
       e.size,
       strftime('%Y-%m-%dT%H:%M:%fZ', e.created_at, 'unixepoch') AS created_at,
       strftime('%Y-%m-%dT%H:%M:%fZ', e.expires_at, 'unixepoch') AS expires_at,
       strftime('%Y-%m-%dT%H:%M:%fZ', a.accessed_at, 'unixepoch') AS accessed_at,
       a.access_count,
       CASE WHEN e.codec IN (0, 3) THEN CAST(e.value AS TEXT) END AS value_json,
       CASE e.codec WHEN 0 THEN 'json' WHEN 1 THEN 'bytes' WHEN 2 THEN 'pickle' WHEN 3 THEN 'json' END AS codec,
       e.expires_at IS NOT NULL AND e.expires_at <= (julianday('now') - 2440587.5) * 86400.0 AS expired,
       strftime('%Y-%m-%dT%H:%M:%fZ', e.stale_until, 'unixepoch') AS stale_until
FROM entries AS e
LEFT JOIN access AS a ON a.entry_id = e.id;

-- sqlcache schema, version 6: a set over an existing entry writes only what it changed.
--
-- Until now the update trigger moved the entry's `access.accessed_at` to the set's time (a write
-- counts as a use) and rewrote the counters row on every set: three more pages per commit (the
-- access row and its recency index, the counters row), about a third of a refresh's cost.
-- Now a set leaves `access` alone and the write's use is read from `entries.created_at`: an
-- entry's recency is max(accessed_at, created_at), which the LRU and LFU victim queries return
-- beside the index's order. The write plan (`sqlcache._plan._evict_if_over`) takes a candidate
-- only where that recency is known to come before every entry the index has not yet given; a
-- candidate rewritten since its last read has its `accessed_at` caught up to its `created_at`
-- (statement `catch_up_access`) and takes its place in the order there. So the order stays
-- exact, and a write's recency is stored only for entries that reach the eviction front.
-- The counters change only when the size does, and the tag rows go only when the tags changed.

DROP TRIGGER entries_after_update;

CREATE TRIGGER entries_after_resize AFTER UPDATE OF size ON entries WHEN NEW.size <> OLD.size BEGIN
    UPDATE counters SET bytes = bytes + NEW.size - OLD.size WHERE id = 1;
END;

CREATE TRIGGER entries_after_retag AFTER UPDATE OF tags ON entries WHEN NEW.tags <> OLD.tags BEGIN
    DELETE FROM tags WHERE entry_id = OLD.id;
END;

-- `accessed_at` as before: the last read, or the latest write if it came after.
DROP VIEW cache_entries;
CREATE VIEW cache_entries AS
SELECT e.key,
       e.tags,
       e.size,
       strftime('%Y-%m-%dT%H:%M:%fZ', e.created_at, 'unixepoch') AS created_at,
       strftime('%Y-%m-%dT%H:%M:%fZ', e.expires_at, 'unixepoch') AS expires_at,
       strftime('%Y-%m-%dT%H:%M:%fZ', max(a.accessed_at, e.created_at), 'unixepoch') AS accessed_at,
       a.access_count,
       CASE WHEN e.codec IN (0, 3) THEN CAST(e.value AS TEXT) END AS value_json,
       CASE e.codec WHEN 0 THEN 'json' WHEN 1 THEN 'bytes' WHEN 2 THEN 'pickle' WHEN 3 THEN 'json' END AS codec,
       e.expires_at IS NOT NULL AND e.expires_at <= (julianday('now') - 2440587.5) * 86400.0 AS expired,
       strftime('%Y-%m-%dT%H:%M:%fZ', e.stale_until, 'unixepoch') AS stale_until
FROM entries AS e
LEFT JOIN access AS a ON a.entry_id = e.id;

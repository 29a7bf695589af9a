-- sqlcache schema, version 1.
--
-- One row per disk entry in `entries`, written once per set. Read statistics, which change on
-- every read, live in `access` so that updating them never rewrites the row holding the value.
-- `tags` is the tag index, kept in step with `entries.tags` by triggers; `counters` keeps the
-- entry count and byte total in O(1); `invalidations` is the log other processes read to drop
-- stale copies from their memory tiers. Times are epoch seconds (REAL); the views show ISO-8601.

CREATE TABLE entries (
    id          INTEGER PRIMARY KEY,
    key         TEXT    NOT NULL UNIQUE,      -- its index also serves prefix ranges (patterns)
    value       BLOB    NOT NULL,
    codec       INTEGER NOT NULL,             -- 0 JSON, 1 bytes, 2 pickle, 3 JSON with NaN/big ints
    size        INTEGER NOT NULL,             -- bytes of key and value, what disk_max_size bounds
    tags        TEXT    NOT NULL DEFAULT '[]', -- JSON array, the source of the tags table
    created_at  REAL    NOT NULL,             -- time of the latest set (FIFO order)
    expires_at  REAL                          -- NULL: never expires
);
CREATE INDEX entries_by_expiry ON entries (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX entries_by_creation ON entries (created_at);

CREATE TABLE access (
    entry_id     INTEGER PRIMARY KEY,         -- entries.id
    accessed_at  REAL    NOT NULL,            -- last read, or the write if never read
    access_count INTEGER NOT NULL DEFAULT 0   -- reads since the entry was first written
);
CREATE INDEX access_by_recency ON access (accessed_at);
CREATE INDEX access_by_frequency ON access (access_count, accessed_at);

CREATE TABLE tags (
    tag      TEXT    NOT NULL,
    entry_id INTEGER NOT NULL,
    PRIMARY KEY (tag, entry_id)
) WITHOUT ROWID;
CREATE INDEX tags_by_entry ON tags (entry_id);

CREATE TABLE counters (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    entries INTEGER NOT NULL,
    bytes   INTEGER NOT NULL
);
INSERT INTO counters (id, entries, bytes) VALUES (1, 0, 0);

CREATE TABLE invalidations (
    seq     INTEGER PRIMARY KEY,             -- max+1; the trim always keeps the newest row, so never reused
    origin  TEXT NOT NULL,                    -- the writing CacheManager, which skips its own rows
    kind    TEXT NOT NULL CHECK (kind IN ('key', 'tag', 'pattern', 'clear')),
    arg     TEXT,
    logged_at REAL NOT NULL                   -- wall-clock time, for trimming the log
);

-- A new entry: count it, give it an access row (its write is its last use) and index its tags.
CREATE TRIGGER entries_after_insert AFTER INSERT ON entries BEGIN
    UPDATE counters SET entries = entries + 1, bytes = bytes + NEW.size WHERE id = 1;
    INSERT OR REPLACE INTO access (entry_id, accessed_at, access_count) VALUES (NEW.id, NEW.created_at, 0);
    INSERT OR IGNORE INTO tags (tag, entry_id) SELECT value, NEW.id FROM json_each(NEW.tags);
END;

-- A set over an existing entry: the write counts as a use; its reads are kept; tags replaced.
CREATE TRIGGER entries_after_update AFTER UPDATE ON entries BEGIN
    UPDATE counters SET bytes = bytes + NEW.size - OLD.size WHERE id = 1;
    UPDATE access SET accessed_at = max(accessed_at, NEW.created_at) WHERE entry_id = NEW.id;
    DELETE FROM tags WHERE entry_id = OLD.id AND OLD.tags <> NEW.tags;
    INSERT OR IGNORE INTO tags (tag, entry_id) SELECT value, NEW.id FROM json_each(NEW.tags) WHERE OLD.tags <> NEW.tags;
END;

-- A removed entry takes its statistics and tags with it.
CREATE TRIGGER entries_after_delete AFTER DELETE ON entries BEGIN
    UPDATE counters SET entries = entries - 1, bytes = bytes - OLD.size WHERE id = 1;
    DELETE FROM access WHERE entry_id = OLD.id;
    DELETE FROM tags WHERE entry_id = OLD.id;
END;

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
       e.expires_at IS NOT NULL AND e.expires_at <= (julianday('now') - 2440587.5) * 86400.0 AS expired
FROM entries AS e
LEFT JOIN access AS a ON a.entry_id = e.id;

CREATE VIEW cache_tags AS
SELECT t.tag, count(*) AS entries, sum(e.size) AS bytes
FROM tags AS t
JOIN entries AS e ON e.id = t.entry_id
GROUP BY t.tag;

-- sqlcache schema, version 3: tag rows are written by the store, not by a trigger.
--
-- Version 1's triggers indexed a set's tags with `json_each(NEW.tags)`, and SQLite's JSON
-- functions end a string at an escaped NUL ("grp\u0000A" became "grp"). The store now inserts
-- one `tags` row per tag with bound parameters (statement `insert_tag`), which keeps every
-- character; the triggers keep the counters and access rows as before, and an update still
-- drops the old tag rows when the tags changed.

DROP TRIGGER entries_after_insert;
CREATE TRIGGER entries_after_insert AFTER INSERT ON entries BEGIN
    UPDATE counters SET entries = entries + 1, bytes = bytes + NEW.size WHERE id = 1;
    INSERT OR REPLACE INTO access (entry_id, accessed_at, access_count) VALUES (NEW.id, NEW.created_at, 0);
END;

DROP TRIGGER entries_after_update;
CREATE TRIGGER entries_after_update AFTER UPDATE ON entries BEGIN
    UPDATE counters SET bytes = bytes + NEW.size - OLD.size WHERE id = 1;
    UPDATE access SET accessed_at = max(accessed_at, NEW.created_at) WHERE entry_id = NEW.id;
    DELETE FROM tags WHERE entry_id = OLD.id AND OLD.tags <> NEW.tags;
END;

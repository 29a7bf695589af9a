-- sqlcache schema, version 4: each strategy's eviction index exists only where it is used.
--
-- Every set wrote all three eviction orders (recency, frequency, creation), though a process
-- evicts by one: two index pages per set for nothing, about a fifth of a set's commit. As in
-- diskcache's table of eviction policies, a store now creates on open the index its strategy
-- walks (`STRATEGY_INDEXES` in sqlcache/_sqlite.py: `CREATE INDEX IF NOT EXISTS`, so processes
-- with different strategies on one file each get theirs). The expiry index stays: the purge and
-- "expired first" use it under every strategy.

DROP INDEX access_by_recency;
DROP INDEX access_by_frequency;
DROP INDEX entries_by_creation;

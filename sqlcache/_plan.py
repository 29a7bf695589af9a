"""The write algorithm every SQL store shares, written once and without I/O.

A batch of write operations becomes one transaction. What happens in it (the order of the
statements, which rows eviction takes, what goes into the invalidation log, when a loader's
result is skipped) is the same on every engine; only the SQL text and the driver differ. So the
algorithm is a generator in the style of sans-I/O protocol libraries: `write_batch` yields a
`Query` naming a statement of the engine's table, and is sent back the rows it returned. A
store runs the plan with its own driver (`run` for a blocking DB-API connection; an async
engine writes the same five-line loop with `await`).

What a set writes, and what eviction reads. A set over an existing entry writes its row and a
log row, nothing else: not its read statistics (`access`), and the counters and tag rows only
when its size or tags changed (SQLite migration 0006, PostgreSQL 0004). A write still counts as
the entry's latest use: LRU and LFU rank a candidate by (count, max(accessed_at, created_at)),
and `_choose` keeps that order exact although the index walks the stored `accessed_at` (a
candidate rewritten since its last read has its `accessed_at` caught up when it reaches the
eviction front). The first victim query of an eviction reads about as many candidates as the
excess needs (`VICTIM_SLACK`), and expired entries are looked for only when `read_fill` says one
has ended. The log is trimmed every `LOG_TRIM_EVERY` rows, not on every set.

Statement names and their parameters (each engine's table gives every one):

| name | parameters | returns |
|---|---|---|
| record_reads | many (count, last_read, key) | - |
| upsert_entry | (key, value, codec, size, tags_json, created_at, expires_at) | [(id,)] (a replaced entry's stale_until becomes NULL) |
| set_stale_until | (stale_until, id) | - |
| insert_tag | many (tag, entry_id) | - |
| touch_entry | (expires_at, expires_at, key, now) | [(key,)] (the live entry it updated) |
| delete_key | (key,) | [(key, expires_at)] |
| delete_tag | (tag,) | [(key, expires_at)] |
| delete_pattern_in_range | (low, high, pattern) | [(key, expires_at)] |
| delete_pattern_anywhere | (pattern,) | [(key, expires_at)] |
| delete_all | () | [(key, expires_at)] |
| delete_expired | (now, limit) | [(size,)] (ended at `now`: stale window over, or expired without one) |
| read_fill | () | [(entries, bytes, soonest_end, seq)] (soonest_end: the earliest coalesce(stale_until, expires_at), NULL if none; seq: as last_seq) |
| victims_lru / _lfu / _fifo / _ttl | (limit,) | [(id, key, size, count, used_at, written_at)] in (count, used_at) order |
| catch_up_access | many (written_at, id) | - (accessed_at = max(accessed_at, written_at)) |
| delete_id | many (id,) | - |
| log_changes | many (origin, kind, arg, logged_at) | - |
| read_log_since | (seq,) | [(seq, origin, kind, arg)] in seq order |
| last_seq | () | [(seq,)] |
| trim_log | (seq,) | - (deletes rows with seq <= the parameter) |
"""

from __future__ import annotations

import functools
import math
import re
import time
from typing import Any, Generator, Iterable, Mapping, NamedTuple, Sequence, TypeVar

import orjson

from ._config import InvalidationStrategy
from ._store import (
    Change,
    Changes,
    FlushReads,
    PurgeExpired,
    Put,
    PutMany,
    ReadCounts,
    Remove,
    RemoveAll,
    Removed,
    RemovePattern,
    RemoveTag,
    Touch,
    WriteOp,
    WriteResult,
    prefix_successor,
)

T = TypeVar("T")

LOG_KEEP_ROWS = 4096
"""Invalidation-log rows kept at least; the writes trim the older ones. A process that falls
further behind than this sees a gap and empties its memory tier (correct, only colder). At the
`LOG_ARG_LIMIT` below the log stays under about (4096 + 64) x 1 KiB, some 4 MiB, inside the
16 MiB slack of DESIGN.md's file bound."""

LOG_TRIM_EVERY = 64
"""Log rows between two trims: the batch whose rows reach a multiple of 64 trims back to
`LOG_KEEP_ROWS`. Trimming one row per set wrote the log's oldest page on every commit, one of
the four pages a refresh writes (~50 rows of ~80 bytes fill a 4 KiB page, so 64 rows empty
about one page per trim)."""

LOG_ARG_LIMIT = 1024
"""Longest key, tag or pattern (in characters) logged as itself. A longer one is logged as
'clear': other processes then empty their memory tiers, which is always correct."""

EVICTION_CHUNK = 32
"""Most victim candidates read per query beyond the keys being written (never victims)."""

VICTIM_SLACK = 2
"""Candidates read beyond the number of average-sized entries that would free the excess: the
first query of an eviction reads that many (typically 3 for one set at the bound, not 32: each
candidate costs about a microsecond), and each further round of the same eviction twice as many,
up to `EVICTION_CHUNK`."""

VICTIMS = {
    InvalidationStrategy.LRU: ("victims_lru",),
    InvalidationStrategy.LFU: ("victims_lfu",),
    InvalidationStrategy.FIFO: ("victims_fifo",),
    # Entries that never expire come after every entry that does, oldest written first.
    InvalidationStrategy.TTL: ("victims_ttl", "victims_fifo"),
}


class Query(NamedTuple):
    """One statement of the engine's table, by name. `many`: `params` is a list of rows.
    (A named tuple: a set makes six, and one costs half a frozen dataclass's construction.)"""

    name: str
    params: Sequence[Any] = ()
    many: bool = False


Plan = Generator[Query, list, T]


def run(plan: Plan[T], execute: Any) -> T:
    """Drive `plan` with `execute(query) -> rows`, a blocking call (DB-API drivers)."""
    try:
        query = next(plan)
        while True:
            query = plan.send(execute(query))
    except StopIteration as done:
        return done.value


def write_batch(
    ops: Sequence[WriteOp],
    reads: Mapping[str, ReadCounts],
    *,
    now: float,
    origin: str,
    max_bytes: int,
    strategy: InvalidationStrategy,
) -> Plan[WriteResult]:
    """Apply `ops` in order, log them for other processes, evict if over, trim the log.

    The caller has begun the transaction and commits it when the plan returns.
    """
    if reads:
        yield Query("record_reads", [(count, last, key) for key, (count, last) in reads.items()], many=True)
    wall = time.time()  # log rows carry wall-clock time for people reading the table; order is by seq
    log: list[tuple[str, str, str, float]] = []
    results: list[Any] = []
    written: set[str] = set()
    for op in ops:
        if isinstance(op, (Put, Remove)) and op.unless_changed_since is not None:
            key = op.key if isinstance(op, Put) else op.keys[0]
            if (yield from changed_since(op.unless_changed_since, key, op.tags, origin, log)):
                results.append(None)
                continue
        if isinstance(op, (Put, PutMany)):
            for put in op.puts if isinstance(op, PutMany) else (op,):
                [(entry_id,)] = yield Query("upsert_entry", _entry_row(put))
                if put.stale_until is not None:
                    yield Query("set_stale_until", (put.stale_until, entry_id))
                if put.tags:
                    yield Query("insert_tag", [(tag, entry_id) for tag in put.tags], many=True)
                written.add(put.key)
            results.append(True)
        elif isinstance(op, Touch):
            touched = bool((yield Query("touch_entry", (op.expires_at, op.expires_at, op.key, op.now))))
            results.append(touched)
            if not touched:
                continue  # no live entry: nothing changed, nothing to log
        elif isinstance(op, PurgeExpired):
            results.append(len((yield Query("delete_expired", (op.now, op.limit)))))
        elif isinstance(op, FlushReads):
            results.append(None)
        else:
            results.append((yield from _remove(op)))
        log.extend(_log_rows(op, origin, wall))
    if log:
        yield Query("log_changes", log, many=True)
    if written:  # the fill's query also reads the log's position: eviction logs nothing
        expired, evicted, seq = yield from _evict_if_over(now, written, max_bytes, strategy)
    else:
        expired = evicted = 0
        [(seq,)] = yield Query("last_seq")
    if log and seq > LOG_KEEP_ROWS and (seq - len(log)) // LOG_TRIM_EVERY != seq // LOG_TRIM_EVERY:
        yield Query("trim_log", (seq - LOG_KEEP_ROWS,))
    return WriteResult(results, evicted=evicted, expired=expired, seq=seq, logged=len(log))


def _remove(op: WriteOp) -> Plan[list[Removed]]:
    rows: list[Any] = []
    if isinstance(op, Remove):
        for key in op.keys:
            rows += yield Query("delete_key", (key,))
    elif isinstance(op, RemoveTag):
        rows = yield Query("delete_tag", (op.tag,))
    elif isinstance(op, RemovePattern):
        upper = prefix_successor(op.prefix) if op.prefix else None
        if upper is None:
            rows = yield Query("delete_pattern_anywhere", (op.pattern,))
        else:
            rows = yield Query("delete_pattern_in_range", (op.prefix, upper, op.pattern))
    elif isinstance(op, RemoveAll):
        rows = yield Query("delete_all")
    else:
        raise TypeError(f"unknown write operation {op!r}")
    return rows


def changed_since(
    seq: int, key: str, tags: Iterable[str], origin: str, pending: Sequence[tuple[str, str, str, float]]
) -> Plan[bool]:
    """Whether a change logged after position `seq`, or logged earlier in this batch, may have
    touched `key` (carrying `tags`): a set or delete of it, one of its tags, a matching pattern,
    a clear, or log rows lost to the trim (then nobody knows, so: yes)."""
    rows = yield Query("read_log_since", (seq,))
    if rows and rows[0][0] != seq + 1:
        return True  # trimmed past `seq`
    tags = set(tags)
    changes = [(kind, arg) for _, _, kind, arg in rows] + [(kind, arg) for _, kind, arg, _ in pending]
    return any(_touches(kind, arg, key, tags) for kind, arg in changes)


def _touches(kind: str, arg: str, key: str, tags: set[str]) -> bool:
    if kind == "key":
        return arg == key
    if kind == "tag":
        return arg in tags
    if kind == "pattern":
        try:
            return re.match(arg, key) is not None
        except re.error:
            return True  # a pattern this Python cannot read: assume the worst
    return True  # 'clear'


def _evict_if_over(now: float, written: set[str], max_bytes: int, strategy: InvalidationStrategy) -> Plan[tuple[int, int, int]]:
    """Bring the bytes back under `max_bytes`: expired entries first, then the strategy's
    victims, never an entry written in this batch. Returns the (expired, evicted) counts and
    the log's position, which the fill's query reads too."""
    [(entries, size, soonest_end, seq)] = yield Query("read_fill")
    excess = size - max_bytes
    expired = evicted = 0
    while excess > 0 and soonest_end is not None and soonest_end <= now:
        freed = [size for (size,) in (yield Query("delete_expired", (now, EVICTION_CHUNK)))]
        if not freed:
            break
        expired += len(freed)
        excess -= sum(freed)
    for victims in VICTIMS[strategy]:
        chunk = min(EVICTION_CHUNK, VICTIM_SLACK + math.ceil(excess * entries / size)) if excess > 0 else 0
        while excess > 0:
            limit = len(written) + chunk
            chosen, late = _choose((yield Query(victims, (limit,))), limit, written, excess)
            chunk = min(EVICTION_CHUNK, 2 * chunk)  # a round that did not finish reads more next time
            if late:
                yield Query("catch_up_access", late, many=True)
            if chosen:
                yield Query("delete_id", [(entry_id,) for entry_id, _ in chosen], many=True)
                evicted += len(chosen)
                excess -= sum(size for _, size in chosen)
            elif not late:
                break
    return expired, evicted, seq


def _choose(
    rows: Sequence[tuple[int, str, int, int, float, float]], limit: int, written: set[str], excess: int
) -> tuple[list[tuple[int, int]], list[tuple[float, int]]]:
    """The victims among one query's candidates, in the strategy's exact order, freeing at least
    `excess` bytes if they can; and the candidates whose stored recency lags behind a later set.

    A candidate ranks by (count, max(used_at, written_at)); the query gives them in the order of
    the stored (count, used_at), which a set does not update (migration 0006): an entry rewritten
    since its last read ranks later than its index position says. Every entry the query did not
    return ranks at or after the last candidate's stored order, so a candidate ranked up to there
    is placed exactly; one ranked beyond it is not taken now but returned as (written_at, id), so
    its `accessed_at` catches up with its write and the next query finds it where it belongs.
    A query that returned fewer than `limit` rows returned every entry: all are placed."""
    bound = (rows[-1][3], rows[-1][4]) if len(rows) >= limit else None
    chosen: list[tuple[int, int]] = []
    late: list[tuple[float, int]] = []
    for entry_id, key, size, count, used_at, written_at in sorted(rows, key=lambda row: (row[3], max(row[4], row[5]))):
        if excess <= 0:
            break
        if bound is not None and (count, max(used_at, written_at)) > bound:
            late.append((written_at, entry_id))
        elif key not in written:
            chosen.append((entry_id, size))
            excess -= size
    return chosen, late


def changes_from_log(rows: Sequence[tuple[int, str, str, str | None]], last_seq: int, origin: str) -> Changes:
    """Other processes' changes in log rows read after `last_seq`; incomplete if any row
    between is missing (trimmed before this process read it)."""
    complete = all(seq == last_seq + 1 + index for index, (seq, *_) in enumerate(rows))
    return Changes([Change(seq, kind, arg or "") for seq, row_origin, kind, arg in rows if row_origin != origin], complete)


def _entry_row(op: Put) -> tuple[Any, ...]:
    size = len(op.key.encode()) + len(op.data)
    tags = orjson.dumps(op.tags).decode() if op.tags else "[]"
    return (op.key, op.data, op.codec, size, tags, op.created_at, op.expires_at)


def _log_rows(op: WriteOp, origin: str, wall: float) -> list[tuple[str, str, str, float]]:
    if isinstance(op, (Put, Touch)):
        changes = [("key", op.key)]
    elif isinstance(op, PutMany):
        changes = [("key", put.key) for put in op.puts]
    elif isinstance(op, Remove):
        changes = [("key", key) for key in op.keys]
    elif isinstance(op, RemoveTag):
        changes = [("tag", op.tag)]
    elif isinstance(op, RemovePattern):
        changes = [("pattern", op.pattern)]
    elif isinstance(op, RemoveAll):
        changes = [("clear", "")]
    else:
        return []  # purges and read statistics change no live value
    return [(origin, *(("clear", "") if len(arg) > LOG_ARG_LIMIT else (kind, arg)), wall) for kind, arg in changes]


@functools.lru_cache(maxsize=1024)
def decode_tags(text: str) -> tuple[str, ...]:
    """The `tags` column (a JSON array) as a tuple; the same few tag lists recur on every read."""
    return () if text == "[]" else tuple(orjson.loads(text))

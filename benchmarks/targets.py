"""Issue 7's targets, each a ratio of two rows measured in the same run on the same machine.

A single caller's cost is its median latency; many callers' cost is wall time per operation
(`Stats.cost_ns`). Every ratio is written so that the target reads "measured <= limit" or
"measured >= limit" exactly as the issue states it.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass
from typing import Callable, Sequence

from . import workloads as w
from .context import Row
from .measure import STALL_LIMIT_MS, Stats



@dataclass(frozen=True)
class Outcome:
    number: str
    target: str
    measured: str
    met: bool | None  # None: not measured in this run


def find(rows: Sequence[Row], workload: str, peer: str, op_prefix: str = "") -> Stats | None:
    for row in rows:
        if row.workload == workload and row.peer == peer and row.op.startswith(op_prefix) and row.stats:
            return row.stats
    return None


def _ratio(
    number: str, target: str, numerator: Stats | None, denominator: Stats | None,
    limit: float, compare: Callable[[float, float], bool],
) -> Outcome:
    if numerator is None or denominator is None:
        return Outcome(number, target, "not measured (a row is missing: peer skipped?)", None)
    ratio = numerator.cost_ns / denominator.cost_ns
    return Outcome(number, target, f"{ratio:.2f}×", compare(ratio, limit))


def _at_most(number: str, target: str, a: Stats | None, b: Stats | None, limit: float) -> Outcome:
    """cost(a) / cost(b) <= limit."""
    return _ratio(number, target, a, b, limit, operator.le)


def _at_least(number: str, target: str, a: Stats | None, b: Stats | None, limit: float) -> Outcome:
    """cost(a) / cost(b) >= limit (a is the slower peer)."""
    return _ratio(number, target, a, b, limit, operator.ge)


def _growth(rows: Sequence[Row]) -> list[Outcome]:
    mine = [r for r in rows if r.workload == "growth" and r.peer == w.SQLCACHE_DISK and r.stats]
    sizes = sorted({r.extra["entries"] for r in mine})
    outcomes = []
    for op in ("get", "set+evict", "invalidate tag (1,000)"):
        first = next((r.stats for r in mine if r.op.startswith(op) and r.extra["entries"] == sizes[0]), None) if sizes else None
        last = next((r.stats for r in mine if r.op.startswith(op) and r.extra["entries"] == sizes[-1]), None) if sizes else None
        span = f"{sizes[-1]:,} vs {sizes[0]:,} entries" if sizes else "growth"
        outcomes.append(_at_most("6", f"growth, {op}: cost at {span} ≤ 2×", last, first, 2.0))
    return outcomes


def _stall(rows: Sequence[Row]) -> Outcome:
    mine = [r for r in rows if r.family == "sqlcache" and r.stats]
    if not mine:
        return Outcome("7", f"no event-loop stall above {STALL_LIMIT_MS:g} ms in any workload", "not measured", None)
    worst = max(mine, key=lambda r: r.stats.stall_ms)
    over = sum(r.stats.beats_over_limit for r in mine)
    beats = sum(r.stats.beats for r in mine)
    measured = (f"{worst.stats.stall_ms:.2f} ms (worst: {worst.workload}, {worst.op}); "
                f"{over} of {beats:,} heartbeats over {STALL_LIMIT_MS:g} ms")
    return Outcome("7", f"no event-loop stall above {STALL_LIMIT_MS:g} ms in any workload", measured,
                   worst.stats.stall_ms <= STALL_LIMIT_MS)


def evaluate(rows: Sequence[Row]) -> list[Outcome]:
    """Every target of the issue, in its order."""
    f = functools.partial(find, rows)
    fifo = f("strategy_hit", w.strategy_label("fifo"))
    return [
        _at_most("1a", "memory hit: sqlcache get ≤ 3× an awaited bare cachetools get",
                 f("memory_hit", w.SQLCACHE_MEMORY), f("memory_hit", w.CACHETOOLS), 3.0),
        _at_least("1b", "memory hit: cashews mem:// ≥ 5× slower than sqlcache",
                  f("memory_hit", w.CASHEWS_MEM), f("memory_hit", w.SQLCACHE_MEMORY), 5.0),
        _at_least("1c", "memory hit: aiocache ≥ 5× slower than sqlcache",
                  f("memory_hit", w.AIOCACHE), f("memory_hit", w.SQLCACHE_MEMORY), 5.0),
        _at_least("2a", "disk hit, 64 callers: sqlcache throughput ≥ 1.5× diskcache's",
                  f("disk_hit_64", w.DISKCACHE), f("disk_hit_64", w.SQLCACHE_DISK), 1.5),
        _at_most("2b", "disk hit, 1 caller: sqlcache ≤ 1.3× one raw aiosqlite round trip",
                 f("disk_hit", w.SQLCACHE_DISK), f("disk_hit", w.AIOSQLITE), 1.3),
        _at_least("3a", "durable set, 64 writers: sqlcache throughput ≥ 3× diskcache's",
                  f("set_64", w.DISKCACHE), f("set_64", w.SQLCACHE_SET), 3.0),
        _at_most("3b", "durable set, 1 caller: sqlcache ≤ 1.5× diskcache",
                 f("set", w.SQLCACHE_SET), f("set", w.DISKCACHE), 1.5),
        _at_most("4a", "disk hit under LRU ≤ 1.2× the same hit under FIFO",
                 f("strategy_hit", w.strategy_label("lru")), fifo, 1.2),
        _at_most("4b", "disk hit under LFU ≤ 1.2× the same hit under FIFO",
                 f("strategy_hit", w.strategy_label("lfu")), fifo, 1.2),
        _at_most("5a", "tag invalidation: sqlcache no slower than diskcache evict(tag) with tag_index",
                 f("tag_invalidation", w.SQLCACHE), f("tag_invalidation", w.DISKCACHE_TAGS), 1.0),
        _at_most("5b", "prefix-pattern invalidation ≤ 1.5× tag invalidation of the same count",
                 f("prefix_invalidation", w.SQLCACHE), f("tag_invalidation", w.SQLCACHE), 1.5),
        *_growth(rows),
        _stall(rows),
    ]

"""`python -m benchmarks.profile WORKLOAD`: where sqlcache's time goes in one workload.

Sets sqlcache up as the harness does for that workload (same values, keys and options), times
the operations once without a profiler (the honest µs per op), then again under `cProfile`, and
prints the functions with the most time of their own, in µs per operation. cProfile adds about a
microsecond to every Python call, so the profiled figures are inflated where calls are many and
short; read them for where the time goes, and the unprofiled figure for how much there is.

    python -m benchmarks.profile disk_hit
    python -m benchmarks.profile set --ops 4000 --top 30
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

from . import data, measure
from .peers import SqlcachePeer
from .workloads import WRITE_SHARE, ZipfMix, strategy_label

KEYS = 10_000
ZIPF_KEYS = 20_000  # the full run's: the cache holds a tenth, the memory tier a quarter of that


@dataclass(frozen=True)
class Case:
    """One workload's sqlcache setup and operation."""

    description: str
    peer: Callable[[], SqlcachePeer]
    concurrency: int = 1
    loaded: int = KEYS
    reopen: bool = True


CASES = {
    "memory_hit": Case("get of a key the memory tier holds", lambda: SqlcachePeer("memory"), reopen=False),
    "disk_hit": Case("get answered by the disk tier (memory_max_size=0)", lambda: SqlcachePeer("disk", memory_max_size=0)),
    "disk_hit_64": Case("as disk_hit, 64 callers", lambda: SqlcachePeer("disk", memory_max_size=0), concurrency=64),
    "disk_hit_lfu": Case("as disk_hit, LFU", lambda: SqlcachePeer(strategy_label("lfu"), memory_max_size=0, strategy="lfu")),
    "set": Case("durable set refreshing a stored entry", lambda: SqlcachePeer("set")),
    "set_64": Case("as set, 64 callers", lambda: SqlcachePeer("set"), concurrency=64),
    "zipf_lru": Case(f"Zipf cache-aside mix ({1 - WRITE_SHARE:.0%} get), bounded, LRU",
                     lambda: SqlcachePeer("zipf", memory_max_size=ZIPF_KEYS // 40), loaded=0, reopen=False),
}


Operation = Callable[[int], Awaitable[object]]


def _operations(name: str, peer: SqlcachePeer, count: int) -> tuple[Operation, Operation]:
    """The same operation for the plain and the profiled pass (a read or a refresh is the same
    work the second time)."""
    if name.startswith("set"):
        entries = [next(data.items(i, i + 1)) for i in data.random_indices(count, KEYS, seed=9)]
        return (lambda i: peer.set(*entries[i]),) * 2
    keys = [data.key(i) for i in data.random_indices(count, KEYS)]
    return (lambda i: peer.get(keys[i]),) * 2


async def _zipf(peer: SqlcachePeer, count: int) -> tuple[Operation, Operation]:
    """The harness's Zipf mix, bounded to a tenth of the keys, warmed up by `count` ops; the
    plain and the profiled pass each get `count` ops of their own, so the profiled one meets as
    many misses (each storing, with eviction) as the plain one, not a replay that now hits."""
    mix = ZipfMix(ZIPF_KEYS, 3 * count)
    await peer.load(data.items(0, ZIPF_KEYS // 10, namespace="filler"))
    await peer.bound_here()
    for i in range(count):
        await mix.op(peer, i)
    return (lambda i: mix.op(peer, count + i)), (lambda i: mix.op(peer, 2 * count + i))


async def profile(name: str, count: int, top: int, sort: str) -> None:
    case = CASES[name]
    with tempfile.TemporaryDirectory(prefix="sqlcache-profile-") as scratch:
        peer = case.peer()
        await peer.open(Path(scratch) / "cache")
        try:
            await peer.load(data.items(0, case.loaded))
            if case.reopen:
                await peer.reopen()
            mixed = name.startswith("zipf")
            op, profiled_op = await _zipf(peer, count) if mixed else _operations(name, peer, count)
            plain = await measure.run(op, count, case.concurrency, mixed=mixed)
            profiler = cProfile.Profile()
            started = time.perf_counter()
            profiler.enable()
            await measure.run(profiled_op, count, case.concurrency, mixed=mixed)
            profiler.disable()
            profiled_s = time.perf_counter() - started
        finally:
            await peer.close()
    print(f"{name}: {case.description}; {count:,} ops, {case.concurrency} caller(s)")
    print(f"without the profiler: median {plain.median_ns / 1e3:.2f} µs, wall {1e6 / plain.ops_per_s:.2f} µs per op; "
          f"under it: wall {profiled_s / count * 1e6:.2f} µs per op")
    _print_top(pstats.Stats(profiler), count, top, sort)


def _print_top(stats: pstats.Stats, count: int, top: int, sort: str) -> None:
    rows = []
    for (file, line, function), (_, calls, own, total, _) in stats.stats.items():  # type: ignore[attr-defined]
        where = f"{Path(file).name}:{line}({function})" if line else function
        rows.append((own, total, calls, where))
    rows.sort(key=lambda row: row[0 if sort == "tottime" else 1], reverse=True)
    print(f"{'own µs/op':>10} {'incl. µs/op':>12} {'calls/op':>9}  function")
    for own, total, calls, where in rows[:top]:
        print(f"{own / count * 1e6:10.2f} {total / count * 1e6:12.2f} {calls / count:9.2f}  {where}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=sorted(CASES))
    parser.add_argument("--ops", type=int, default=5_000, help="operations timed (default 5,000)")
    parser.add_argument("--top", type=int, default=25, help="functions shown (default 25)")
    parser.add_argument("--sort", choices=("tottime", "cumtime"), default="tottime")
    args = parser.parse_args(argv)
    asyncio.run(profile(args.workload, args.ops, args.top, args.sort))
    return 0


if __name__ == "__main__":
    sys.exit(main())

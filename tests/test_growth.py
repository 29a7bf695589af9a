"""Growth: the disk tier's invalidations and evictions are index walks, not table scans.

Work is counted in SQLite virtual-machine steps (a progress handler on the writer connection),
which, unlike a stopwatch, does not depend on the machine or its load. The same operation on a
cache of 200,000 entries must cost about what it costs on 2,000 (ratio at most 4).
"""

from __future__ import annotations

import sqlite3


from sqlcache import CacheLevel, CacheManager
from sqlcache._sqlite import STATEMENTS

PER_GROUP = 100
VALUE = b"v" * 100


def bulk_fill(db_path, entries: int, now: float) -> int:
    """Insert `entries` rows (groups of 100 sharing a tag and a key prefix); return their bytes."""
    total = 0
    with sqlite3.connect(db_path) as db:
        for n in range(entries):
            group, item = divmod(n, PER_GROUP)
            key = f"g{group:05d}:{item:03d}"
            row = (key, VALUE, 1, len(key) + len(VALUE), f'["tag{group}"]', now + n * 1e-6, None)
            [(entry_id,)] = db.execute(STATEMENTS["upsert_entry"], row).fetchall()
            db.execute(STATEMENTS["insert_tag"], (f"tag{group}", entry_id))
            total += row[3]
    return total


def count_steps(manager: CacheManager, counter: "StepCounter | None") -> None:
    """Count the VM steps of both writing connections (the loop's and the worker's)."""
    for connection in (manager._store._loop_db, manager._store._worker):
        connection.set_progress_handler(counter, 10)


class StepCounter:
    def __init__(self) -> None:
        self.steps = 0

    def __call__(self) -> int:
        self.steps += 1
        return 0  # 0: carry on


async def measure(tmp_path, clock, entries: int) -> dict[str, float]:
    directory = tmp_path / f"n{entries}"
    manager = CacheManager({"disk_cache_dir": str(directory), "memory_max_size": 0}, clock=clock)
    await manager.open()
    total = bulk_fill(manager.config.db_path, entries, clock() - 10_000)  # older than any set below
    await manager.close()
    manager = CacheManager(
        {"disk_cache_dir": str(directory), "memory_max_size": 0, "disk_max_size": total}, clock=clock
    )
    await manager.open()
    counter = StepCounter()
    count_steps(manager, counter)

    async def steps_of(operation) -> float:
        rounds = 3
        counter.steps = 0
        for i in range(rounds):
            await operation(i)
        return counter.steps / rounds

    groups = entries // PER_GROUP

    async def invalidate_tag(i):
        assert await manager.invalidate_by_tag(f"tag{groups - 1 - i}") == PER_GROUP

    async def invalidate_prefix(i):
        assert await manager.invalidate_by_pattern(f"g{i + 3:05d}:.*") == PER_GROUP

    async def set_with_eviction(i):
        clock.advance(1)
        await manager.set(f"new{i}", VALUE, level=CacheLevel.DISK)

    work = {
        "tag invalidation": await steps_of(invalidate_tag),
        "prefix invalidation": await steps_of(invalidate_prefix),
    }
    count_steps(manager, None)
    stats = await manager.get_stats()  # fill exactly the room the invalidations freed
    await manager.set("fill", b"f" * (stats["disk_max_size"] - stats["disk_size"] - len("fill")), 0, CacheLevel.DISK)
    count_steps(manager, counter)
    work["set with eviction"] = await steps_of(set_with_eviction)
    assert (await manager.get_stats())["disk_evictions"] == 3
    await manager.close()
    return work


async def test_invalidation_and_eviction_cost_does_not_grow_with_the_cache(tmp_path, clock):
    small = await measure(tmp_path, clock, 2_000)
    large = await measure(tmp_path, clock, 200_000)
    ratios = {name: large[name] / small[name] for name in small}
    assert all(ratio <= 4 for ratio in ratios.values()), (ratios, small, large)

"""A stress worker process: `python stress_worker.py run DIR HISTORY NAME UNTIL SEED PHASE [URL]`.

Runs `TASKS` asyncio tasks of random operations on the small shared key space `KEYS` until the
wall-clock time UNTIL, and logs every operation as a JSON line in HISTORY (its own file), one
write and flush per line, so the history of a worker killed with SIGKILL survives up to the kill:
- a write (set, delete, invalidations, clear, a loader call) logs an "inv" line before it
  starts, so an op cut short by the kill is known, with outcome "unknown";
- every op logs a "ret" line when it ends: `t0`/`t1` (time.time()), outcome ("ok", "cancelled",
  "error:<Type>"), and for reads the id of the value returned (`got`) or its repr (`garbled`).
Every value is `history.make_value(vid)` with `vid` = NAME/task/op number: unique, and naming its
write. Phase 1 evicts and expires all the time; phase 2 never does (see `config`). With URL the
disk tier is that PostgreSQL database, and DIR this process's own directory (another host's).

`python stress_worker.py dump DIR PHASE [URL]` prints, as one JSON object, what a fresh process reads
for every key: one get at a time, all gets at once (coalesced on disk), and `get_many`.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from typing import Any, Callable

from history import value_id, make_value
from sqlcache import CacheLevel, CacheManager

TASKS = 6
SYNC_INTERVAL = 0.05
DEFAULT_TTL = {1: 30.0, 2: 0.0}

KEYS = [
    "k", "k\x00", "k\x00a", "k\x00b", "\x00", "\x00\x00", "", " ", "  ", "\n", "\t", "ключ", "ключ:1",
    "ключ\x00", "键", "🔑", "é", "e\u0301", "a|b", "a.b", "[x]", "x" * 200, "(y)", "\\", "%", "_", "'",
    "market:BTC:1m", "market:BTC:5m", "market:ETH:1m", "market:\x00:1m", "grp", "grp\x00A", "user:1",
    "user:10", "user:2", "\ufeff", "\u2028", "null", "k\x00\x00",
]
TAGS = ["t0", "t1", "t2", "grp", "grp\x00A", "тег", "", "\x00"]
PATTERNS = [
    "k", "k\x00", "k\x00a", "\x00", "market:BTC:.*", "market:", "ключ", "user:1$", "user:\\d+", "grp",
    "a\\|b", "k(?#()|market", "(?#c)k\x00", ".*\x00", "é", "\\[x\\]", "(?x: k \x00 )",
]
# Every third key is written 20 times less often than the others, so some values stay put for
# longer than the coherence bound and a stale copy elsewhere has time to show.
WRITE_WEIGHTS = [1 if i % 3 == 2 else 20 for i in range(len(KEYS))]
LEVELS = [CacheLevel.ALL, CacheLevel.ALL, CacheLevel.DISK, CacheLevel.MEMORY]
TTLS = [None, 0, 0.5, 2.0]  # phase 1; phase 2 never expires


def config(directory: str, phase: int, url: str | None = None) -> dict[str, Any]:
    """Phase 1: ~15 KiB of disk for ~40 keys of 50-950 byte values and 16 memory slots, so both
    tiers evict constantly, and TTLs as short as 0.5 s. Phase 2: nothing is ever evicted or expires,
    so a value that goes missing was lost."""
    common = {"disk_cache_dir": directory, "sync_interval": SYNC_INTERVAL, "busy_timeout": 20.0,
              "access_flush_interval": 0.1, "default_ttl": DEFAULT_TTL[phase],
              **({"disk_cache_url": url} if url else {})}
    if phase == 1:
        return {**common, "disk_max_size": 15 * 1024, "memory_max_size": 16, "purge_interval": 1.0}
    return {**common, "disk_max_size": 256 * 1024 * 1024, "memory_max_size": 10_000}


class LoaderFailed(Exception):
    """What a loader raises on purpose: the only error the workload expects."""


class Log:
    """The worker's history file: one JSON line per event, written through at once."""

    def __init__(self, path: str, name: str):
        self._file = open(path, "a", encoding="utf-8", buffering=1)
        self._name = name

    def event(self, event: str, task: int, n: int | str, op: str, **fields: Any) -> None:
        record = {"p": self._name, "T": task, "i": n, "op": op, "e": event, **fields}
        self._file.write(json.dumps(record, ensure_ascii=True) + "\n")


async def run(directory: str, history: str, name: str, until: str, seed: str, phase: str, url: str | None = None) -> None:
    log = Log(history, name)
    stop = float(until)
    async with CacheManager(config(directory, int(phase), url)) as cache:
        await asyncio.gather(*(Task(cache, log, name, t, random.Random(f"{seed}-{name}-{t}"), int(phase)).run(stop) for t in range(TASKS)))


class Task:
    """One stream of random operations, each logged with its invoke and completion times."""

    def __init__(self, cache: CacheManager, log: Log, name: str, task: int, rng: random.Random, phase: int):
        self.cache, self.log, self.name, self.task, self.rng, self.phase = cache, log, name, task, rng, phase
        self.n = 0

    async def run(self, stop: float) -> None:
        # Phase 2 removes less, so that a value that goes missing has no removal to excuse it.
        removals = 1.0 if self.phase == 1 else 0.3
        choices: list[tuple[float, Callable[[], Any]]] = [
            (30, self.get), (17, self.get_or_set), (28, self.set), (10 * removals, self.delete),
            (2 * removals, self.tag), (1.5 * removals, self.pattern), (0.03 * removals, self.clear),
        ]
        actions = [action for _, action in choices]
        weights = [weight for weight, _ in choices]
        while time.time() < stop:
            self.n += 1
            await self.rng.choices(actions, weights)[0]()

    async def call(self, op: str, action: Callable[[], Any], *, write: bool, cancel: float = 0.0, **fields: Any) -> Any:
        """Run `action()` (a coroutine factory), logging it; with probability `cancel` the caller
        gives up after a random 0-40 ms (wait_for timeout or task.cancel)."""
        t0 = time.time()
        if write:
            self.log.event("inv", self.task, self.n, op, t0=t0, **fields)
        result: Any = None
        try:
            if self.rng.random() >= cancel:
                result = await action()
            elif self.rng.random() < 0.5:
                result = await asyncio.wait_for(action(), self.rng.uniform(0, 0.04))
            else:
                running = asyncio.ensure_future(action())
                await asyncio.sleep(self.rng.uniform(0, 0.04))
                running.cancel()
                result = await running
            outcome = "ok"
        except (asyncio.CancelledError, asyncio.TimeoutError):
            outcome = "cancelled"
        except Exception as error:  # logged as the op's outcome; the checker treats it as unknown
            outcome = f"error:{type(error).__name__}"
            fields = {**fields, "err": str(error)[:300]}
        extra: dict[str, Any] = {}
        if op in ("get", "get_or_set") and outcome == "ok":
            vid, garbled = value_id(result)
            extra = {"got": vid} if garbled is None else {"garbled": garbled}
        self.log.event("ret", self.task, self.n, op, t0=t0, t1=time.time(), o=outcome, **fields, **extra)
        return result

    def key(self) -> str:
        return self.rng.choice(KEYS)

    def written_key(self) -> str:
        return self.rng.choices(KEYS, WRITE_WEIGHTS)[0]

    def vid(self) -> str:
        return f"{self.name}/{self.task}/{self.n}"

    def write_args(self) -> tuple[Any, CacheLevel, list[str]]:
        ttl = self.rng.choice(TTLS) if self.phase == 1 else 0
        return ttl, self.rng.choice(LEVELS), self.rng.sample(TAGS, self.rng.randrange(3))

    async def get(self) -> None:
        key = self.key()
        await self.call("get", lambda: self.cache.get(key), write=False, cancel=0.05, key=key)

    async def set(self) -> None:
        key, vid = self.written_key(), self.vid()
        ttl, level, tags = self.write_args()
        await self.call("set", lambda: self.cache.set(key, make_value(vid), ttl, level, tags), write=True,
                        cancel=0.05, key=key, vid=vid, level=level.value, tags=tags, ttl=ttl)

    async def get_or_set(self) -> None:
        key, vid = self.key(), self.vid()
        ttl, level, tags = self.write_args()
        n = self.n

        async def loader() -> dict[str, str]:
            fields = {"key": key, "vid": vid, "level": level.value, "tags": tags, "ttl": ttl}
            t0 = time.time()
            self.log.event("inv", self.task, f"L{n}", "load", t0=t0, **fields)
            outcome = "ok"
            try:
                await asyncio.sleep(self.rng.uniform(0, 0.05))
                if self.rng.random() < 0.05:
                    outcome = "error:LoaderFailed"
                    raise LoaderFailed("the stress worker's loader failed on purpose")
            except asyncio.CancelledError:
                outcome = "cancelled"
                raise
            finally:
                self.log.event("ret", self.task, f"L{n}", "load", t0=t0, t1=time.time(), o=outcome, **fields)
            return make_value(vid)

        await self.call("get_or_set", lambda: self.cache.get_or_set(key, loader, ttl, level, tags), write=False,
                        cancel=0.4, key=key)

    async def delete(self) -> None:
        key = self.written_key()
        await self.call("delete", lambda: self.cache.delete(key), write=True, cancel=0.05, key=key)

    async def tag(self) -> None:
        tag = self.rng.choice(TAGS)
        await self.call("tag", lambda: self.cache.invalidate_by_tag(tag), write=True, arg=tag)

    async def pattern(self) -> None:
        pattern = self.rng.choice(PATTERNS)
        await self.call("pattern", lambda: self.cache.invalidate_by_pattern(pattern), write=True, arg=pattern)

    async def clear(self) -> None:
        await self.call("clear", self.cache.clear, write=True)


async def dump(directory: str, phase: str, url: str | None = None) -> None:
    """What a fresh process reads for every key, three ways, as {way: {key: [vid, garbled]}}
    (`get_many` only where this sqlcache has it: DESIGN.md promises it, older code lacks it)."""
    views: dict[str, dict[str, tuple[str | None, str | None]]] = {}
    ways = ("get", "gather", "get_many") if hasattr(CacheManager, "get_many") else ("get", "gather")
    for way in ways:
        async with CacheManager(config(directory, int(phase), url)) as cache:
            if way == "get":
                values = [await cache.get(key) for key in KEYS]
            elif way == "gather":
                values = await asyncio.gather(*(cache.get(key) for key in KEYS))
            else:
                found = await cache.get_many(KEYS)
                values = [found.get(key) for key in KEYS]
        views[way] = {key: value_id(value) for key, value in zip(KEYS, values)}
    print(json.dumps(views))


if __name__ == "__main__":
    role, *arguments = sys.argv[1:]
    asyncio.run({"run": run, "dump": dump}[role](*arguments))

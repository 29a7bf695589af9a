"""The harness's second processes: `python -m benchmarks.child ROLE ARGS...`.

Each role prints one JSON object per line on stdout (flushed), so the harness follows it live.

- `rss PEER ENTRIES`: a fresh interpreter fills one in-memory cache with `ENTRIES` entries and
  reports its resident set before and after (target 9). Measuring in a fresh process, with only
  that cache's modules imported, keeps the harness's own heap and earlier workloads out of it.
- `writer DIRECTORY`: a sqlcache process on the harness's cache directory that changes keys on
  command (target 10): `set KEY N` stores `{"n": N}` and answers with the monotonic time at
  which the set returned (committed); `churn KEY_PREFIX SECONDS` starts setting other keys every
  `SECONDS` in the background, so that every coherence check of the harness's process finds new
  log rows; `quiet` stops that. The end of its input closes the cache and ends it. With
  `SQLCACHE_BENCH_URL` in its environment (`peers.WRITER_URL`), its disk tier is that PostgreSQL
  database instead, as another host's would be.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import time
from typing import Any, Callable

from . import data
from .peers import WRITER_URL

_PAGE = os.sysconf("SC_PAGE_SIZE")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where `benchmarks` is importable
RSS_PEERS = ("cachetools", "sqlcache", "sqlcache+disk")
"""What `rss` can fill: a bare `cachetools.LRUCache`; sqlcache's memory tier alone (the disk
tier off); sqlcache's memory tier with its disk tier on (the values are in the file too)."""


def say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def resident() -> tuple[int, int]:
    """(resident, resident and file-backed or shared) bytes of this process, from /proc/self/statm."""
    with open("/proc/self/statm", encoding="ascii") as statm:
        _, pages, shared, *_ = statm.read().split()
    return int(pages) * _PAGE, int(shared) * _PAGE


async def _fill_cachetools(entries: int) -> Callable[[], object]:
    import cachetools

    cache: cachetools.LRUCache = cachetools.LRUCache(entries)

    async def fill() -> None:
        for key, value, _ in data.items(0, entries):
            cache[key] = value

    return fill


async def _fill_sqlcache(entries: int, directory: str | None) -> Callable[[], object]:
    from sqlcache import CacheManager

    config: dict[str, Any] = {"memory_max_size": entries, "default_ttl": 0}
    config.update({"disk_cache_dir": directory, "disk_max_size": 64 * 1024**3} if directory else {"disk_cache_enabled": False})
    cache = CacheManager(config)
    await cache.open()

    async def fill() -> None:
        for chunk in data.chunks(data.items(0, entries), 1_000):
            await asyncio.gather(*(cache.set(key, value, tags=tags) for key, value, tags in chunk))
        stats = await cache.get_stats()
        if stats["memory_size"] != entries:
            raise RuntimeError(f"the memory tier holds {stats['memory_size']} entries, not {entries}")

    return fill


async def rss(peer: str, entries: str, directory: str = "") -> None:
    """Fill `peer` with `entries` entries; report resident bytes before and after."""
    count = int(entries)
    if peer == "cachetools":
        fill = await _fill_cachetools(count)
    else:
        fill = await _fill_sqlcache(count, directory if peer == "sqlcache+disk" else None)
    next(data.items(0, 1))  # the generator's own first-call costs belong to neither side
    gc.collect()
    before, before_shared = resident()
    started = time.monotonic()
    await fill()
    gc.collect()
    after, after_shared = resident()
    say(before=before, after=after, before_shared=before_shared, after_shared=after_shared,
        fill_seconds=time.monotonic() - started)


async def _read_commands() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def writer(directory: str) -> None:
    """Change keys of the cache in `directory` on command (see the module docstring)."""
    from sqlcache import CacheManager

    commands = await _read_commands()
    churn: asyncio.Task[None] | None = None
    config: dict[str, Any] = {"disk_cache_dir": directory, "default_ttl": 0}
    if os.environ.get(WRITER_URL):
        config["disk_cache_url"] = os.environ[WRITER_URL]
    async with CacheManager(config) as cache:

        async def keep_setting(prefix: str, every: float) -> None:
            for i in range(10**9):
                await cache.set(f"{prefix}{i % 1_000}", {"n": i})
                await asyncio.sleep(every)

        say(ready=True)
        while line := (await commands.readline()).decode():
            verb, *args = line.split()
            if verb == "set":
                key, n = args
                await cache.set(key, {"n": int(n)})
                say(at=time.monotonic())
            elif verb == "churn":
                churn = asyncio.get_running_loop().create_task(keep_setting(args[0], float(args[1])))
                say(churning=True)
            elif verb == "quiet":
                if churn is not None:
                    churn.cancel()
                    churn = None
                say(churning=False)
        if churn is not None:
            churn.cancel()


ROLES = {"rss": rss, "writer": writer}


# ---------------------------------------------------------------- the harness's side


class Child:
    """A child process of the harness running one role, spoken to line by line."""

    ANSWER_TIMEOUT = 120.0
    """Seconds to wait for an answer: filling 100,000 entries with the disk tier on is the slowest."""

    def __init__(self, process: asyncio.subprocess.Process):
        self._process = process

    @classmethod
    async def start(cls, *args: str, env: dict[str, str] | None = None) -> "Child":
        """Start `python -m benchmarks.child ARGS...` beside this package, `env` added to its environment."""
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.child", *args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=_ROOT, env={**os.environ, **(env or {})},
        )
        return cls(process)

    async def answer(self) -> dict[str, Any]:
        """The next line the child printed, as a dict; an error if it exited instead."""
        assert self._process.stdout is not None
        line = await asyncio.wait_for(self._process.stdout.readline(), self.ANSWER_TIMEOUT)
        if not line:
            raise RuntimeError(f"benchmark child process exited with status {await self._process.wait()}")
        return json.loads(line)

    def send(self, command: str) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(command.encode() + b"\n")

    async def ask(self, command: str) -> dict[str, Any]:
        self.send(command)
        return await self.answer()

    async def stop(self) -> None:
        """Ask a writer to exit (closing its cache), or end the child if it does not."""
        if self._process.returncode is None and self._process.stdin is not None:
            self._process.stdin.close()
        try:
            await asyncio.wait_for(self._process.wait(), 10)
        except asyncio.TimeoutError:
            self._process.kill()
            await self._process.wait()


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ROLES:
        print(f"usage: python -m benchmarks.child {{{'|'.join(ROLES)}}} ARGS...", file=sys.stderr)
        return 2
    asyncio.run(ROLES[argv[0]](*argv[1:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

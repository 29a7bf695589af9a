"""Timing: per-operation latencies, throughput and the longest event-loop stall.

Every operation is timed on its own with `time.perf_counter_ns` (real time, nothing injected),
so the medians and p99s are of single calls, timer overhead included (about 0.1 µs, the same
for every peer). Throughput is the number of operations over the wall time of the whole run.

A heartbeat task wakes every millisecond while a measurement runs and records how late it
woke. On a shared machine part of that lateness is the OS's: the loop's thread was ready but
waited for a CPU (preempted, or woken late while every core ran something else). Linux counts
that wait per thread (`/proc/thread-self/schedstat`, second field), so a beat's stall is

    held = lateness - time the thread waited for a CPU during the beat,

what the code under test held the loop for (running, or blocked in a call); `stall_ms` is the
longest `held`, and `preempted_stall_ms` the longest raw lateness of a beat that did wait for
a CPU (shown in brackets). Where the platform cannot say, nothing is subtracted.

Before each timed part the heap is collected and frozen (`gc.freeze`): the keys and values the
harness prepared are then never rescanned, so a garbage collection inside the timed part costs
what the code under test allocated, not what the harness holds. The heap stays frozen until the
workload ends (`thaw_heap`), so the collection before each later part scans only what is new,
not the whole heap again (a full collection of 100,000 held values takes a fifth of a second). A lone caller yields to the loop every
`YIELD_EVERY` operations, as any real program does between requests, so an operation that
never suspends (a memory hit, a blocking diskcache call) shows as a stall of a few
operations, while one that blocks for milliseconds shows as exactly that. Many callers yield
after every operation, like request handlers that each await something else between cache
calls: 64 callers of 16 non-suspending operations each would otherwise hold the loop for
1,024 operations per turn, a stall of the harness's making, not of any one call. A beat still
asleep when the timed part ends is counted too (work that held the loop to the end).
"""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence

YIELD_EVERY = 16
HEARTBEAT_S = 0.001
STALL_LIMIT_MS = 5.0
SCHEDSTAT = "/proc/thread-self/schedstat"
"""Linux: this thread's time on a CPU, time waiting for one (ns), timeslices."""
WAITED_FOR_CPU_MS = 0.1
"""A beat whose thread waited longer than this for a CPU was delayed by the OS (bracketed figure)."""

Operation = Callable[[int], Awaitable[object]]
"""`await op(i)` performs the i-th operation of a run."""


@dataclass(frozen=True)
class Stats:
    """Summary of one measured run."""

    count: int
    median_ns: float
    p99_ns: float
    ops_per_s: float
    stall_ms: float
    concurrency: int = 1
    preempted_stall_ms: float = 0.0
    beats_over_limit: int = 0
    """Heartbeats whose loop was held (lateness less the wait for a CPU) longer than `STALL_LIMIT_MS`."""
    beats: int = 0
    mixed: bool = False
    """The operations differ (a read/write mix): their median says little, wall time per op says it."""

    @property
    def cost_ns(self) -> float:
        """Time per operation: the median for one caller doing one kind of operation; wall time
        per operation when many callers share the loop (their latencies overlap) or ops are mixed."""
        return self.median_ns if self.concurrency == 1 and not self.mixed else 1e9 / self.ops_per_s


def percentile(sorted_values: Sequence[int], fraction: float) -> float:
    """The nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return float(sorted_values[rank])


def summarise(
    latencies: list[int], wall_ns: int, monitor: "StallMonitor", concurrency: int = 1, mixed: bool = False
) -> Stats:
    latencies.sort()
    return Stats(
        count=len(latencies),
        median_ns=statistics.median(latencies) if latencies else float("nan"),
        p99_ns=percentile(latencies, 0.99),
        ops_per_s=len(latencies) / (wall_ns / 1e9) if wall_ns else float("nan"),
        stall_ms=monitor.longest_ms,
        concurrency=concurrency,
        preempted_stall_ms=monitor.longest_preempted_ms,
        beats_over_limit=monitor.over_limit,
        beats=monitor.beats,
        mixed=mixed,
    )


class _CpuWait:
    """Nanoseconds the thread that made it has waited for a CPU so far (0 where unknown)."""

    def __init__(self) -> None:
        try:
            self._fd: int | None = os.open(SCHEDSTAT, os.O_RDONLY)
        except OSError:
            self._fd = None

    def __call__(self) -> int:
        if self._fd is None:
            return 0
        return int(os.pread(self._fd, 128, 0).split()[1])

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class StallMonitor:
    """Async context manager: the longest time the loop was held while it was open, the OS's
    share of each beat's lateness taken out (see the module docstring)."""

    def __init__(self, period: float = HEARTBEAT_S):
        self.period = period
        self.longest_ms = 0.0
        self.longest_preempted_ms = 0.0
        self.over_limit = 0
        self.beats = 0
        self._task: asyncio.Task[None] | None = None
        self._cpu_wait: _CpuWait | None = None
        self._pending: tuple[int, int] | None = None  # (start, CPU wait so far) of the beat asleep now

    def merge(self, other: "StallMonitor") -> None:
        self.longest_ms = max(self.longest_ms, other.longest_ms)
        self.longest_preempted_ms = max(self.longest_preempted_ms, other.longest_preempted_ms)
        self.over_limit += other.over_limit
        self.beats += other.beats

    async def __aenter__(self) -> "StallMonitor":
        self._cpu_wait = _CpuWait()  # opened on the loop's thread, so it reads that thread's wait
        self._task = asyncio.get_running_loop().create_task(self._beat())
        await asyncio.sleep(0)  # let the heartbeat start before the work does
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None and self._cpu_wait is not None
        if self._pending is not None:  # a beat still asleep: the work may have held the loop until now
            self._record(*self._pending)
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._cpu_wait.close()

    def _record(self, start: int, waited_before: int) -> None:
        """Count one beat that began sleeping at `start` (perf_counter_ns) and woke up now."""
        assert self._cpu_wait is not None
        late_ms = (time.perf_counter_ns() - start - self.period * 1e9) / 1e6
        waited_ms = (self._cpu_wait() - waited_before) / 1e6
        held_ms = late_ms - waited_ms
        self.beats += 1
        if waited_ms > WAITED_FOR_CPU_MS:
            self.longest_preempted_ms = max(self.longest_preempted_ms, late_ms)
        self.longest_ms = max(self.longest_ms, held_ms)
        self.over_limit += held_ms > STALL_LIMIT_MS

    async def _beat(self) -> None:
        assert self._cpu_wait is not None
        while True:
            self._pending = (time.perf_counter_ns(), self._cpu_wait())
            await asyncio.sleep(self.period)
            self._record(*self._pending)
            self._pending = None


async def _caller(op: Operation, indices: range, latencies: list[int], every: int = YIELD_EVERY) -> None:
    """Run `op(i)` for each index in turn, timing each call, yielding every `every` calls."""
    clock = time.perf_counter_ns
    for count, index in enumerate(indices, 1):
        start = clock()
        await op(index)
        latencies.append(clock() - start)
        if count % every == 0:
            await asyncio.sleep(0)


def freeze_heap() -> None:
    """Collect, then freeze every object alive now: a later collection scans only what was
    allocated since. Called before each timed part; `thaw_heap` undoes it between workloads."""
    gc.collect()
    gc.freeze()


def thaw_heap() -> None:
    """Unfreeze and collect everything, so a workload's garbage cycles do not outlive it."""
    gc.unfreeze()
    gc.collect()


class Samples:
    """Latencies, wall time and stalls gathered over one or more timed parts (rounds)."""

    def __init__(self) -> None:
        self.latencies: list[int] = []
        self.wall_ns = 0
        self.stalls = StallMonitor()

    def stats(self, concurrency: int = 1, mixed: bool = False) -> Stats:
        return summarise(list(self.latencies), self.wall_ns, self.stalls, concurrency, mixed)


async def collect(op: Operation, indices: range, concurrency: int, samples: Samples) -> None:
    """Perform `op(i)` for `indices` from `concurrency` callers, adding to `samples`."""
    freeze_heap()
    async with StallMonitor() as monitor:
        start = time.perf_counter_ns()
        if concurrency == 1:
            await _caller(op, indices, samples.latencies)
        else:
            shares = (indices[w::concurrency] for w in range(concurrency))
            await asyncio.gather(*(_caller(op, share, samples.latencies, every=1) for share in shares))
        samples.wall_ns += time.perf_counter_ns() - start
    samples.stalls.merge(monitor)


async def run(op: Operation, count: int, concurrency: int = 1, mixed: bool = False) -> Stats:
    """Perform `op(0)` .. `op(count - 1)` from `concurrency` callers, splitting the indices;
    `mixed`: the operations are of several kinds (see `Stats.cost_ns`)."""
    samples = Samples()
    await collect(op, range(count), concurrency, samples)
    return samples.stats(concurrency, mixed)


async def run_each(act: Operation, rounds: int, restore: Operation | None = None) -> Stats:
    """Time a few heavy operations (invalidations) one at a time: `act(r)` for each round `r`,
    then `restore(r)`, untimed, to put back what it removed.

    The stall is the longest seen while the timed operations ran, not while restoring.
    """
    samples = Samples()
    for round_ in range(rounds):
        await collect(lambda _: act(round_), range(1), 1, samples)
        if restore is not None:
            await restore(round_)
    return samples.stats()

"""TokenBucket against its contract: at most `burst + rate * T` starts in any T seconds, callers
cancelled while waiting included. Time is a discrete-event clock: a sleeper wakes exactly at its
wake time, so every start happens at the instant the bucket scheduled it and nothing sleeps."""

from __future__ import annotations

import asyncio
import heapq
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sqlcache import RateLimit
from sqlcache._ratelimit import TokenBucket

EPSILON = 1e-9  # float slack on the window bound: start times are sums of 1/rate steps


class EventTime:
    """A monotonic clock that moves only in `advance`, and a sleep that follows it.

    `advance` walks from wake time to wake time, waking each sleeper exactly when it is due and
    letting its task finish before the clock moves on, as a loop that is never late would.
    """

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None], asyncio.Task]] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        wake = asyncio.get_running_loop().create_future()
        entry = (self.now + seconds, next(self._order), wake, asyncio.current_task())
        heapq.heappush(self._sleepers, entry)
        try:
            await wake
        finally:
            if entry in self._sleepers:
                self._sleepers.remove(entry)
                heapq.heapify(self._sleepers)

    async def advance(self, seconds: float) -> None:
        target = self.now + seconds
        while self._sleepers and self._sleepers[0][0] <= target:
            self.now = self._sleepers[0][0]
            woken = []
            while self._sleepers and self._sleepers[0][0] <= self.now:
                _, _, wake, task = heapq.heappop(self._sleepers)
                wake.set_result(None)
                woken.append(task)
            await asyncio.wait(woken)
        self.now = target


class Callers:
    """Callers of one bucket, each recording the time its request started."""

    def __init__(self, limit: RateLimit) -> None:
        self.time = EventTime()
        self.limit = limit
        self.bucket = TokenBucket(limit, clock=self.time.monotonic, sleep=self.time.sleep)
        self.starts: list[float] = []
        self.waiting: list[asyncio.Task[None]] = []
        self.arrivals = 0

    async def arrive(self) -> asyncio.Task[None]:
        """A new caller: it starts at once or is left waiting in the bucket."""
        self.arrivals += 1
        caller = asyncio.create_task(self._call())
        await asyncio.sleep(0)  # runs acquire up to its sleep, or to the start
        if not caller.done():
            self.waiting.append(caller)
        return caller

    async def cancel(self, caller: asyncio.Task[None]) -> None:
        self.waiting.remove(caller)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller

    async def _call(self) -> None:
        await self.bucket.acquire()
        self.starts.append(self.time.now)
        if asyncio.current_task() in self.waiting:
            self.waiting.remove(asyncio.current_task())

    def assert_window_bound(self) -> None:
        """In every window [starts[i], starts[j]] at most burst + rate * length starts."""
        starts = sorted(self.starts)
        for i, j in itertools.combinations(range(len(starts)), 2):
            allowed = self.limit.burst + self.limit.rate * (starts[j] - starts[i]) + EPSILON
            assert j - i + 1 <= allowed, f"{j - i + 1} starts in [{starts[i]}, {starts[j]}]: {starts}"


async def test_a_cancelled_waiter_in_the_middle_of_the_line_leaves_no_two_starts_together():
    callers = Callers(RateLimit(rate=2, burst=1))
    await callers.arrive()  # takes the one token
    first, middle, last = [await callers.arrive() for _ in range(3)]  # due at 0.5, 1.0, 1.5
    await callers.cancel(middle)
    await callers.arrive()  # must take the middle one's slot, not the last one's
    await callers.time.advance(10)

    assert not callers.waiting
    assert callers.starts == [0.0, 0.5, 1.0, 1.5]
    gaps = [later - earlier for earlier, later in zip(callers.starts, callers.starts[1:])]
    assert min(gaps) >= 1 / callers.limit.rate - EPSILON, callers.starts


async def test_cancelling_the_last_waiters_gives_their_slots_back():
    callers = Callers(RateLimit(rate=1, burst=1))
    await callers.arrive()
    waiters = [await callers.arrive() for _ in range(3)]  # due at 1, 2, 3
    await callers.cancel(waiters[1])  # a hole at 2...
    await callers.cancel(waiters[2])  # ...then the last: the line now ends at 1
    await callers.arrive()
    await callers.arrive()
    await callers.time.advance(10)

    assert callers.starts == [0.0, 1.0, 2.0, 3.0]


ARRIVE = st.just(("arrive",))
operations = st.lists(
    st.one_of(
        ARRIVE,
        ARRIVE,  # twice as likely as the others, so lines form
        st.tuples(st.just("cancel"), st.integers(0, 50)),
        st.tuples(st.just("advance"), st.sampled_from([0.0, 0.25, 0.5, 1.0, 1.5]) | st.floats(0, 3)),
    ),
    min_size=4,
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(
    rate=st.sampled_from([0.5, 1.0, 2.0, 3.0, 10.0]),
    burst=st.integers(1, 4),
    steps=operations,
)
def test_the_window_bound_holds_under_any_arrivals_cancellations_and_pauses(rate, burst, steps):
    async def scenario() -> None:
        callers = Callers(RateLimit(rate=rate, burst=burst))
        for step in steps:
            if step[0] == "arrive":
                await callers.arrive()
            elif step[0] == "cancel" and callers.waiting:
                await callers.cancel(callers.waiting[step[1] % len(callers.waiting)])
            elif step[0] == "advance":
                await callers.time.advance(step[1])
        # Every slot reserved, a cancelled caller's included, lies within arrivals / rate from now.
        await callers.time.advance(callers.arrivals / rate + 1)

        assert not callers.waiting, "a caller still waits after its slot passed"
        callers.assert_window_bound()

    asyncio.run(scenario())

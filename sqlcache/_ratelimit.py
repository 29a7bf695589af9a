"""Client-side rate limiting: keep a fleet of agents under an API's requests-per-second limit.

A `RateLimit` says how fast; a `TokenBucket` makes callers wait their turn. The bucket's clock and
sleep are injectable so tests can check its pacing without waiting.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable


@dataclass(frozen=True)
class RateLimit:
    """At most `rate` requests per second on average, `burst` of them back to back after a pause.

    In any interval of T seconds at most `burst + rate * T` requests start. The default burst of
    1 spaces requests evenly, the safest choice against an exchange's per-second limit.
    """

    rate: float
    burst: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.rate, bool) or not isinstance(self.rate, (int, float)) or not (
            math.isfinite(self.rate) and self.rate > 0
        ):
            raise ValueError(f"rate must be a positive number of requests per second, got {self.rate!r}")
        if isinstance(self.burst, bool) or not isinstance(self.burst, int) or self.burst < 1:
            raise ValueError(f"burst must be an integer >= 1, got {self.burst!r}")


class TokenBucket:
    """Paces callers to a `RateLimit`, as a token bucket of `burst` tokens refilled at `rate`
    per second would, in arrival order and with no polling.

    It keeps the bucket as a virtual schedule (GCRA): `_tat` is the theoretical arrival time of
    the next request, each request moves it on by `1/rate`, and a request may start
    `(burst - 1)/rate` seconds before it. A caller reserves its start time on arrival and sleeps
    once until then; every reserved time is a slot of one schedule that keeps the window bound,
    so any subset of them does too.

    A caller cancelled while waiting gives back exactly its own slot and no other: if it was the
    last in line the schedule is rolled back to where it was before that reservation, otherwise
    its slot becomes a hole that the next arrival takes (at that slot's time, never earlier),
    so the callers behind it keep their start times and none starts with another.
    """

    def __init__(
        self,
        limit: RateLimit,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.limit = limit
        self._clock = clock
        self._sleep = sleep
        self._interval = 1.0 / limit.rate
        self._tolerance = (limit.burst - 1) * self._interval
        self._tat = -math.inf  # nothing reserved yet: the first caller starts at once
        self._holes: list[_Slot] = []  # slots given back by cancelled waiters, by start time

    async def acquire(self) -> float:
        """Wait until a request may start; the seconds waited (0.0 when a token was at hand)."""
        now = self._clock()
        slot = self._reserve(now)
        wait = slot.start - now
        if wait <= 0:
            return 0.0
        try:
            await self._sleep(wait)
        except asyncio.CancelledError:
            self._give_back(slot)
            raise
        return wait

    def _reserve(self, now: float) -> "_Slot":
        """The earliest slot open to a caller arriving at `now`: a hole still ahead, or the
        schedule's next one (a hole always comes before it, being an earlier reservation)."""
        while self._holes and self._holes[0].start < now:
            self._holes.pop(0)  # passed unused: the schedule it belonged to never ran it
        if self._holes:
            return self._holes.pop(0)
        before = self._tat
        start = max(now, before - self._tolerance)
        self._tat = max(before, now) + self._interval
        return _Slot(start, before, self._tat)

    def _give_back(self, slot: "_Slot") -> None:
        """Undo a waiter's reservation: roll the schedule back while its last reservation is
        unused, else leave the slot as a hole for the next arrival."""
        bisect.insort(self._holes, slot)
        while self._holes:
            last = max(self._holes, key=lambda hole: hole.tat_after)
            if last.tat_after != self._tat:
                break
            self._holes.remove(last)
            self._tat = last.tat_before


@dataclass(frozen=True, order=True)
class _Slot:
    """One reserved start: its time, and the schedule's `_tat` before and after reserving it
    (compared exactly, to tell whether it is still the latest reservation)."""

    start: float
    tat_before: float = field(compare=False)
    tat_after: float = field(compare=False)

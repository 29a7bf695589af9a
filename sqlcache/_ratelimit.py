"""Client-side rate limiting: keep a fleet of agents under an API's requests-per-second limit.

A `RateLimit` says how fast; a `TokenBucket` makes callers wait their turn. The bucket's clock and
sleep are injectable so tests can check its pacing without waiting.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
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
    """Paces callers to a `RateLimit`: `burst` tokens, refilled at `rate` per second.

    Each caller reserves its token on arrival (the balance may go negative) and sleeps once until
    its token would exist, so concurrent callers go through in arrival order, 1/rate apart, with no
    polling. A caller cancelled while waiting gives its token back.
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
        self._tokens = float(limit.burst)
        self._updated = clock()

    async def acquire(self) -> float:
        """Wait until a request may start; the seconds waited (0.0 when a token was at hand)."""
        self._refill()
        self._tokens -= 1
        if self._tokens >= 0:
            return 0.0
        wait = -self._tokens / self.limit.rate
        try:
            await self._sleep(wait)
        except asyncio.CancelledError:
            self._refill()
            self._tokens = min(self._tokens + 1, float(self.limit.burst))
            raise
        return wait

    def _refill(self) -> None:
        now = self._clock()
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(float(self.limit.burst), self._tokens + elapsed * self.limit.rate)
        self._updated = now

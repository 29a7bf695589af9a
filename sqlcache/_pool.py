"""`ResourcePool`: the guide's one object for agents — the cache, a shared HTTP client, the preloader.

HTTP goes through one `httpx.AsyncClient` sized by `http_pool_size`, paced per `api_name` by a
`TokenBucket`, and retried with exponential backoff and jitter on connection errors, 429 and 5xx.
Every outcome is returned as `(status, data)`: the guide's agent branches on the status and never
needs a try/except. A request that got no response at all (connection refused, timeout) returns
status 0 with a `TransportFailure` as data.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import email.utils
import logging
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, Iterable, Mapping

import httpx
import orjson

from ._config import CacheLevel
from ._decorator import CachedDecorator, KeyMaker, cached
from ._manager import CacheManager
from ._ratelimit import RateLimit, TokenBucket

if TYPE_CHECKING:
    from ._preloader import CachePreloader

logger = logging.getLogger("sqlcache")

DEFAULT_API = "default"
"""The api_name of requests made without one (for statistics and `rate_limits`)."""

TRANSPORT_FAILURE_STATUS = 0
"""The status `http_request` returns when no response arrived; the data is a `TransportFailure`."""

_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_TRANSIENT_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
"""Transport errors another attempt may cure. Others (bad URL scheme, a local protocol misuse)
are the caller's bug and are raised."""


@dataclass(frozen=True)
class TransportFailure:
    """The data `http_request` returns, with status 0, when every attempt failed without a response.

    `error` is the last httpx exception (`httpx.ConnectError`, `httpx.ReadTimeout`, ...); its text
    is what the guide's agent logs.
    """

    error: Exception
    attempts: int

    @property
    def timed_out(self) -> bool:
        return isinstance(self.error, httpx.TimeoutException)

    def __str__(self) -> str:
        return f"{type(self.error).__name__} after {self.attempts} attempt(s): {self.error}"


@dataclass(frozen=True)
class RetryPolicy:
    """When to try a request again, and how long to wait first.

    Retried: connection failures and timeouts, 429, and 5xx other than 501/505 (which another try
    will not change). A POST or PATCH may have been acted on when the server answers 5xx or the
    connection breaks mid-request, so those are retried only when the request never left (connect
    errors) or was refused with 429 — unless `retry_non_idempotent` is set. The wait is exponential
    (`backoff_base * 2**n`, at most `backoff_max`) with jitter, and never shorter than the server's
    Retry-After; a Retry-After longer than `max_retry_after` is not waited for: the response is
    returned at once.
    """

    max_retries: int = 3
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    max_retry_after: float = 60.0
    retry_non_idempotent: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ValueError(f"max_retries must be an integer >= 0, got {self.max_retries!r}")
        for name in ("backoff_base", "backoff_max", "max_retry_after"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0 seconds, got {getattr(self, name)!r}")

    def delay(self, method: str, outcome: httpx.Response | Exception, retries_done: int) -> float | None:
        """Seconds to wait before the next attempt, or None to stop and return `outcome`."""
        if retries_done >= self.max_retries:
            return None
        repeatable = self.retry_non_idempotent or method.upper() in _IDEMPOTENT_METHODS
        backoff = self.backoff(retries_done)
        if isinstance(outcome, Exception):
            return backoff if repeatable or isinstance(outcome, _NEVER_SENT) else None
        status = outcome.status_code
        transient_5xx = 500 <= status < 600 and status not in (501, 505)
        if not (status == 429 or (transient_5xx and repeatable)):
            return None
        retry_after = _retry_after(outcome)
        if retry_after is None:
            return backoff
        return max(retry_after, backoff) if retry_after <= self.max_retry_after else None

    def backoff(self, retries_done: int) -> float:
        """Exponential backoff with "equal jitter": between half and all of the exponential step,
        so a fleet that failed together does not retry together."""
        step = min(self.backoff_max, self.backoff_base * 2**retries_done)
        return step / 2 + random.uniform(0, step / 2)


@dataclass
class _ApiStats:
    """HTTP figures of one api_name."""

    requests: int = 0
    attempts: int = 0
    retries: int = 0
    errors: int = 0
    transport_failures: int = 0
    rate_limit_waits: int = 0
    rate_limit_wait_seconds: float = 0.0
    latency_total: float = 0.0
    latency_max: float = 0.0

    def add_attempt(self, seconds: float) -> None:
        self.attempts += 1
        self.latency_total += seconds
        self.latency_max = max(self.latency_max, seconds)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "attempts": self.attempts,
            "retries": self.retries,
            "errors": self.errors,
            "transport_failures": self.transport_failures,
            "rate_limit_waits": self.rate_limit_waits,
            "rate_limit_wait_seconds": self.rate_limit_wait_seconds,
            "latency_avg": self.latency_total / self.attempts if self.attempts else 0.0,
            "latency_max": self.latency_max,
        }


class _SharedClient:
    """The pool's one `httpx.AsyncClient`, rebuilt when the wanted pool size changes.

    httpx fixes a client's connection limits when it is made, so a new `http_pool_size` needs a new
    client; the replaced one is closed once the requests still using it have finished.
    """

    def __init__(self, make: Callable[[int | None], httpx.AsyncClient]) -> None:
        self._make = make
        self._current: httpx.AsyncClient | None = None
        self._size: int | None = None
        self._users: dict[httpx.AsyncClient, int] = {}

    @contextlib.asynccontextmanager
    async def lease(self, size: int | None) -> AsyncIterator[httpx.AsyncClient]:
        """The client for `size` connections (None: the transport's own), open while in use."""
        if self._current is None or size != self._size:
            replaced = self._current
            self._current, self._size = self._make(size), size
            self._users[self._current] = 0
            if replaced is not None and self._users[replaced] == 0:
                del self._users[replaced]
                await replaced.aclose()
        client = self._current
        self._users[client] += 1
        try:
            yield client
        finally:
            users = self._users.get(client)
            if users is not None:  # None: the whole pool was closed meanwhile
                self._users[client] = users - 1
                if users == 1 and client is not self._current:
                    del self._users[client]
                    await client.aclose()

    async def aclose(self) -> None:
        """Close every client, including replaced ones still in use."""
        clients, self._users, self._current = list(self._users), {}, None
        for client in clients:
            await client.aclose()


class _NotCached(Exception):
    """Carries a non-200 result out of a shared fetch, so every waiter gets it and nothing is cached."""

    def __init__(self, status: int, data: Any) -> None:
        super().__init__(status)
        self.status = status
        self.data = data


class ResourcePool:
    """The cache, one pooled HTTP client and the preloader, shared by a fleet of agents.

    `cache_manager`, `http_pool_size` and `cache_ttl` may be reassigned after construction (the
    guide does); the pool uses what they hold at its next call. With no manager the pool makes one
    with the default config. `close()` (or leaving `async with`) stops the preloader, closes the
    HTTP client and closes the cache manager, plus any default manager the pool made and that was
    since replaced.

    `rate_limits` maps an api_name to a `RateLimit` (or a plain requests-per-second number) and may
    also be changed later; requests made without an api_name count as `"default"`.
    `client_options` go to `httpx.AsyncClient` (headers, auth, verify, proxy, ...); with a
    `transport` among them, that transport's own connection limits apply, not `http_pool_size`.
    `monotonic` and `sleep` time the rate limits, backoff and latency figures; tests inject fakes.
    """

    def __init__(
        self,
        cache_manager: CacheManager | None = None,
        *,
        http_pool_size: int = 30,
        cache_ttl: float = 300,
        timeout: float | httpx.Timeout = 10.0,
        retry: RetryPolicy | None = None,
        rate_limits: Mapping[str, RateLimit | float] | None = None,
        client_options: Mapping[str, Any] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self._made_managers: list[CacheManager] = []
        if cache_manager is None:
            cache_manager = CacheManager()
            self._made_managers.append(cache_manager)
        self.cache_manager = cache_manager
        self.http_pool_size = http_pool_size
        self.cache_ttl = cache_ttl
        self.retry = retry or RetryPolicy()
        self.rate_limits: dict[str, RateLimit | float] = dict(rate_limits or {})
        self._timeout = timeout
        self._client_options = dict(client_options or {})
        self._monotonic = monotonic
        self._sleep = sleep
        self._http = _SharedClient(self._make_client)
        self._buckets: dict[str, TokenBucket] = {}
        self._http_stats: dict[str, _ApiStats] = {}
        self._preloader: CachePreloader | None = None

    @property
    def http_pool_size(self) -> int:
        """Most simultaneous HTTP connections; a new value takes effect at the next request."""
        return self._http_pool_size

    @http_pool_size.setter
    def http_pool_size(self, size: int) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"http_pool_size must be an integer >= 1, got {size!r}")
        self._http_pool_size = size

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> "ResourcePool":
        await self.cache_manager.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the preloader if one was made, then close the HTTP client, then the cache.

        Every step runs even if an earlier one fails. The pool may be used again afterwards; it
        reopens what it needs, like `CacheManager`.
        """
        managers = [self.cache_manager] + [m for m in self._made_managers if m is not self.cache_manager]
        self._made_managers = [m for m in self._made_managers if m is self.cache_manager]
        async with contextlib.AsyncExitStack() as closing:  # runs the callbacks last-pushed first
            for manager in reversed(managers):
                closing.push_async_callback(manager.close)
            closing.push_async_callback(self._http.aclose)
            if self._preloader is not None:
                closing.push_async_callback(self._preloader.stop)

    # ------------------------------------------------------------------ cache

    async def cache_get(self, key: str, default: Any = None) -> Any:
        """The cached value of `key`, or `default`."""
        return await self.cache_manager.get(key, default)

    async def cache_set(self, key: str, value: Any, ttl: float | None = None, tags: Iterable[str] | None = None) -> None:
        """Cache `value` under `key` in every tier for `ttl` seconds (`cache_ttl` when None)."""
        await self.cache_manager.set(key, value, self._ttl(ttl), tags=tags)

    async def cache_delete(self, key: str) -> bool:
        """Remove `key`; True if a live value was removed."""
        return await self.cache_manager.delete(key)

    async def cache_clear(self) -> None:
        """Remove every cached entry."""
        await self.cache_manager.clear()

    async def cache_invalidate_by_pattern(self, pattern: str) -> int:
        """Remove every key that `re.match`es `pattern`; the number removed."""
        return await self.cache_manager.invalidate_by_pattern(pattern)

    async def cache_invalidate_by_tag(self, tag: str) -> int:
        """Remove every entry tagged `tag`; the number removed."""
        return await self.cache_manager.invalidate_by_tag(tag)

    async def cache_get_or_set(
        self,
        key: str,
        loader: Callable[[], Awaitable[Any] | Any],
        ttl: float | None = None,
        tags: Iterable[str] | None = None,
        *,
        stale_ttl: float = 0,
    ) -> Any:
        """The cached value of `key`, or `loader()`'s result cached for `ttl` (`cache_ttl` when
        None). Concurrent callers missing the same key share one loader call; `stale_ttl` as in
        `CacheManager.get_or_set`."""
        return await self.cache_manager.get_or_set(key, loader, self._ttl(ttl), tags=tags, stale_ttl=stale_ttl)

    async def cache_get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """The cached values of those of `keys` that have one."""
        return await self.cache_manager.get_many(keys)

    async def cache_set_many(
        self, mapping: Mapping[str, Any], ttl: float | None = None, tags: Iterable[str] | None = None
    ) -> None:
        """Cache every value of `mapping` in every tier for `ttl` seconds (`cache_ttl` when None),
        in one transaction."""
        await self.cache_manager.set_many(mapping, self._ttl(ttl), tags=tags)

    async def cache_delete_many(self, keys: Iterable[str]) -> int:
        """Remove `keys`; the number of live values removed."""
        return await self.cache_manager.delete_many(keys)

    async def cache_exists(self, key: str) -> bool:
        """Whether `key` has a live cached value (not counted as a get)."""
        return await self.cache_manager.exists(key)

    async def cache_ttl_left(self, key: str) -> float | None:
        """Seconds `key` has left (`math.inf`: no expiry), None if it has no live value.
        (`CacheManager.ttl`; not `cache_ttl`, which is the pool's default ttl attribute.)"""
        return await self.cache_manager.ttl(key)

    async def cache_touch(self, key: str, ttl: float | None = None) -> bool:
        """Give `key` the expiry now + `ttl` (`cache_ttl` when None); True if it had a live value."""
        return await self.cache_manager.touch(key, self._ttl(ttl))

    def cached(self, ttl: float | None = None, *, key: KeyMaker = None, tags: Iterable[str] | None = None,
               level: CacheLevel | str = CacheLevel.ALL, stale_ttl: float = 0) -> CachedDecorator:
        """`CacheManager.cached` on the pool's `cache_manager` (the one it holds at each call);
        `ttl=None` means the pool's `cache_ttl`, as for the other `cache_*` calls."""
        return cached(
            lambda: self.cache_manager, ttl, key=key, tags=tags, level=level, stale_ttl=stale_ttl,
            default_ttl=lambda: self.cache_ttl,
        )

    def _ttl(self, ttl: float | None) -> float:
        return self.cache_ttl if ttl is None else ttl

    # ------------------------------------------------------------------ HTTP

    async def http_request(self, method: str, url: str, api_name: str | None = None, **kwargs: Any) -> tuple[int, Any]:
        """Send a request through the shared client; `(status, data)`.

        `data` is the parsed body when the response is JSON, else its text. A status that stays an
        error after the retries `self.retry` allows comes back the same way, e.g. `(429, body)`.
        When no response arrived (connection refused or reset, timeout) after the retries, the
        result is `(0, TransportFailure)`. Errors no retry can cure, such as an unsupported URL
        scheme, are raised. `kwargs` go to `httpx.AsyncClient.request` (params, json, headers,
        timeout, ...). Each attempt waits for `api_name`'s rate limit, if it has one.
        """
        name = DEFAULT_API if api_name is None else api_name
        stats = self._http_stats.setdefault(name, _ApiStats())
        stats.requests += 1
        retries = 0
        while True:
            await self._throttle(name, stats)
            started = self._monotonic()
            outcome: httpx.Response | Exception
            try:
                async with self._http.lease(self._connection_limit()) as client:
                    outcome = await client.request(method, url, **kwargs)
            except _TRANSIENT_ERRORS as error:
                outcome = error
            finally:
                stats.add_attempt(self._monotonic() - started)
            delay = self.retry.delay(method, outcome, retries)
            if delay is None:
                return self._result(outcome, retries + 1, stats)
            logger.info("sqlcache: %s %s (%s) failed with %s; retry %d in %.2f s", method, url, name, _describe(outcome), retries + 1, delay)
            stats.retries += 1
            retries += 1
            await self._sleep(delay)

    async def cached_http_request(
        self,
        cache_key: str,
        method: str,
        url: str,
        api_name: str | None = None,
        *,
        ttl: float | None = None,
        tags: Iterable[str] | None = None,
        **kwargs: Any,
    ) -> tuple[int, Any]:
        """The guide's miss-then-fetch-then-set pattern in one call: `(status, data)`.

        On a hit: `(200, cached data)`. On a miss: `http_request(...)`, and a 200 response's data
        is cached under `cache_key` for `ttl` (`cache_ttl` when None) with `tags`; any other result
        is returned as is and not cached. Concurrent callers missing the same key share one
        request (the first caller's), so a fleet of agents waking together hits the API once.
        """

        async def fetch() -> Any:
            status, data = await self.http_request(method, url, api_name, **kwargs)
            if status != 200:
                raise _NotCached(status, data)
            return data

        try:
            return 200, await self.cache_get_or_set(cache_key, fetch, ttl, tags)
        except _NotCached as result:
            return result.status, result.data

    async def _throttle(self, name: str, stats: _ApiStats) -> None:
        limit = self.rate_limits.get(name)
        if limit is None:
            return
        if not isinstance(limit, RateLimit):
            limit = RateLimit(limit)
        bucket = self._buckets.get(name)
        if bucket is None or bucket.limit != limit:
            bucket = self._buckets[name] = TokenBucket(limit, clock=self._monotonic, sleep=self._sleep)
        waited = await bucket.acquire()
        if waited:
            stats.rate_limit_waits += 1
            stats.rate_limit_wait_seconds += waited

    def _result(self, outcome: httpx.Response | Exception, attempts: int, stats: _ApiStats) -> tuple[int, Any]:
        if isinstance(outcome, Exception):
            stats.errors += 1
            stats.transport_failures += 1
            return TRANSPORT_FAILURE_STATUS, TransportFailure(outcome, attempts)
        if outcome.is_error:
            stats.errors += 1
        return outcome.status_code, _body(outcome)

    def _connection_limit(self) -> int | None:
        """`http_pool_size`, or None when a custom transport brings its own connection pool."""
        return None if "transport" in self._client_options else self.http_pool_size

    def _make_client(self, size: int | None) -> httpx.AsyncClient:
        options: dict[str, Any] = {"timeout": self._timeout, **self._client_options}
        if size is not None:
            options["limits"] = httpx.Limits(max_connections=size, max_keepalive_connections=size)
        return httpx.AsyncClient(**options)

    # ------------------------------------------------------------------ stats

    async def get_stats(self) -> dict[str, Any]:
        """`advanced_cache` (the manager's stats), `combined_cache_hit_rate` ((memory hits + disk
        hits) / gets, 0 before any get), and `http`: per api_name, requests (calls), attempts,
        retries, errors (calls ending in an error status or a transport failure),
        transport_failures, rate_limit_waits, rate_limit_wait_seconds, and latency_avg /
        latency_max in seconds per attempt."""
        return self._stats(await self.cache_manager.get_stats())

    def stats_snapshot(self) -> dict[str, Any]:
        """`get_stats()` without awaiting anything (for a metrics scrape in another thread), with
        the disk tier's size as the manager's last `get_stats` read it."""
        return self._stats(self.cache_manager.stats_snapshot())

    def _stats(self, cache: dict[str, Any]) -> dict[str, Any]:
        gets = cache["gets"]
        return {
            "advanced_cache": cache,
            "combined_cache_hit_rate": (cache["memory_hits"] + cache["disk_hits"]) / gets if gets else 0.0,
            "http_pool_size": self.http_pool_size,
            "cache_ttl": self.cache_ttl,
            "http": {name: stats.as_dict() for name, stats in list(self._http_stats.items())},
        }

    # ------------------------------------------------------------------ preloader

    @property
    def cache_preloader(self) -> CachePreloader:
        """The pool's `CachePreloader`, made on first use."""
        if self._preloader is None:
            from ._preloader import CachePreloader

            self._preloader = CachePreloader(self)
        return self._preloader

    def register_preload_task(self, *args: Any, **kwargs: Any) -> Any:
        """Register a task that the preloader runs every `interval` seconds; the arguments are
        those of `CachePreloader.register_preload_task` (name, loader_func, interval, args,
        kwargs, cache_key, cache_ttl, tags, enabled, timeout)."""
        return self.cache_preloader.register_preload_task(*args, **kwargs)

    async def run_preload_task_now(self, name: str) -> Any:
        """Run the preload task `name` once, now."""
        return await self.cache_preloader.run_preload_task_now(name)

    async def start_cache_preloader(self) -> None:
        """Start running the registered preload tasks on their schedules."""
        await self.cache_preloader.start()

    async def stop_cache_preloader(self) -> None:
        """Stop the preload tasks (nothing to do if no preloader was made)."""
        if self._preloader is not None:
            await self._preloader.stop()

    async def get_preloader_stats(self) -> dict[str, Any]:
        """The preloader's statistics (`tasks`, `running_tasks`, `preload_count`, `task_stats`, ...)."""
        return await self.cache_preloader.get_stats()


def _body(response: httpx.Response) -> Any:
    """The parsed JSON of a JSON response (by Content-Type), else the text."""
    media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "application/json" or media_type.endswith("+json"):
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError:
            logger.debug("sqlcache: %s says JSON but is not; returning its text", response.url)
    return response.text


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds the Retry-After header asks for (delta-seconds or an HTTP date), None if absent."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": UTC, as HTTP dates always are
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, when.timestamp() - time.time())


def _describe(outcome: httpx.Response | Exception) -> str:
    return f"status {outcome.status_code}" if isinstance(outcome, httpx.Response) else repr(outcome)

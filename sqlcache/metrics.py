"""Prometheus metrics for a `CacheManager` or a `ResourcePool` (extra `sqlcache[prometheus]`).

    registry.register(PrometheusCollector(cache_manager))      # or PrometheusCollector(resource_pool)

A scrape may run in another thread (`prometheus_client.start_http_server`), so it cannot await
`get_stats()`. It reads the same figures without awaiting: the counters as they are now, and the
disk tier's size and the preloader's task statistics (which live in the database) as the last
`get_stats()` / `get_preloader_stats()` read them. `await collector.refresh()` reads them now;
run `collector.keep_fresh(interval)` as a task to do so on a schedule. Every value equals the
`get_stats()` figure it is named after; counters are this process's, except the preloader's
runs and errors, which count every process sharing the database.
"""

from __future__ import annotations

import asyncio
from typing import Any, Iterator, Mapping, Union

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

from ._manager import CacheManager
from ._pool import ResourcePool

Value = Union[float, Mapping[str, float]]
"""One sample, or samples by the value of the family's one label."""

__all__ = ["PrometheusCollector"]


class PrometheusCollector(Collector):
    """A `prometheus_client` collector of a `CacheManager`'s or a `ResourcePool`'s statistics.

    For a manager: the `sqlcache_*` cache metrics. For a pool: those of the manager it holds at
    each scrape, plus `sqlcache_http_*` per `api` and, once the preloader's statistics were
    read, `sqlcache_preload_*` per `task`.
    """

    def __init__(self, obj: CacheManager | ResourcePool) -> None:
        if not isinstance(obj, (CacheManager, ResourcePool)):
            raise TypeError(f"PrometheusCollector needs a CacheManager or a ResourcePool, not {type(obj).__name__}")
        self.obj = obj

    def collect(self) -> Iterator[Metric]:
        """The metrics as of now (counters) and as of the last `get_stats` (disk size, tasks)."""
        if isinstance(self.obj, CacheManager):
            yield from _cache_metrics(self.obj.stats_snapshot())
            return
        stats = self.obj.stats_snapshot()
        yield from _cache_metrics(stats["advanced_cache"])
        yield from _http_metrics(stats)
        preloader = self.obj._preloader  # not the property: a scrape must not make a preloader
        preloader_stats = preloader.stats_snapshot() if preloader is not None else None
        if preloader_stats is not None:
            yield from _preloader_metrics(preloader_stats)

    async def refresh(self) -> None:
        """Read the disk tier's size (and a pool's preloader statistics) now, for the next scrape."""
        await self.obj.get_stats()
        if isinstance(self.obj, ResourcePool) and self.obj._preloader is not None:
            await self.obj.get_preloader_stats()

    async def keep_fresh(self, interval: float = 15.0) -> None:
        """`refresh()` every `interval` seconds, until cancelled: `asyncio.create_task(collector.keep_fresh())`."""
        while True:
            await self.refresh()
            await asyncio.sleep(interval)


def _cache_metrics(cache: Mapping[str, Any]) -> Iterator[Metric]:
    yield _counter("sqlcache_gets", "Lookups (get, get_or_set, cached calls), hits and misses.", cache["gets"])
    yield _counter("sqlcache_hits", "Lookups answered by the tier.", {"memory": cache["memory_hits"], "disk": cache["disk_hits"]}, "tier")
    yield _counter("sqlcache_misses", "Lookups that found no live value in any tier.", cache["misses"])
    yield _counter("sqlcache_sets", "Values stored (set, and get_or_set loads).", cache["sets"])
    yield _counter("sqlcache_deletes", "delete calls.", cache["deletes"])
    evictions = {"memory": cache["memory_evictions"], "disk": cache["disk_evictions"]}
    yield _counter("sqlcache_evictions", "Entries removed to stay under the tier's bound.", evictions, "tier")
    yield _counter("sqlcache_expirations", "Expired entries dropped or found expired.", cache["expirations"])
    yield _gauge("sqlcache_memory_entries", "Entries in this process's memory tier.", cache["memory_size"])
    yield _gauge("sqlcache_memory_max_entries", "memory_max_size.", cache["memory_max_size"])
    yield _gauge("sqlcache_disk_bytes", "Bytes of keys and values on disk, as of the last get_stats.", cache["disk_size"])
    yield _gauge("sqlcache_disk_entries", "Entries on disk, as of the last get_stats.", cache["disk_entries"])
    yield _gauge("sqlcache_disk_max_bytes", "disk_max_size.", cache["disk_max_size"])


_HTTP_COUNTERS = (
    ("requests", "http_request calls."),
    ("attempts", "Requests sent, retries included."),
    ("retries", "Attempts after the first."),
    ("errors", "Calls that ended with status >= 400 or no response."),
    ("transport_failures", "Calls that ended with no response (status 0)."),
    ("rate_limit_waits", "Attempts that waited for the rate limit."),
    ("rate_limit_wait_seconds", "Seconds spent waiting for the rate limit."),
)


def _http_metrics(pool: Mapping[str, Any]) -> Iterator[Metric]:
    http: Mapping[str, Mapping[str, Any]] = pool["http"]
    yield _gauge("sqlcache_http_pool_size", "Most HTTP connections open at once.", pool["http_pool_size"])
    for figure, documentation in _HTTP_COUNTERS:
        yield _counter(f"sqlcache_http_{figure}", documentation, {api: stats[figure] for api, stats in http.items()}, "api")
    latency = SummaryMetricFamily("sqlcache_http_attempt_seconds", "Seconds per attempt (waits excluded).", labels=["api"])
    for api, stats in http.items():
        latency.add_metric([api], count_value=stats["attempts"], sum_value=stats["latency_avg"] * stats["attempts"])
    yield latency
    yield _gauge("sqlcache_http_attempt_seconds_max", "Longest attempt, in seconds.", {api: stats["latency_max"] for api, stats in http.items()}, "api")


def _preloader_metrics(preloader: Mapping[str, Any]) -> Iterator[Metric]:
    tasks: Mapping[str, Mapping[str, Any]] = preloader["task_stats"]

    def per_task(figure: str) -> dict[str, float]:
        return {name: float(stats[figure]) for name, stats in tasks.items() if stats[figure] is not None}

    yield _gauge("sqlcache_preload_tasks", "Preload tasks registered in this process.", preloader["tasks"])
    yield _counter("sqlcache_preload_runs", "Finished runs, failed ones included, in every process.", per_task("run_count"), "task")
    yield _counter("sqlcache_preload_errors", "Failed runs, in every process.", per_task("error_count"), "task")
    yield _gauge("sqlcache_preload_consecutive_errors", "Failures since the last success.", per_task("consecutive_errors"), "task")
    yield _gauge("sqlcache_preload_running", "1 while a process holds the task's lease.", per_task("running"), "task")
    yield _gauge("sqlcache_preload_enabled", "1 if the task is enabled.", per_task("enabled"), "task")
    yield _gauge("sqlcache_preload_last_run_timestamp_seconds", "Start of the latest run (epoch).", per_task("last_run"), "task")
    yield _gauge("sqlcache_preload_last_success_timestamp_seconds", "End of the latest success (epoch).", per_task("last_success"), "task")
    yield _gauge("sqlcache_preload_last_duration_seconds", "Seconds the latest run took.", per_task("last_duration"), "task")


def _counter(name: str, documentation: str, value: Value, label: str | None = None) -> Metric:
    return _family(CounterMetricFamily(name, documentation, labels=[label] if label else None), value)


def _gauge(name: str, documentation: str, value: Value, label: str | None = None) -> Metric:
    return _family(GaugeMetricFamily(name, documentation, labels=[label] if label else None), value)


def _family(family: CounterMetricFamily | GaugeMetricFamily, value: Value) -> Metric:
    if isinstance(value, Mapping):
        for label_value, sample in value.items():
            family.add_metric([label_value], sample)
    else:
        family.add_metric([], value)
    return family

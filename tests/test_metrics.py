"""`sqlcache.metrics.PrometheusCollector`: a real scrape, parsed, against `get_stats()`."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from loopback import Response
from sqlcache import CacheLevel, CacheManager, ResourcePool, RetryPolicy
from sqlcache.metrics import PrometheusCollector


def scrape(obj) -> dict[tuple[str, tuple], float]:
    """Register a collector for `obj` in a fresh registry and parse what an HTTP scrape returns:
    sample name and sorted labels -> value."""
    registry = CollectorRegistry()
    registry.register(PrometheusCollector(obj))
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def cache_samples(cache: dict) -> dict[tuple[str, tuple], float]:
    """The samples a scrape must hold for a manager's `get_stats()` dict."""
    return {
        ("sqlcache_gets_total", ()): cache["gets"],
        ("sqlcache_hits_total", (("tier", "memory"),)): cache["memory_hits"],
        ("sqlcache_hits_total", (("tier", "disk"),)): cache["disk_hits"],
        ("sqlcache_misses_total", ()): cache["misses"],
        ("sqlcache_sets_total", ()): cache["sets"],
        ("sqlcache_deletes_total", ()): cache["deletes"],
        ("sqlcache_evictions_total", (("tier", "memory"),)): cache["memory_evictions"],
        ("sqlcache_evictions_total", (("tier", "disk"),)): cache["disk_evictions"],
        ("sqlcache_expirations_total", ()): cache["expirations"],
        ("sqlcache_memory_entries", ()): cache["memory_size"],
        ("sqlcache_memory_max_entries", ()): cache["memory_max_size"],
        ("sqlcache_disk_bytes", ()): cache["disk_size"],
        ("sqlcache_disk_entries", ()): cache["disk_entries"],
        ("sqlcache_disk_max_bytes", ()): cache["disk_max_size"],
    }


async def cache_workload(cm: CacheManager, clock) -> None:
    """Hits in both tiers, misses, sets, deletes, expirations and evictions in both tiers."""
    for n in range(6):  # memory holds 4: two memory evictions
        await cm.set(f"k{n}", "x" * 100, ttl=60, tags=["t"])
    await cm.set("disk-only", [1, 2], level=CacheLevel.DISK)
    await cm.get("k5")  # memory hit
    await cm.get("disk-only")  # disk hit
    await cm.get("k0")  # evicted from memory, read from disk
    await cm.get("absent")
    await cm.delete("k1")
    await cm.set("short", 1, ttl=5)
    clock.advance(6)
    await cm.get("short")  # expired
    await cm.set("big", "y" * 900)  # over disk_max_size: evicts on disk
    await cm.get_or_set("loaded", lambda: 42)


@pytest.fixture
async def cm(cache_dir, clock):
    config = {"disk_cache_dir": str(cache_dir), "memory_max_size": 4, "disk_max_size": 1200}
    manager = CacheManager(config, clock=clock)
    yield manager
    await manager.close()


async def test_manager_scrape_equals_get_stats(cm, clock):
    await cache_workload(cm, clock)
    stats = await cm.get_stats()
    assert stats["memory_hits"] and stats["disk_hits"] and stats["misses"] and stats["deletes"]
    assert stats["memory_evictions"] and stats["disk_evictions"] and stats["expirations"] and stats["disk_size"]
    assert scrape(cm) == cache_samples(stats)


async def test_snapshot_is_get_stats_without_the_await(cm, clock):
    await cache_workload(cm, clock)
    stats = await cm.get_stats()
    assert cm.stats_snapshot() == stats


async def test_disk_figures_are_those_of_the_last_get_stats(cm):
    await cm.get_stats()
    await cm.set("a", "value")
    before = scrape(cm)
    assert before[("sqlcache_disk_entries", ())] == 0  # not read since the set
    assert before[("sqlcache_sets_total", ())] == 1  # counters are live
    collector = PrometheusCollector(cm)
    await collector.refresh()
    assert scrape(cm)[("sqlcache_disk_entries", ())] == 1


async def test_a_scrape_from_another_thread_does_not_need_the_loop(cm, clock):
    await cache_workload(cm, clock)
    stats = await cm.get_stats()
    scraped = await asyncio.to_thread(scrape, cm)  # as prometheus_client's HTTP server thread does
    assert scraped == cache_samples(stats)


async def test_keep_fresh_refreshes_until_cancelled(cm):
    await cm.set("a", 1)
    refresher = asyncio.ensure_future(PrometheusCollector(cm).keep_fresh(3600))
    for _ in range(100):
        if scrape(cm)[("sqlcache_disk_entries", ())] == 1:
            break
        await asyncio.sleep(0.01)
    refresher.cancel()
    assert scrape(cm)[("sqlcache_disk_entries", ())] == 1


def test_refuses_other_objects():
    with pytest.raises(TypeError, match="CacheManager or a ResourcePool"):
        PrometheusCollector({"gets": 1})


async def no_sleep(seconds: float) -> None:
    await asyncio.sleep(0)


async def test_pool_scrape_equals_get_stats_and_preloader_stats(cache_dir, clock, http_server):
    http_server.script("/ok", Response.json({"price": 1}))
    http_server.script("/down", Response.text("busy", status=503))
    manager = CacheManager({"disk_cache_dir": str(cache_dir), "memory_max_size": 4, "disk_max_size": 1200}, clock=clock)
    async with ResourcePool(manager, retry=RetryPolicy(max_retries=2), sleep=no_sleep) as pool:
        await cache_workload(manager, clock)
        for _ in range(3):
            await pool.cached_http_request("price", "GET", http_server.url("/ok"), api_name="exchange")
        await pool.http_request("GET", http_server.url("/down"), api_name="exchange")
        await pool.http_request("GET", http_server.url("/ok"))

        assert not any(name.startswith("sqlcache_preload") for name, _ in scrape(pool))  # no preloader yet

        async def failing() -> None:
            raise ConnectionError("exchange down")

        pool.register_preload_task("quotes", lambda: {"q": 1}, 60, cache_key="quotes")
        pool.register_preload_task("broken", failing, 60, cache_key="broken")
        for name in ("quotes", "quotes", "broken"):
            await pool.run_preload_task_now(name)
        stats = await pool.get_stats()
        preloader = await pool.get_preloader_stats()
        scraped = scrape(pool)

    assert stats["http"]["exchange"]["retries"] == 2 and stats["http"]["exchange"]["errors"] == 1
    expected = cache_samples(stats["advanced_cache"])
    expected[("sqlcache_http_pool_size", ())] = stats["http_pool_size"]
    for api, figures in stats["http"].items():
        label = (("api", api),)
        for figure in ("requests", "attempts", "retries", "errors", "transport_failures", "rate_limit_waits",
                       "rate_limit_wait_seconds"):
            expected[(f"sqlcache_http_{figure}_total", label)] = figures[figure]
        expected[("sqlcache_http_attempt_seconds_count", label)] = figures["attempts"]
        expected[("sqlcache_http_attempt_seconds_sum", label)] = pytest.approx(figures["latency_avg"] * figures["attempts"])
        expected[("sqlcache_http_attempt_seconds_max", label)] = figures["latency_max"]
    expected[("sqlcache_preload_tasks", ())] = preloader["tasks"]
    for task, figures in preloader["task_stats"].items():
        label = (("task", task),)
        expected[("sqlcache_preload_runs_total", label)] = figures["run_count"]
        expected[("sqlcache_preload_errors_total", label)] = figures["error_count"]
        expected[("sqlcache_preload_consecutive_errors", label)] = figures["consecutive_errors"]
        expected[("sqlcache_preload_running", label)] = figures["running"]
        expected[("sqlcache_preload_enabled", label)] = figures["enabled"]
        expected[("sqlcache_preload_last_run_timestamp_seconds", label)] = figures["last_run"]
        expected[("sqlcache_preload_last_duration_seconds", label)] = figures["last_duration"]
        if figures["last_success"] is not None:
            expected[("sqlcache_preload_last_success_timestamp_seconds", label)] = figures["last_success"]
    assert preloader["task_stats"]["quotes"]["run_count"] == 2
    assert preloader["task_stats"]["broken"]["error_count"] == 1
    assert preloader["task_stats"]["broken"]["last_success"] is None
    assert scraped == expected

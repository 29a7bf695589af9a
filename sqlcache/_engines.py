"""Which store holds the disk tier: the one place that knows the engines.

`make_store(config, origin)` reads `disk_cache_url` (PostgreSQL or SQLite) and falls back to the
SQLite file in `disk_cache_dir`; the manager only sees the `Store` interface.
"""

from __future__ import annotations

from typing import Any

from ._config import CacheConfig
from ._store import Store
from ._urls import parse


def make_store(config: CacheConfig, origin: str) -> Store:
    """An unopened store for `config`; `origin` names the manager in the invalidation log."""
    url = parse(config.disk_cache_url) if config.disk_cache_url is not None else None
    shared: dict[str, Any] = {
        "max_bytes": config.disk_max_size,
        "strategy": config.invalidation_strategy,
        "origin": origin,
        "busy_timeout": config.busy_timeout,
        "durability": config.durability,
    }
    if url is not None and url.engine == "postgresql":
        from ._postgres import PostgresStore  # asyncpg is an extra: imported only when used

        return PostgresStore(url.url, **shared)
    from ._sqlite import SQLiteStore

    return SQLiteStore(config.db_path, check_on_open=config.check_on_open, **shared)

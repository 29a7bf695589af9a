"""sqlcache: a durable two-tier asyncio cache for agent processes.

Memory tier on `cachetools`, disk tier on one SQLite file (through `aiosqlite`) shared by every
process on the host, tag and pattern invalidation, an HTTP `ResourcePool` and a `CachePreloader`.
"""

from ._config import CacheConfig, CacheLevel, Durability, InvalidationStrategy
from ._exceptions import (
    CacheBusyError,
    CacheDirectoryError,
    CacheError,
    DamagedCacheWarning,
    DatabaseUnavailableError,
    SchemaVersionError,
    StorageError,
)
from ._manager import CacheManager
from ._pool import ResourcePool, RetryPolicy, TransportFailure
from ._preloader import CachePreloader, PreloadError
from ._ratelimit import RateLimit

__all__ = [
    "CacheBusyError",
    "CacheConfig",
    "CacheDirectoryError",
    "CacheError",
    "CacheLevel",
    "CacheManager",
    "CachePreloader",
    "DamagedCacheWarning",
    "DatabaseUnavailableError",
    "Durability",
    "InvalidationStrategy",
    "PreloadError",
    "RateLimit",
    "ResourcePool",
    "RetryPolicy",
    "SchemaVersionError",
    "StorageError",
    "TransportFailure",
]
__version__ = "0.1.0"

"""Configuration: the guide's dict of options, validated once into a frozen `CacheConfig`.

Every key is checked up front so a typo or a bad value fails at construction with a
`ValueError` naming the key, instead of surfacing later as odd cache behaviour.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from ._urls import SecretURL
from ._urls import parse as parse_url, redact

MiB = 1024 * 1024


class CacheLevel(enum.Enum):
    """Which tier a `set` writes to."""

    MEMORY = "memory"
    DISK = "disk"
    ALL = "all"


class InvalidationStrategy(str, enum.Enum):
    """Which entry goes when a tier is full (after the expired ones)."""

    TTL = "ttl"  # soonest to expire
    LRU = "lru"  # least recently read
    LFU = "lfu"  # least often read
    FIFO = "fifo"  # oldest written


class Durability(str, enum.Enum):
    """SQLite `synchronous` mode: what a committed set survives.

    NORMAL survives a crash or `kill -9` of the process; a power loss or OS crash may lose the
    last transactions (never corrupts). FULL also survives a power loss, at an fsync per commit.
    """

    NORMAL = "normal"
    FULL = "full"


@dataclass(frozen=True)
class CacheConfig:
    """All options of a `CacheManager`; build it with `CacheConfig.from_mapping(dict)`."""

    memory_max_size: int = 10_000
    """Most entries the memory tier holds."""
    disk_max_size: int = 100 * MiB
    """Most bytes (keys plus stored values) the disk tier holds."""
    default_ttl: float = 300
    """Seconds an entry lives when `set` is given no ttl; 0 means no expiry."""
    disk_cache_enabled: bool = True
    disk_cache_dir: Path = Path("cache")
    """Directory of the database file `sqlcache.db`, shared by every process that opens it."""
    invalidation_strategy: InvalidationStrategy = InvalidationStrategy.LRU
    allow_pickle: bool = False
    """Store values JSON cannot hold with pickle. Reading pickle runs code: trust the file."""
    sync_interval: float = 0.05
    """Seconds within which a change made by another process is seen by this memory tier."""
    busy_timeout: float = 5.0
    """Seconds a write waits for another process's lock before raising `CacheBusyError`."""
    durability: Durability = Durability.NORMAL
    access_flush_interval: float = 1.0
    """Seconds between writes of batched read statistics (LRU/LFU) to the database."""
    purge_interval: float = 60.0
    """Seconds between background purges of expired disk entries; 0 turns the purge off."""
    purge_batch_size: int = 500
    """Most rows one purge transaction deletes, so no purge holds the write lock for long."""
    check_on_open: bool = True
    """Run `PRAGMA quick_check` on open and set a damaged file aside."""
    disk_cache_url: str | None = None
    """`postgresql://user:password@host/dbname` puts the disk tier in PostgreSQL (then
    `disk_cache_dir` is unused); `sqlite:///path/to/file.db` is the SQLite store at that file."""
    ttl_jitter: float = 0.0
    """Fraction j (0 <= j < 1): each set's ttl is multiplied by a random factor in [1 - j, 1],
    so keys set together do not all expire together."""

    @property
    def location(self) -> str:
        """Where the disk tier is, fit for a message: the file, or the URL without its password."""
        if self.disk_cache_url is not None and parse_url(self.disk_cache_url).engine == "postgresql":
            return redact(self.disk_cache_url)
        return str(self.db_path)

    @property
    def db_path(self) -> Path:
        """The SQLite file: `sqlite:///...`'s path, else `sqlcache.db` in `disk_cache_dir`."""
        path = parse_url(self.disk_cache_url).path if self.disk_cache_url is not None else None
        return path if path is not None else self.disk_cache_dir / "sqlcache.db"

    @classmethod
    def from_mapping(cls, config: "Mapping[str, Any] | CacheConfig | None") -> "CacheConfig":
        """Validate a user's dict; unknown keys and bad values raise `ValueError` naming the key."""
        if config is None:
            return cls()
        if isinstance(config, CacheConfig):
            return config
        if not isinstance(config, Mapping):
            raise TypeError(f"config must be a dict, not {type(config).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown config key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")
        return cls(**{name: _VALIDATORS[name](name, value) for name, value in config.items()})


def _count(name: str, value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"config key {name!r} must be an integer >= {minimum}, got {value!r}")
    return value


def _positive_count(name: str, value: Any) -> int:
    return _count(name, value, minimum=1)


def _seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"config key {name!r} must be a number of seconds >= 0, got {value!r}")
    return float(value)


def _positive_seconds(name: str, value: Any) -> float:
    seconds = _seconds(name, value)
    if seconds == 0:
        raise ValueError(f"config key {name!r} must be > 0, got {value!r}")
    return seconds


def _fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"config key {name!r} must be a fraction >= 0 and < 1, got {value!r}")
    return float(value)


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"config key {name!r} must be True or False, got {value!r}")
    return value


def _directory(name: str, value: Any) -> Path:
    if not isinstance(value, (str, Path)) or str(value) == "":
        raise ValueError(f"config key {name!r} must be a directory path, got {value!r}")
    return Path(value)


def _enum(enum_type: type[enum.Enum]):
    def validate(name: str, value: Any) -> enum.Enum:
        try:
            return enum_type(value.value if isinstance(value, enum_type) else value)
        except ValueError:
            choices = ", ".join(repr(member.value) for member in enum_type)
            raise ValueError(f"config key {name!r} must be one of {choices}, got {value!r}") from None

    return validate


def _url(name: str, value: Any) -> SecretURL | None:
    if value is None:
        return None
    try:
        parse_url(value)
    except ValueError as error:
        raise ValueError(f"config key {name!r}: {error}") from None
    return SecretURL(value)


_VALIDATORS = {
    "memory_max_size": _count,
    "disk_max_size": _positive_count,
    "default_ttl": _seconds,
    "disk_cache_enabled": _flag,
    "disk_cache_dir": _directory,
    "invalidation_strategy": _enum(InvalidationStrategy),
    "allow_pickle": _flag,
    "sync_interval": _positive_seconds,
    "busy_timeout": _positive_seconds,
    "durability": _enum(Durability),
    "access_flush_interval": _positive_seconds,
    "purge_interval": _seconds,
    "purge_batch_size": _positive_count,
    "check_on_open": _flag,
    "disk_cache_url": _url,
    "ttl_jitter": _fraction,
}

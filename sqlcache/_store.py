"""The disk tier's interface: what `CacheManager` asks of a SQL store.

A store applies batches of write operations in one transaction each (group commit), reads
many keys in one query, and reports the invalidation log that keeps other processes' memory
tiers coherent. `SQLiteStore` is the implementation; another SQL engine could take its place
by offering the same few coroutines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Protocol, Sequence, Union


class StoredRow(NamedTuple):
    """An entry as read from disk."""

    data: bytes
    codec: int
    expires_at: float | None
    tags: tuple[str, ...]


class Removed(NamedTuple):
    """A key a write removed, with its expiry (to tell live removals from expired ones)."""

    key: str
    expires_at: float | None


@dataclass(frozen=True)
class Put:
    """Insert or replace one entry (value, expiry and tags)."""

    key: str
    data: bytes
    codec: int
    tags: tuple[str, ...]
    created_at: float
    expires_at: float | None


@dataclass(frozen=True)
class Remove:
    """Delete these keys."""

    keys: tuple[str, ...]


@dataclass(frozen=True)
class RemoveTag:
    tag: str


@dataclass(frozen=True)
class RemovePattern:
    """Delete the keys `re.match`-ing `pattern`; `prefix` is a literal prefix every match has."""

    pattern: str
    prefix: str


@dataclass(frozen=True)
class RemoveAll:
    pass


@dataclass(frozen=True)
class PurgeExpired:
    """Delete up to `limit` entries expired at `now`."""

    now: float
    limit: int


@dataclass(frozen=True)
class FlushReads:
    """Write nothing but the pending read statistics that ride along with every batch."""


@dataclass(frozen=True)
class TrimLog:
    """Forget invalidation-log rows written before `before` (wall-clock seconds)."""

    before: float


WriteOp = Union[Put, Remove, RemoveTag, RemovePattern, RemoveAll, PurgeExpired, FlushReads, TrimLog]
"""Results: `Put`, `FlushReads` and `TrimLog` -> None; removals -> list[Removed]; `PurgeExpired` -> int."""


ReadCounts = Sequence[float]
"""Reads of one key since the last flush: `(count, time of the last read)`."""


@dataclass(frozen=True)
class WriteResult:
    results: list[Any]
    evicted: int
    expired: int


class Change(NamedTuple):
    """One row of the invalidation log written by another process."""

    kind: str  # 'key', 'tag', 'pattern' or 'clear'
    arg: str  # the key, tag or pattern ('' for clear)


@dataclass(frozen=True)
class Changes:
    """What other processes changed since the last look; `complete` False means rows were lost."""

    changes: list[Change]
    complete: bool


class Store(Protocol):
    """What `CacheManager` needs of a disk tier."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def read(self, keys: Sequence[str]) -> dict[str, StoredRow]: ...

    async def write(self, ops: Sequence[WriteOp], reads: Mapping[str, ReadCounts], now: float) -> WriteResult: ...

    async def changes(self) -> Changes | None: ...

    async def size(self) -> tuple[int, int]: ...


_META = frozenset(".^$*+?{}[]\\|()")
_QUANTIFIERS = frozenset("*+?{")


def literal_prefix(pattern: str) -> str:
    """The literal text every string `re.match`-ing `pattern` starts with ('' if unknown).

    Conservative: it stops at the first metacharacter, drops a character a quantifier follows,
    and gives up on case-insensitive or verbose patterns and on a top-level alternation.
    """
    compiled = re.compile(pattern)
    if compiled.flags & (re.IGNORECASE | re.VERBOSE) or _has_top_level_alternation(pattern):
        return ""
    end = 0
    while end < len(pattern) and pattern[end] not in _META:
        end += 1
    if end < len(pattern) and pattern[end] in _QUANTIFIERS:
        end -= 1
    return pattern[: max(end, 0)]


def _has_top_level_alternation(pattern: str) -> bool:
    depth, index = 0, 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            index += 1  # the escaped character is literal
        elif char == "[":
            index = _end_of_class(pattern, index)
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "|" and depth == 0:
            return True
        index += 1
    return False


def _end_of_class(pattern: str, start: int) -> int:
    """Index of the `]` closing the character class opened at `start` (`[]...]`, `[^]...]` included)."""
    index = start + 1
    if index < len(pattern) and pattern[index] == "^":
        index += 1
    if index < len(pattern) and pattern[index] == "]":
        index += 1
    while index < len(pattern) and pattern[index] != "]":
        index += 2 if pattern[index] == "\\" else 1
    return index


def prefix_successor(prefix: str) -> str | None:
    """The least string greater than every string starting with `prefix` (None if none)."""
    chars = list(prefix)
    while chars:
        code = ord(chars.pop()) + 1
        if 0xD800 <= code <= 0xDFFF:  # surrogates cannot be stored; skip over them
            code = 0xE000
        if code <= 0x10FFFF:
            return "".join(chars) + chr(code)
    return None

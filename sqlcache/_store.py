"""The disk tier's interface: what `CacheManager` asks of a SQL store.

A store applies batches of write operations in one transaction each (group commit), reads
many keys in one query, and reports the invalidation log that keeps other processes' memory
tiers coherent. `SQLiteStore` is the implementation; another SQL engine could take its place
by offering the same few coroutines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Optional, Protocol, Sequence, Tuple, Union


class StoredRow(NamedTuple):
    """An entry as read from disk."""

    data: bytes
    codec: int
    expires_at: float | None
    tags: tuple[str, ...]
    stale_until: float | None = None
    """End of the stale window `get_or_set(..., stale_ttl=)` may serve the value in (None: none)."""


Removed = Tuple[str, Optional[float]]
"""A key a write removed, with its expiry (to tell live removals from expired ones): the
delete statement's row as it comes, since a tag may remove thousands."""


@dataclass(frozen=True)
class Put:
    """Insert or replace one entry (value, expiry and tags).

    With `unless_changed_since` (a log position), the put is skipped if any change that could
    touch this key was logged after that position: a loader's result never overwrites a newer
    set, delete or invalidation (see `changed_since` in `_plan`).
    """

    key: str
    data: bytes
    codec: int
    tags: tuple[str, ...]
    created_at: float
    expires_at: float | None
    unless_changed_since: int | None = None
    stale_until: float | None = None
    """Keep the row until then (after `expires_at`) for stale-while-revalidate; None: no window."""


@dataclass(frozen=True)
class PutMany:
    """Several unconditional `Put`s as one op (`set_many`): one result, so the group committer
    never splits them, and they commit in one transaction or not at all."""

    puts: tuple[Put, ...]


@dataclass(frozen=True)
class Touch:
    """Give `key`'s live entry (unexpired at `now`) the expiry `expires_at` (None: never),
    shifting its stale window by as much; its value and tags stay."""

    key: str
    expires_at: float | None
    now: float


@dataclass(frozen=True)
class Remove:
    """Delete these keys (conditionally, like `Put`, when `unless_changed_since` is given)."""

    keys: tuple[str, ...]
    unless_changed_since: int | None = None
    tags: tuple[str, ...] = ()  # the tags a conditional removal's key is about to carry in memory


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


WriteOp = Union[Put, PutMany, Touch, Remove, RemoveTag, RemovePattern, RemoveAll, PurgeExpired, FlushReads]
"""Results: `Put`, `PutMany` -> True; `Touch` -> whether a live entry was there; removals ->
list[Removed]; a skipped conditional `Put` or `Remove` -> None; `PurgeExpired` -> int;
`FlushReads` -> None."""


ReadCounts = Sequence[float]
"""Reads of one key since the last flush: `(count, time of the last read)`."""


@dataclass(frozen=True)
class WriteResult:
    results: list[Any]
    evicted: int
    expired: int
    seq: int
    """The log position after this batch: every change logged later has a greater one."""
    logged: int = 0
    """Log rows this batch wrote (the last `logged` positions up to `seq`)."""


class Change(NamedTuple):
    """One row of the invalidation log written by another process."""

    seq: int
    kind: str  # 'key', 'tag', 'pattern' or 'clear'
    arg: str  # the key, tag or pattern ('' for clear)


@dataclass(frozen=True)
class Changes:
    """What other processes changed since the last look; `complete` False means rows were lost
    (or the database was replaced), so nothing held in memory can be trusted."""

    changes: list[Change]
    complete: bool


class Store(Protocol):
    """What `CacheManager` needs of a disk tier.

    One write at a time: the manager's `GroupCommitter` never overlaps two `write` calls.
    """

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def read(self, keys: Sequence[str]) -> dict[str, StoredRow]: ...

    def read_now(self, keys: Sequence[str]) -> dict[str, StoredRow] | None:
        """The rows at once, if they can be had without waiting; None: await `read` instead."""

    async def write(self, ops: Sequence[WriteOp], reads: Mapping[str, ReadCounts], now: float) -> WriteResult: ...

    def write_now(self, ops: Sequence[WriteOp], reads: Mapping[str, ReadCounts], now: float) -> WriteResult | None:
        """The batch committed at once, if nothing is in the way; None: await `write` instead
        (nothing was changed). The fast path of an engine that can answer on the loop's thread."""

    async def changes(self) -> Changes | None:
        """Other processes' changes since the last call; None (at once) when there are none."""

    async def log_position(self) -> int:
        """The newest log position: a change committed after this call is logged after it."""

    async def size(self) -> tuple[int, int]: ...


try:  # the parser `re.compile` itself uses, so the prefix follows Python's own reading of a pattern
    from re import _constants as _regex_ops, _parser as _regex_parser  # type: ignore[attr-defined]  # Python 3.11+
except ImportError:  # Python 3.10
    import sre_constants as _regex_ops  # type: ignore[no-redef]
    import sre_parse as _regex_parser  # type: ignore[no-redef]


def literal_prefix(pattern: str) -> str:
    """The literal text every string `re.match`-ing `pattern` starts with ('' if unknown).

    Read from Python's regex parser, so comments `(?#...)`, verbose groups `(?x:...)` and escapes
    mean what they mean to `re`. Conservative: it takes the leading literals (descending into
    groups that are not repeated), stops at the first anything else, and gives up on a
    case-insensitive pattern or group.
    """
    parsed = _regex_parser.parse(pattern)
    if parsed.state.flags & _regex_ops.SRE_FLAG_IGNORECASE:
        return ""
    items = list(parsed)
    if items and items[0] == (_regex_ops.AT, _regex_ops.AT_BEGINNING):
        items = items[1:]  # `^` at the start adds nothing to re.match's anchoring
    return _leading_literals(items)[0]


def _leading_literals(items: Sequence[Any]) -> tuple[str, bool]:
    """(the literal text `items` start with, whether that text is all of them)."""
    prefix = []
    for op, argument in items:
        if op is _regex_ops.LITERAL:
            prefix.append(chr(argument))
        elif op is _regex_ops.SUBPATTERN and not argument[1] & _regex_ops.SRE_FLAG_IGNORECASE:
            inner, whole = _leading_literals(argument[-1])
            prefix.append(inner)
            if not whole:
                return "".join(prefix), False
        else:
            return "".join(prefix), False
    return "".join(prefix), True


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

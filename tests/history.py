"""A history checker for the multi-process stress test, in the spirit of Jepsen / Knossos.

The stress workers (`stress_worker.py`) log every operation with its real wall-clock invoke time
`t0` and completion time `t1` (`time.time()`, one clock for every process on the host). This
module turns those JSON lines into `Op`s and proves from them what DESIGN.md promises. It is pure
Python over plain data, so `test_history.py` feeds it hand-made histories.

What a cache may do, and what the checker therefore allows:
- **miss at any time** while eviction or expiry can run (`evicts=True`): a miss proves nothing.
- **return an old value for a while**: another process's change reaches this memory tier within
  `sync_interval`; the checker adds `slack` (default `SYNC_SLACK`) for scheduling on a loaded
  host. A change made in the reading process itself must be seen at once (bound 0).
- **either order for overlapping operations**: an op only "definitely" replaced a value when it
  was invoked after that value's write completed (`O.t0 > W.t1`). Ops whose outcome is unknown
  (cancelled caller, error, worker killed before it returned) may or may not have happened: they
  never make a value stale, and they may explain a missing one.
- **`get_or_set` loads are optional writes**: a loader result is dropped when a newer change
  arrived, so a load never replaces anything for certain. But DESIGN says the result "never
  overwrites a set, delete or invalidation of that key that returned after the load began". A
  change invoked before the loader started and returning after it overlaps the load's start, so
  it may have committed first (then the loaded value is the newer write): either order is legal.
  So a loaded value (write start = the loader's start `L0`) is stale once a change *invoked*
  after `L0` returned. A `get_or_set` *return* is judged by when the value was produced instead
  (a change invoked after the loader ended), since callers sharing one load get its result.

What it flags (each a `Violation`, with the read, the value's write and the op that made it stale):
- `stale-read`: a get / get_or_set returned v of key k although an op that removes v (a set of k
  at any level -- a MEMORY set in another process drops the disk copy and, through the log, every
  other memory copy --, a delete of k, a clear, a tag invalidation of a tag v was written with, a
  pattern matching k) completed more than the bound before the read began and definitely came
  after v's write. `stale-loaded-value` is the same for a get_or_set result, stale because it
  was stored over a change that returned after its load began.
- `phantom-value` (never written), `garbled-value` (not the value any write produced: torn or
  changed), `wrong-key` (another key's value), `foreign-memory-value` (a MEMORY-level value seen
  in another process), `read-before-write`, `expired-read` (returned after its ttl), and
  `failed-load-value` (the result of a loader that raised or was cancelled).
- `unexpected-error`: any op that raised, but for the loaders' deliberate `LoaderFailed` (every
  argument the workers pass is valid, so a failure is a write failed by another's, or worse).
- with `evicts=False` (no eviction, no expiry): `lost-value` / `memory-value-lost`, a get that
  missed although a write of k visible to that process completed before it began and no op that
  could remove k (of any outcome) overlaps the window between that write and the read. A MEMORY
  set drops the disk copy before it fills the memory tier, so one in the reader's own process
  excuses a miss only while the read runs. (A memory tier emptied on purpose, after a hole in
  the invalidation log, would also lose MEMORY values: the workload is too short to trim the log.)

The final state (`check_final_state`) is judged from outside, since eviction is invisible:
(i) every value on disk is one some DISK/ALL write produced, with that write's tags; (ii) it is
not superseded: no definite op came after its write (for a loaded value: no change invoked after
its load began) -- evicting the newer value must not bring the older one back; (iii) with
`evicts=False`, every key whose last acknowledged DISK/ALL set is not overlapped or followed by
any possible removal is present. That is "every acknowledged set survives the kill unless replaced
later", stated for every key and every worker, the killed one included (its acknowledged sets are
in its history, flushed line by line before the kill). Fresh-process views (separate gets,
concurrent gets, `get_many`) must agree with SQL, and the `cache_tags` view with the entries' tags.
"""

from __future__ import annotations

import bisect
import json
import math
import re
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

SYNC_SLACK = 0.25
"""Seconds added to `sync_interval` for cross-process staleness. A process can be descheduled for
a few hundred milliseconds on 2 cores shared by several busy processes; a stale value served past
`sync_interval + SYNC_SLACK` would need its coherence check to stall that long *between* reading the
log and finishing, which scheduling alone does not do, so a flag past the bound is a real bug."""

LONGEST_WRITE = 5.0
"""Seconds a write (or a load and its store) may take at most; one invoked longer before a window
is taken to have landed before it. The workers' writes take milliseconds; a 5 s one is a hang."""

EXPIRY_EPSILON = 1e-3  # float rounding between the worker's time.time() and the cache's clock

EXPECTED_ERROR = "error:LoaderFailed"  # the workers' loaders fail on purpose; any other error is a bug

WRITES = ("set", "load")
READS = ("get", "get_or_set")


@dataclass(frozen=True, slots=True)
class Op:
    """One logged operation. `t1` is `math.inf` when the worker died before it returned.

    kind: set | get | delete | tag | pattern | clear | get_or_set | load (a loader call).
    outcome: "ok", "cancelled", "error:<Type>" (`error` holds its message) or "unknown" (no
    completion logged).
    `vid` is the id of the value a set or load wrote; `got` the id a read returned (None: a miss),
    `garbled` the repr of a returned value that is no value any write produced.
    """

    proc: str
    task: int
    n: int
    kind: str
    t0: float
    t1: float = math.inf
    outcome: str = "unknown"
    key: str | None = None
    arg: str | None = None
    vid: str | None = None
    level: str | None = None
    tags: tuple[str, ...] = ()
    ttl: float | None = None
    got: str | None = None
    garbled: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    @property
    def end(self) -> float:
        """When its effect is certainly in place: `t1` for an acknowledged op, else never."""
        return self.t1 if self.ok else math.inf

    def describe(self) -> str:
        what = {"tag": self.arg, "pattern": self.arg, "clear": ""}.get(self.kind, self.key)
        extra = f" value={self.vid}" if self.vid else ""
        if self.kind in READS:
            extra = f" got={self.got}" if self.garbled is None else f" got garbled {self.garbled[:80]}"
        if self.level:
            extra += f" level={self.level}"
        if self.tags:
            extra += f" tags={list(self.tags)!r}"
        outcome = self.outcome if self.error is None else f"{self.outcome} ({self.error})"
        return f"{self.proc}/{self.task}#{self.n} {self.kind}({what!r}){extra} [{self.t0:.3f}, {self.t1:.3f}] {outcome}"


@dataclass(frozen=True)
class Violation:
    kind: str
    detail: str
    ops: tuple[Op, ...] = ()

    def __str__(self) -> str:
        lines = [f"{self.kind}: {self.detail}"] + [f"    {op.describe()}" for op in self.ops]
        return "\n".join(lines)


@dataclass(frozen=True)
class DiskEntry:
    """A row of the `cache_entries` view, its value decoded to the id of the write it came from."""

    key: str
    vid: str | None
    garbled: str | None
    tags: tuple[str, ...]
    expires_at: float | None  # epoch seconds; None: never


# ---------------------------------------------------------------- values


def make_value(vid: str) -> dict[str, str]:
    """The unique value written under id `vid`: the id plus a padding derived from it (50 to
    ~950 characters, some non-ASCII), so a torn or mixed-up value never matches any write."""
    length = 50 + zlib.crc32(vid.encode()) % 900
    unit = f"{vid}|é·"
    return {"id": vid, "pad": (unit * (length // len(unit) + 1))[:length]}


def value_id(value: Any) -> tuple[str | None, str | None]:
    """(vid, None) for a value `make_value` produced, (None, None) for a miss, (None, repr) else."""
    if value is None:
        return None, None
    if isinstance(value, dict) and isinstance(value.get("id"), str) and value == make_value(value["id"]):
        return value["id"], None
    return None, repr(value)[:300]


# ---------------------------------------------------------------- loading histories


def load_history(paths: Iterable[Path]) -> list[Op]:
    """Join the workers' JSON lines ("inv" when a write starts, "ret" when any op ends) into ops.

    An "inv" without its "ret" is an op the worker was killed in: outcome "unknown".
    """
    ops: list[Op] = []
    for path in paths:
        pending: dict[tuple[str, int, str, str], dict[str, Any]] = {}
        with open(path, encoding="utf-8") as file:
            for line in file:
                if not line.endswith("\n"):
                    break  # the line a SIGKILL cut short
                record = json.loads(line)
                ident = (record["p"], record["T"], str(record["i"]), record["op"])
                if record["e"] == "inv":
                    pending[ident] = record
                else:
                    ops.append(_op({**pending.pop(ident, {}), **record}))
        ops.extend(_op(record) for record in pending.values())
    return ops


def _op(record: Mapping[str, Any]) -> Op:
    return Op(
        proc=record["p"],
        task=record["T"],
        n=int(str(record["i"]).lstrip("L")),
        kind=record["op"],
        t0=record["t0"],
        t1=record.get("t1", math.inf),
        outcome=record.get("o", "unknown"),
        key=record.get("key"),
        arg=record.get("arg"),
        vid=record.get("vid"),
        level=record.get("level"),
        tags=tuple(record.get("tags", ())),
        ttl=record.get("ttl"),
        got=record.get("got"),
        garbled=record.get("garbled"),
        error=record.get("err"),
    )


# ---------------------------------------------------------------- timelines


class _Timeline:
    """The ops of one scope (a key, a tag, clears), indexed for the three questions asked."""

    def __init__(self, ops: Sequence[Op], ends: Sequence[float]):
        order = sorted(range(len(ops)), key=lambda i: ops[i].t0)
        self._ops = [ops[i] for i in order]
        self._starts = [ops[i].t0 for i in order]
        self._ends = [ends[i] for i in order]
        n = len(order)
        self._suffix_min: list[int] = [0] * n  # index of the earliest end among ops from i on
        for i in range(n - 1, -1, -1):
            later = self._suffix_min[i + 1] if i + 1 < n else None
            self._suffix_min[i] = i if later is None or self._ends[i] <= self._ends[later] else later
        self._prefix_max: list[int] = [0] * n  # index of the latest end among ops up to i
        for i in range(n):
            self._prefix_max[i] = i if i == 0 or self._ends[i] >= self._ends[self._prefix_max[i - 1]] else self._prefix_max[i - 1]
        by_end = sorted(range(n), key=lambda i: self._ends[i])
        self._by_end = [self._ops[i] for i in by_end]
        self._sorted_ends = [self._ends[i] for i in by_end]

    def started_after_and_ended_before(self, after: float, before: float) -> Op | None:
        """An op invoked after `after` that completed before `before` (the earliest to complete)."""
        i = bisect.bisect_right(self._starts, after)
        if i < len(self._starts) and self._ends[self._suffix_min[i]] < before:
            return self._ops[self._suffix_min[i]]
        return None

    def ended_between(self, after: float, before: float) -> Op | None:
        """An op that completed after `after` and before `before` (the earliest)."""
        i = bisect.bisect_right(self._sorted_ends, after)
        if i < len(self._sorted_ends) and self._sorted_ends[i] < before:
            return self._by_end[i]
        return None

    def overlapping(self, after: float, before: float) -> Op | None:
        """An op that may have taken effect between `after` and `before`."""
        i = bisect.bisect_left(self._starts, before)
        if i and self._ends[self._prefix_max[i - 1]] > after:
            return self._ops[self._prefix_max[i - 1]]
        return None


_EMPTY = _Timeline([], [])


class _Index:
    """Every op of a history, grouped into timelines by what it can remove."""

    def __init__(self, ops: Sequence[Op]):
        self.writes = {op.vid: op for op in ops if op.kind in WRITES and op.vid is not None}
        self.keys = sorted({op.key for op in ops if op.key is not None})
        definite: dict[tuple, list[Op]] = defaultdict(list)  # removers of a value, acknowledged
        possible: dict[tuple, list[Op]] = defaultdict(list)  # anything that may remove a key
        self._writes_of_key: dict[str, list[Op]] = defaultdict(list)
        self.procs = sorted({op.proc for op in ops})
        matches = _PatternMatcher(self.keys)
        for op in ops:
            if op.kind in WRITES:
                self._writes_of_key[op.key].append(op)
                if op.level == "memory":
                    possible[("memory", op.key, op.proc)].append(op)
            if op.kind == "set" or op.kind == "delete":
                scopes = [("key", op.key)]
            elif op.kind == "pattern":
                scopes = [("key", key) for key in matches(op.arg)]
            elif op.kind == "tag":
                scopes = [("tag", op.arg)]
            elif op.kind == "clear":
                scopes = [("clear",)]
            else:
                continue
            for scope in scopes:
                if op.ok:
                    definite[scope].append(op)
                    definite[(*scope, op.proc)].append(op)
                if op.kind != "set":
                    possible[scope].append(op)
        self._definite = {scope: _Timeline(group, [op.end for op in group]) for scope, group in definite.items()}
        # A possible removal takes effect after it was invoked and before it ended (a load: before
        # its store ended, `LONGEST_WRITE` after the loader returned); never known if it did not end.
        self._possible = {
            scope: _Timeline(group, [op.t1 + LONGEST_WRITE if op.kind == "load" else op.end for op in group])
            for scope, group in possible.items()
        }
        for group in self._writes_of_key.values():
            group.sort(key=lambda op: op.t0)
        self._write_starts = {key: [op.t0 for op in group] for key, group in self._writes_of_key.items()}
        self._visible_writes: dict[tuple, list[Op]] = defaultdict(list)
        for op in ops:
            if op.kind == "set" and op.ok:
                scope = ("memory", op.key, op.proc) if op.level == "memory" else ("shared", op.key)
                self._visible_writes[scope].append(op)
        for group in self._visible_writes.values():
            group.sort(key=lambda op: op.t1)
        self._latest_t0 = {scope: _running_max_t0(group) for scope, group in self._visible_writes.items()}
        self._write_ends = {scope: [op.t1 for op in group] for scope, group in self._visible_writes.items()}

    def remover_scopes(self, write: Op) -> list[tuple]:
        return [("key", write.key), ("clear",)] + [("tag", tag) for tag in write.tags]

    def definite(self, scope: tuple) -> _Timeline:
        return self._definite.get(scope, _EMPTY)

    def possible(self, scope: tuple) -> _Timeline:
        return self._possible.get(scope, _EMPTY)

    def latest_visible_write(self, key: str, proc: str | None, before: float) -> Op | None:
        """The acknowledged write of `key` visible to `proc` (None: to the disk) that completed
        before `before` and was invoked last."""
        scopes = [("shared", key)] + ([("memory", key, proc)] if proc is not None else [])
        best: Op | None = None
        for scope in scopes:
            i = bisect.bisect_left(self._write_ends.get(scope, []), before)
            if i:
                candidate = self._latest_t0[scope][i - 1]
                if best is None or candidate.t0 > best.t0:
                    best = candidate
        return best

    def possible_removal(self, key: str, reader: str | None, after: float, read: Op | None = None) -> Op | None:
        """An op of any outcome that may have removed `key` for `read` in process `reader` (None:
        for the disk, at the end) after `after`: a delete, pattern, clear, a tag the key's value
        may have carried, or a MEMORY set or load, which drops the disk copy before it fills the
        memory tier: in another process, and in the reader's own while the read ran."""
        before = math.inf if read is None else read.t1
        scopes = [("key", key), ("clear",)] + [("tag", tag) for tag in sorted(self._tags_between(key, after, before))]
        windows = [(scope, after) for scope in scopes]
        windows += [(("memory", key, proc), after if proc != reader else read.t0) for proc in self.procs]
        for scope, start in windows:
            found = self.possible(scope).overlapping(start, before)
            if found is not None:
                return found
        return None


    def _tags_between(self, key: str, after: float, before: float) -> set[str]:
        """Tags the value of `key` may have carried between `after` and `before`: those of the
        writes of it invoked from `LONGEST_WRITE` before `after` until `before`."""
        starts = self._write_starts.get(key, [])
        group = self._writes_of_key.get(key, [])
        first, last = bisect.bisect_left(starts, after - LONGEST_WRITE), bisect.bisect_left(starts, before)
        return {tag for op in group[first:last] for tag in op.tags}


def _running_max_t0(group: Sequence[Op]) -> list[Op]:
    best: list[Op] = []
    for op in group:
        best.append(op if not best or op.t0 > best[-1].t0 else best[-1])
    return best


class _PatternMatcher:
    """The keys of the history each pattern `re.match`es (the key space is small)."""

    def __init__(self, keys: Sequence[str]):
        self._keys = keys
        self._cache: dict[str, list[str]] = {}

    def __call__(self, pattern: str) -> list[str]:
        if pattern not in self._cache:
            compiled = re.compile(pattern)
            self._cache[pattern] = [key for key in self._keys if compiled.match(key)]
        return self._cache[pattern]


# ---------------------------------------------------------------- the checks


def check_history(
    ops: Sequence[Op],
    *,
    sync_interval: float,
    default_ttl: float,
    slack: float = SYNC_SLACK,
    evicts: bool = True,
) -> list[Violation]:
    """Every violation of the read rules (see the module docstring) in a merged history."""
    index = _Index(ops)
    bound = sync_interval + slack
    violations: list[Violation] = []
    for read in ops:
        if read.kind in READS and read.ok:
            violations.extend(_check_read(read, index, bound, default_ttl, evicts))
        elif read.outcome.startswith("error:") and read.outcome != EXPECTED_ERROR:
            violations.append(Violation("unexpected-error", f"{read.kind} failed: {read.error}", (read,)))
    return violations


def _check_read(read: Op, index: _Index, bound: float, default_ttl: float, evicts: bool) -> list[Violation]:
    if read.garbled is not None:
        return [Violation("garbled-value", f"{read.kind} of {read.key!r} returned a value no write produced", (read,))]
    if read.got is None:
        if evicts or read.kind != "get":
            return []
        write = index.latest_visible_write(read.key, read.proc, read.t0)
        if write is None or index.possible_removal(read.key, read.proc, write.t0, read) is not None:
            return []
        kind = "memory-value-lost" if write.level == "memory" else "lost-value"
        return [Violation(kind, f"get of {read.key!r} missed, though nothing could have removed this write", (read, write))]
    write = index.writes.get(read.got)
    if write is None:
        return [Violation("phantom-value", f"{read.kind} of {read.key!r} returned {read.got}, never written", (read,))]
    if write.key != read.key:
        return [Violation("wrong-key", f"{read.kind} of {read.key!r} returned the value of {write.key!r}", (read, write))]
    if write.kind == "load" and write.outcome not in ("ok", "unknown"):
        return [Violation("failed-load-value", f"{read.kind} returned the result of a loader that did not return", (read, write))]
    if write.level == "memory" and write.proc != read.proc:
        return [Violation("foreign-memory-value", f"{read.proc} returned a MEMORY-level value set in {write.proc}", (read, write))]
    if read.t1 < write.t0:
        return [Violation("read-before-write", "returned a value before its write began", (read, write))]
    if write.kind == "set" and write.ok:
        ttl = default_ttl if write.ttl is None else write.ttl
        if ttl and read.t0 > write.t1 + ttl + EXPIRY_EPSILON:
            return [Violation("expired-read", f"returned {read.t0 - write.t1 - ttl:.3f}s after its ttl ({ttl}s) ended", (read, write))]
    stale = _stale_by(read, write, index, bound)
    if stale is None:
        return []
    late = read.t0 - stale.t1
    where = "in the reading process" if stale.proc == read.proc else f"in {stale.proc}"
    if write.kind == "load" and read.kind == "get":
        owner = "its own process" if write.proc == stale.proc else "another process"
        return [Violation("stale-loaded-value", f"get of {read.key!r} returned a get_or_set result of {write.proc} stored over a change "
                          f"by {owner} that returned after the load began, {late:.3f}s before the get ({where})", (read, write, stale))]
    return [Violation("stale-read", f"{read.kind} of {read.key!r} returned a value replaced {late:.3f}s before it began ({where})", (read, write, stale))]


def _stale_by(read: Op, write: Op, index: _Index, bound: float) -> Op | None:
    """The acknowledged op that removed `write`'s value definitely, and long enough before `read`."""
    for scope in index.remover_scopes(write):
        for timeline, before in ((index.definite(scope), read.t0 - bound), (index.definite((*scope, read.proc)), read.t0)):
            if write.kind == "set":
                found = timeline.started_after_and_ended_before(write.end, before)
            elif read.kind == "get_or_set":  # produced by the loader: changes invoked after it ended
                found = timeline.started_after_and_ended_before(write.t1, before)
            else:  # stored by a load: changes invoked after the loader began win
                found = timeline.started_after_and_ended_before(write.t0, before)
            if found is not None:
                return found
    return None


def _superseded_by(write: Op, index: _Index) -> Op | None:
    """The acknowledged op after which `write`'s value must never be on disk again."""
    for scope in index.remover_scopes(write):
        timeline = index.definite(scope)
        if write.kind == "set":
            found = timeline.started_after_and_ended_before(write.end, math.inf)
        else:
            found = timeline.started_after_and_ended_before(write.t0, math.inf)
        if found is not None:
            return found
    return None


def check_final_state(
    ops: Sequence[Op],
    entries: Sequence[DiskEntry],
    *,
    now: float,
    evicts: bool,
    tag_index: Mapping[str, int] | None = None,
    views: Mapping[str, Mapping[str, tuple[str | None, str | None]]] | None = None,
    expiry_margin: float = 2.0,
) -> list[Violation]:
    """Violations in the final disk state after every worker stopped (see the module docstring).

    `entries` are the rows of `cache_entries`; `tag_index` the `cache_tags` view (tag -> entries);
    `views` maps a way of reading (e.g. "get", "gather", "get_many") to {key: (vid, garbled)} as a
    fresh process saw it. Entries expiring within `expiry_margin` seconds of `now` are not compared.
    """
    index = _Index(ops)
    violations: list[Violation] = []
    present = {entry.key for entry in entries}
    for entry in entries:
        violations.extend(_check_entry(entry, index))
    if not evicts:
        for key in index.keys:
            if key in present:
                continue
            write = index.latest_visible_write(key, None, math.inf)
            if write is not None and index.possible_removal(key, None, write.t0) is None:
                violations.append(Violation("lost-acknowledged-set", f"{key!r} is not on disk, though nothing could have removed it", (write,)))
    if tag_index is not None:
        counted = Counter(tag for entry in entries for tag in entry.tags)
        for tag in sorted(set(counted) | set(tag_index)):
            if counted.get(tag, 0) != tag_index.get(tag, 0):
                violations.append(Violation("tag-index", f"cache_tags says tag {tag!r} has {tag_index.get(tag, 0)} entries, the entries' tags say {counted.get(tag, 0)}"))
    live = {entry.key: entry.vid for entry in entries if entry.expires_at is None or entry.expires_at > now + expiry_margin}
    expiring = {entry.key for entry in entries} - set(live)
    for name, view in (views or {}).items():
        for key in sorted(set(view) | set(live)):
            if key in expiring:
                continue
            seen = view.get(key, (None, None))
            if seen != (live.get(key), None):
                violations.append(Violation("view-mismatch", f"a fresh process's {name} of {key!r} gave {seen}, SQL holds {live.get(key)}"))
    return violations


def _check_entry(entry: DiskEntry, index: _Index) -> list[Violation]:
    if entry.garbled is not None:
        return [Violation("garbled-value", f"disk holds under {entry.key!r} a value no write produced: {entry.garbled[:80]}")]
    write = index.writes.get(entry.vid)
    if write is None:
        return [Violation("phantom-value", f"disk holds under {entry.key!r} the value {entry.vid}, never written")]
    if write.key != entry.key:
        return [Violation("wrong-key", f"disk holds under {entry.key!r} the value of {write.key!r}", (write,))]
    if write.level == "memory":
        return [Violation("memory-value-on-disk", f"disk holds a MEMORY-level value under {entry.key!r}", (write,))]
    if write.kind == "load" and write.outcome not in ("ok", "unknown"):
        return [Violation("failed-load-value", f"disk holds under {entry.key!r} the result of a loader that did not return", (write,))]
    if tuple(sorted(entry.tags)) != tuple(sorted(write.tags)):
        return [Violation("wrong-tags", f"disk holds {entry.key!r} with tags {list(entry.tags)!r}", (write,))]
    newer = _superseded_by(write, index)
    if newer is not None and write.kind == "load":
        return [Violation("load-stored-over-newer-change", f"disk holds under {entry.key!r} a get_or_set result stored over a change that returned after the load began", (write, newer))]
    if newer is not None:
        return [Violation("superseded-on-disk", f"disk holds under {entry.key!r} a value a later op replaced or removed", (write, newer))]
    return []


def summarize(violations: Sequence[Violation], examples: int = 1) -> str:
    """Counts per kind, and the first `examples` of each kind in full."""
    by_kind: dict[str, list[Violation]] = defaultdict(list)
    for violation in violations:
        by_kind[violation.kind].append(violation)
    lines = [f"{len(violations)} violations"]
    for kind, group in sorted(by_kind.items(), key=lambda item: -len(item[1])):
        lines.append(f"  {kind}: {len(group)}")
        lines.extend("    " + str(violation).replace("\n", "\n    ") for violation in group[:examples])
    return "\n".join(lines)

"""Coalescing: many concurrent callers, few database round trips.

`ReadCoalescer` answers every disk lookup that arrives while a query is in flight with the
next single `IN (...)` query. `GroupCommitter` runs every write submitted while a transaction
is in flight in the next transaction; each caller still returns only once its write committed.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any, Awaitable, Callable, Generic, Iterable, Sequence, TypeVar

Row = TypeVar("Row")
Op = TypeVar("Op")


class _ReadBatch:
    """Keys read by one query, and whether a write since the query began spoiled them."""

    __slots__ = ("waiters", "spoiled", "all_spoiled", "__weakref__")

    def __init__(self) -> None:
        self.waiters: list[tuple[str, asyncio.Future[Any]]] = []  # one future per caller
        self.spoiled: set[str] = set()
        self.all_spoiled = False

    def promotable(self, key: str) -> bool:
        return not (self.all_spoiled or key in self.spoiled)


class ReadCoalescer(Generic[Row]):
    """Coalesces concurrent lookups of `fetch(keys) -> {key: row}` into one call at a time.

    `load` returns the row (or None) and whether it may be copied into the memory tier: a read
    that overlapped a local write or a remote invalidation of its key may carry the old value,
    so it is answered but not promoted (`spoil` / `spoil_all` mark such reads). A batch can be
    spoiled from the moment its query starts until its last caller has looked at it: callers
    hold it, and `_live` forgets it when they are done. A batch still waiting needs no marks:
    its query will see every write committed before it starts.
    """

    def __init__(self, fetch: Callable[[Sequence[str]], Awaitable[dict[str, Row]]]):
        self._fetch = fetch
        self._live: weakref.WeakSet[_ReadBatch] = weakref.WeakSet()
        self._in_flight: _ReadBatch | None = None
        self._waiting = _ReadBatch()

    def _take_off(self, batch: _ReadBatch) -> _ReadBatch:
        """Mark `batch` as in flight: from now on, writes may spoil what it reads."""
        self._in_flight = batch
        self._live.add(batch)
        return batch

    async def load(self, key: str) -> tuple[Row | None, bool]:
        if self._in_flight is None:
            # Nothing in flight: query for this key directly, no task or future needed.
            batch = self._take_off(_ReadBatch())
            try:
                rows = await self._fetch((key,))
            finally:
                self._finish_flight()
            return rows.get(key), batch.promotable(key)
        batch = self._waiting
        future = asyncio.get_running_loop().create_future()
        batch.waiters.append((key, future))
        return await future, batch.promotable(key)

    async def load_many(self, keys: Sequence[str]) -> tuple[dict[str, Row], _ReadBatch]:
        """The rows of `keys` in one fetch of their own (beside the coalesced loads), and the
        batch whose `promotable(key)` says which may be copied into memory, by the same rule."""
        batch = _ReadBatch()
        self._live.add(batch)  # held by the caller while it promotes, then forgotten
        return await self._fetch(keys), batch

    def spoil(self, keys: Iterable[str]) -> None:
        """Mark `keys` changed for the reads in flight, so that no read promotes them. `keys` is
        iterated only when a read is in flight, so a removal can pass its rows as a generator."""
        if self._live:
            changed = set(keys)
            for batch in self._live:
                batch.spoiled |= changed

    def spoil_all(self) -> None:
        for batch in self._live:
            batch.all_spoiled = True

    def _finish_flight(self) -> None:
        if self._waiting.waiters:
            batch, self._waiting = self._waiting, _ReadBatch()
            asyncio.get_running_loop().create_task(self._run(self._take_off(batch)))
        else:
            self._in_flight = None

    async def _run(self, batch: _ReadBatch) -> None:
        try:
            rows = await self._fetch(list({key: None for key, _ in batch.waiters}))
        except asyncio.CancelledError:
            for _, future in batch.waiters:
                future.cancel()
            raise
        except Exception as error:
            for _, future in batch.waiters:
                if not future.done():  # a cancelled caller's future is done
                    future.set_exception(error)
        else:
            for key, future in batch.waiters:
                if not future.done():
                    future.set_result(rows.get(key))
        finally:
            self._finish_flight()


class _Pending(Generic[Op]):
    __slots__ = ("op", "future", "after_commit")

    def __init__(self, op: Op, future: asyncio.Future[Any], after_commit: Callable[[Any], Any] | None):
        self.op = op
        self.future = future
        self.after_commit = after_commit


class GroupCommitter(Generic[Op]):
    """Runs submitted write ops in shared transactions: `apply(ops) -> results`, one per op.

    `after_commit(result)` runs right after the commit, in submission order, before the caller
    resumes: memory-tier updates happen in exactly the order the writes committed, even if the
    caller was cancelled meanwhile. An exception in one `after_commit` fails that caller only.

    A failed transaction fails only the op that caused it: when `alone_may_pass(error)` says the
    error could be one op's (a value the driver cannot bind, not a lock or a full disk), every op
    of the batch is tried again in a transaction of its own, in order.

    `apply_now(ops) -> results | None`, if given, is the fast path: a batch that finds nothing in
    flight is committed at the end of the current loop iteration (every write submitted in that
    iteration shares it) by its first writer's own task, on the loop's own thread (`_lead`);
    `apply_now` returns None, having changed nothing, when the batch must wait, and then a task
    runs it through `apply`.
    """

    def __init__(
        self,
        apply: Callable[[list[Op]], Awaitable[list[Any]]],
        alone_may_pass: Callable[[Exception], bool] = lambda error: True,
        apply_now: Callable[[list[Op]], list[Any] | None] | None = None,
    ):
        self._apply = apply
        self._alone_may_pass = alone_may_pass
        self._apply_now = apply_now
        self._queue: list[_Pending[Op]] = []
        self._task: asyncio.Task[None] | None = None
        self._now_scheduled = False

    async def submit(self, op: Op, after_commit: Callable[[Any], Any] | None = None) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append(_Pending(op, future, after_commit))
        if self._task is None and not self._now_scheduled:
            if self._apply_now is not None:
                await self._lead()
            else:
                self._start()
        return await future  # cancelling the caller cancels the future, never the write

    async def _lead(self) -> None:
        """The fast path, run by the first writer of a loop iteration in its own task: one
        yield lets every write submitted in this iteration join the batch, then the batch
        commits here. The leader needs no second turn of the loop to learn its result (its
        future is done when it awaits it); the others resume in the next turn. Cancelled
        during the yield, the leader still commits the batch: a write is never cancelled."""
        self._now_scheduled = True
        try:
            await asyncio.sleep(0)
        finally:
            self._commit_now()

    async def drain(self) -> None:
        """Wait until every submitted op has committed or failed."""
        while self._task is not None or self._now_scheduled:
            if self._task is not None:
                await asyncio.shield(self._task)
            else:
                await asyncio.sleep(0)

    def _start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def _commit_now(self) -> None:
        """The fast path: commit the queue at once, or leave it to a task."""
        self._now_scheduled = False
        if self._task is not None or not self._queue:
            return
        assert self._apply_now is not None
        batch = self._queue
        try:
            results = self._apply_now([pending.op for pending in batch])
        except Exception:  # the task runs it again through `apply`, which finds the culprit
            results = None
        if results is None:
            self._start()
            return
        self._queue = []
        for pending, result in zip(batch, results):
            _finish(pending, result)

    async def _run(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                try:
                    results = await self._apply([pending.op for pending in batch])
                except Exception as error:
                    if len(batch) > 1 and self._alone_may_pass(error):
                        for pending in batch:
                            await self._run_alone(pending)
                    else:
                        for pending in batch:
                            _fail(pending, error)
                    continue
                for pending, result in zip(batch, results):
                    _finish(pending, result)
        finally:
            self._task = None

    async def _run_alone(self, pending: _Pending[Op]) -> None:
        try:
            [result] = await self._apply([pending.op])
        except Exception as error:
            _fail(pending, error)
        else:
            _finish(pending, result)


def _finish(pending: _Pending[Any], result: Any) -> None:
    if pending.after_commit is not None:
        try:
            result = pending.after_commit(result)
        except Exception as error:
            _fail(pending, error)
            return
    if not pending.future.done():  # done: its caller was cancelled
        pending.future.set_result(result)


def _fail(pending: _Pending[Any], error: Exception) -> None:
    if not pending.future.done():
        pending.future.set_exception(error)

"""The coalescing layer on its own: read batching with spoil marks, and group commit."""

from __future__ import annotations

import asyncio

import pytest

from sqlcache._batching import GroupCommitter, ReadCoalescer


class GatedFetch:
    """A fetch that records each call's keys and answers only when the test opens the gate."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.gate = asyncio.Event()

    async def __call__(self, keys):
        self.calls.append(list(keys))
        await self.gate.wait()
        return {key: f"row:{key}" for key in keys if key != "missing"}


async def test_lookups_arriving_during_a_query_share_the_next_one():
    fetch = GatedFetch()
    reader = ReadCoalescer(fetch)
    loads = [asyncio.ensure_future(reader.load(key)) for key in ["a", "b", "c", "b", "missing"]]
    await asyncio.sleep(0)
    fetch.gate.set()
    results = await asyncio.gather(*loads)
    assert fetch.calls == [["a"], ["b", "c", "missing"]]
    assert [row for row, _ in results] == ["row:a", "row:b", "row:c", "row:b", None]


async def test_a_write_during_a_query_spoils_only_its_key_and_only_reads_in_flight():
    fetch = GatedFetch()
    reader = ReadCoalescer(fetch)
    in_flight = [asyncio.ensure_future(reader.load(key)) for key in ["a"]]
    await asyncio.sleep(0)
    waiting = [asyncio.ensure_future(reader.load(key)) for key in ["a", "b"]]
    await asyncio.sleep(0)
    reader.spoil(("a",))  # committed while the first query runs and before the second starts
    fetch.gate.set()
    assert await in_flight[0] == ("row:a", False)
    assert await asyncio.gather(*waiting) == [("row:a", True), ("row:b", True)]


async def test_spoil_all_marks_every_read_in_flight():
    fetch = GatedFetch()
    reader = ReadCoalescer(fetch)
    load = asyncio.ensure_future(reader.load("a"))
    await asyncio.sleep(0)
    reader.spoil_all()
    fetch.gate.set()
    assert await load == ("row:a", False)


async def test_writes_submitted_during_a_commit_share_the_next_and_apply_in_order():
    applied: list[list[str]] = []
    gate = asyncio.Event()
    memory: list[str] = []

    async def apply(ops):
        applied.append(list(ops))
        await gate.wait()
        return [op.upper() for op in ops]

    committer = GroupCommitter(apply)
    first = asyncio.ensure_future(committer.submit("a", memory.append))
    await asyncio.sleep(0)
    rest = [asyncio.ensure_future(committer.submit(op, memory.append)) for op in "bcd"]
    await asyncio.sleep(0)
    gate.set()
    assert await first is None and await asyncio.gather(*rest) == [None] * 3
    assert applied == [["a"], ["b", "c", "d"]]
    assert memory == ["A", "B", "C", "D"]  # after_commit ran in submission order


async def test_a_store_failure_fails_every_write_in_it_and_a_cancelled_caller_still_commits():
    calls = 0
    committed: list[str] = []

    async def apply(ops):
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        if "bad" in ops:
            raise RuntimeError("disk full")
        return list(ops)

    committer = GroupCommitter(apply, alone_may_pass=lambda error: False)
    cancelled = asyncio.ensure_future(committer.submit("kept", committed.append))
    await asyncio.sleep(0)
    cancelled.cancel()
    await committer.drain()
    assert committed == ["kept"] and cancelled.cancelled()
    blocker = asyncio.ensure_future(committer.submit("first"))
    await asyncio.sleep(0)
    batch = [asyncio.ensure_future(committer.submit(op)) for op in ("ok", "bad")]
    assert await blocker == "first"
    for write in batch:
        with pytest.raises(RuntimeError, match="disk full"):
            await write


async def test_one_bad_write_fails_alone_and_the_others_in_its_batch_commit():
    applied: list[list[str]] = []

    async def apply(ops):
        applied.append(list(ops))
        await asyncio.sleep(0)
        if "bad" in ops:
            raise ValueError("cannot bind")
        return [op.upper() for op in ops]

    def after_commit(result):
        if result == "BOOM":
            raise KeyError("after_commit failed")
        return result

    committer = GroupCommitter(apply)
    blocker = asyncio.ensure_future(committer.submit("first"))
    await asyncio.sleep(0)
    batch = [asyncio.ensure_future(committer.submit(op, after_commit)) for op in ("ok", "bad", "boom", "fine")]
    assert await blocker == "FIRST"
    results = await asyncio.gather(*batch, return_exceptions=True)
    assert results[0] == "OK" and results[3] == "FINE"
    assert isinstance(results[1], ValueError) and isinstance(results[2], KeyError)
    assert applied == [["first"], ["ok", "bad", "boom", "fine"], ["ok"], ["bad"], ["boom"], ["fine"]]


async def test_the_fast_path_commits_each_iterations_writes_together_even_if_its_first_writer_is_cancelled():
    batches: list[list[str]] = []

    def apply_now(ops):
        batches.append(list(ops))
        return [op.upper() for op in ops]

    async def apply(ops):
        raise AssertionError("the fast path never needed the task")

    committer = GroupCommitter(apply, apply_now=apply_now)
    writes = [asyncio.ensure_future(committer.submit(op)) for op in "abc"]
    await asyncio.sleep(0)  # the three writers start, in one iteration: the first leads
    writes[0].cancel()
    await asyncio.gather(*writes, return_exceptions=True)
    assert batches == [["a", "b", "c"]]  # the cancelled leader's write committed, with the others
    assert writes[0].cancelled() and [await write for write in writes[1:]] == ["B", "C"]
    assert await committer.submit("d") == "D"  # a lone writer commits on its own
    assert batches[-1] == ["d"]

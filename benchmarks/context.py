"""What a run carries from workload to workload: its scale, scratch space, rows and notes."""

from __future__ import annotations

import itertools
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable

from .measure import Stats
from .peers import Peer


@dataclass(frozen=True)
class Scale:
    """How much work each workload does."""

    name: str
    ops: int
    """Timed reads per measurement."""
    write_ops: int
    """Timed sets per measurement."""
    keys: int
    """Entries loaded for the hit and set workloads (the memory tier holds them all)."""
    invalidation_total: int
    """Entries in the cache when an invalidation runs."""
    invalidation_rounds: int
    rounds: int
    """Turns in which the peers of a hit or set workload take their share of the operations."""
    zipf_keys: int
    zipf_capacity: int
    zipf_ops: int
    growth_sizes: tuple[int, ...]
    growth_ops: int
    rss_entries: int
    """Entries each cache holds when its resident set is measured (target 9)."""
    coherence_changes: int
    """Changes made in another process, each timed until this process stops serving the old value."""
    concurrency: int = 64


SCALES = {
    "full": Scale("full", ops=20_000, write_ops=4_000, keys=10_000, invalidation_total=100_000, invalidation_rounds=9, rounds=5,
                  zipf_keys=20_000, zipf_capacity=2_000, zipf_ops=40_000,
                  growth_sizes=(10_000, 100_000, 1_000_000), growth_ops=2_000,
                  rss_entries=100_000, coherence_changes=50),
    "quick": Scale("quick", ops=2_000, write_ops=400, keys=500, invalidation_total=5_000, invalidation_rounds=2, rounds=3,
                   zipf_keys=3_000, zipf_capacity=300, zipf_ops=3_000,
                   growth_sizes=(4_000, 12_000), growth_ops=400,
                   rss_entries=10_000, coherence_changes=20),
    "smoke": Scale("smoke", ops=128, write_ops=64, keys=200, invalidation_total=2_000, invalidation_rounds=1, rounds=1,
                   zipf_keys=300, zipf_capacity=60, zipf_ops=400,
                   growth_sizes=(1_000, 2_000), growth_ops=32,
                   rss_entries=2_000, coherence_changes=5),
}


@dataclass
class Row:
    """One measured (or skipped) operation of one peer in one workload."""

    workload: str
    peer: str
    family: str
    op: str
    stats: Stats | None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class Context:
    """Shared by the workloads of one run: records rows and notes, hands out scratch directories."""

    def __init__(self, scale: Scale, scratch: Path, only: Iterable[str] | None = None):
        self.scale = scale
        self.scratch = scratch
        self.rows: list[Row] = []
        self.notes: dict[str, str] = {}
        self.only = set(only) if only else None
        self._serial = itertools.count()

    def usable(self, peers: Iterable[Peer]) -> list[Peer]:
        """The peers that can run here (and that `--peers` selected); a note for each other."""
        chosen = []
        for peer in peers:
            if self.only is not None and peer.family not in self.only:
                continue
            reason = peer.missing()
            if reason is None:
                chosen.append(peer)
            else:
                self.notes.setdefault(peer.family, f"{peer.family} skipped: {reason}")
        return chosen

    async def open(self, peer: Peer, workload: str) -> bool:
        """Open the peer on a fresh directory of its own; False (and a row saying why) if it fails."""
        peer.started = time.monotonic()
        try:
            await peer.open(self.scratch / f"{next(self._serial):03d}-{peer.family}")
        except Exception as error:
            self.fail(peer, workload, error)
            await self.close(peer)
            return False
        return True

    async def close(self, peer: Peer) -> None:
        """Close the peer (quietly if it is broken) and remove its directory."""
        try:
            await peer.close()
        except Exception:  # already reported, or it never opened
            pass
        if peer.directory is not None:
            shutil.rmtree(peer.directory, ignore_errors=True)
        print(f"[benchmarks]   {peer.label}: {time.monotonic() - peer.started:.1f} s", file=sys.stderr, flush=True)

    def fail(self, peer: Peer, workload: str, error: Exception) -> None:
        """Report a peer that failed in a row of `workload`: a peer's bug must not sink the run."""
        traceback.print_exc(file=sys.stderr)
        self.record(workload, peer, "(failed)", None, note=f"failed: {type(error).__name__}: {error}")

    async def for_each(self, workload: str, peers: Iterable[Peer], body: Callable[[Peer], Awaitable[None]]) -> None:
        """Run `body(peer)` for each usable peer in turn, each opened on its own directory and
        closed after; a failure is reported as a row and the next peer goes on."""
        for peer in self.usable(peers):
            if not await self.open(peer, workload):
                continue
            try:
                await body(peer)
            except Exception as error:
                self.fail(peer, workload, error)
            finally:
                await self.close(peer)

    def record(self, workload: str, peer: Peer, op: str, stats: Stats | None, note: str = "", **extra: Any) -> None:
        self.rows.append(Row(workload, peer.label, peer.family, op, stats, note, extra))

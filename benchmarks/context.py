"""What a run carries from workload to workload: its scale, scratch space, rows and notes."""

from __future__ import annotations

import contextlib
import itertools
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Iterable

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
    zipf_keys: int
    zipf_capacity: int
    zipf_ops: int
    growth_sizes: tuple[int, ...]
    growth_ops: int
    concurrency: int = 64


SCALES = {
    "full": Scale("full", ops=20_000, write_ops=4_000, keys=10_000, invalidation_total=100_000, invalidation_rounds=5,
                  zipf_keys=20_000, zipf_capacity=2_000, zipf_ops=40_000,
                  growth_sizes=(10_000, 100_000, 1_000_000), growth_ops=2_000),
    "quick": Scale("quick", ops=3_000, write_ops=640, keys=2_000, invalidation_total=20_000, invalidation_rounds=3,
                   zipf_keys=5_000, zipf_capacity=500, zipf_ops=8_000,
                   growth_sizes=(10_000, 40_000), growth_ops=500),
    "smoke": Scale("smoke", ops=128, write_ops=64, keys=200, invalidation_total=2_000, invalidation_rounds=1,
                   zipf_keys=300, zipf_capacity=60, zipf_ops=400,
                   growth_sizes=(1_000, 2_000), growth_ops=32),
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

    @contextlib.asynccontextmanager
    async def opened(self, peer: Peer, workload: str) -> AsyncIterator[Peer]:
        """The peer opened on a fresh directory of its own, closed and removed afterwards.

        A peer that fails is reported in a row of `workload` (with the error) and the run goes on.
        """
        directory = self.scratch / f"{next(self._serial):03d}-{peer.family}"
        started = time.monotonic()
        try:
            await peer.open(directory)
            try:
                yield peer
            finally:
                await peer.close()
        except Exception as error:  # a peer's bug must not sink the other peers' numbers
            traceback.print_exc(file=sys.stderr)
            self.record(workload, peer, "(failed)", None, note=f"failed: {type(error).__name__}: {error}")
        finally:
            shutil.rmtree(directory, ignore_errors=True)
            print(f"[benchmarks]   {peer.label}: {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)

    def record(self, workload: str, peer: Peer, op: str, stats: Stats | None, note: str = "", **extra: Any) -> None:
        self.rows.append(Row(workload, peer.label, peer.family, op, stats, note, extra))

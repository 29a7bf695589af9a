"""Writing a run down: the Markdown table, the JSON of every row, and the PNG chart."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Sequence

from .context import Row
from .measure import STALL_LIMIT_MS, Stats
from .targets import Outcome
from .workloads import Workload


def duration(ns: float) -> str:
    """A time in the unit that reads best: `812 ns`, `17.3 µs`, `4.21 ms`, `1.30 s`."""
    if ns is None or math.isnan(ns):
        return "—"
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            value = ns / scale
            return f"{value:.3g} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{ns:.0f} ns"


def rate(ops_per_s: float) -> str:
    return "—" if math.isnan(ops_per_s) else f"{ops_per_s:,.0f}"


def _baseline(rows: Sequence[Row], row: Row) -> Row | None:
    """The sqlcache row this row is compared with: the first sqlcache row of the same operation."""
    for other in rows:
        if other.workload == row.workload and other.op == row.op and other.family == "sqlcache" and other.stats:
            return other
    return None


def _speedup(rows: Sequence[Row], row: Row) -> str:
    """How many times faster sqlcache is than this row (below 1: slower)."""
    base = _baseline(rows, row)
    if base is None or row.stats is None or base is row:
        return "—"
    return f"{row.stats.cost_ns / base.stats.cost_ns:.2f}×"


def _notes(row: Row) -> str:
    parts = [row.note] if row.note else []
    if "hit_rate" in row.extra:
        parts.append(f"hit rate {row.extra['hit_rate']:.1%}")
    if row.extra.get("removed") is not None:
        parts.append(f"removed {row.extra['removed']:,}")
    if "worst_ns" in row.extra and row.stats:
        parts.append(f"worst {duration(row.extra['worst_ns'])} of {row.stats.count} changes")
    return "; ".join(parts)


def mebibytes(count: float) -> str:
    return f"{count / 2**20:,.1f} MiB"


def held_bytes(row: Row) -> int:
    """Resident bytes a cache added while it was filled (see `child.rss`)."""
    return row.extra["after"] - row.extra["before"]


def _memory_table(rows: Sequence[Row]) -> list[str]:
    """Rows of resident memory (the `memory_rss` workload) rather than of times."""
    lines = [
        "| peer | entries | resident before | resident after | held | per entry | ratio to the first row | notes |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    measured = [row for row in rows if "after" in row.extra]
    first = held_bytes(measured[0]) if measured else 0
    for row in rows:
        if "after" not in row.extra:
            lines.append(f"| {row.peer} | — | — | — | — | — | — | {_notes(row)} |")
            continue
        held, entries = held_bytes(row), row.extra["entries"]
        ratio = f"{held / first:.2f}×" if first else "—"
        lines.append(
            f"| {row.peer} | {entries:,} | {mebibytes(row.extra['before'])} | {mebibytes(row.extra['after'])} | "
            f"{mebibytes(held)} | {held / entries:,.0f} B | {ratio} | filled in {row.extra['fill_seconds']:.1f} s |"
        )
    return lines


def _stall(stats: Stats) -> str:
    shown = f"{stats.stall_ms:.2f} ms"
    return shown + (f" ({stats.preempted_stall_ms:.1f})" if stats.preempted_stall_ms > stats.stall_ms else "")


def _row_line(rows: Sequence[Row], row: Row) -> str:
    stats = row.stats
    if stats is None:
        cells = [row.peer, row.op, "—", "—", "—", "—", "—", _notes(row)]
    else:
        cells = [row.peer, row.op, duration(stats.median_ns), duration(stats.p99_ns), rate(stats.ops_per_s),
                 _stall(stats), _speedup(rows, row), _notes(row)]
    return "| " + " | ".join(cells) + " |"


def workload_table(rows: Sequence[Row], workload: Workload) -> list[str]:
    mine = [row for row in rows if row.workload == workload.name]
    lines = [f"### {workload.title} (`{workload.name}`)", "", workload.description, ""]
    if not mine:
        return lines + ["Not run.", ""]
    if any("after" in row.extra for row in mine):
        return lines + _memory_table(mine) + [""]
    lines += [
        "| peer | operation | median | p99 | ops/s | longest loop stall (preempted) | sqlcache faster by | notes |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    lines += [_row_line(rows, row) for row in mine]
    return lines + [""]


def targets_table(outcomes: Sequence[Outcome]) -> list[str]:
    lines = ["| # | target | measured | met? |", "| --- | --- | ---: | --- |"]
    for outcome in outcomes:
        met = {True: "yes", False: "**no**", None: "not measured"}[outcome.met]
        lines.append(f"| {outcome.number} | {outcome.target} | {outcome.measured} | {met} |")
    return lines + [""]


def stall_table(rows: Sequence[Row], workloads: Sequence[Workload]) -> list[str]:
    """The longest stall sqlcache caused in each workload, beside the worst peer's."""
    lines = [
        "### Event-loop blocking (`event_loop_stall`)", "",
        "Longest lateness of a 1 ms heartbeat task during each workload's timed operations, less the time "
        f"the loop's thread waited for a CPU in that beat (target: sqlcache never above {STALL_LIMIT_MS:g} ms). "
        "The raw lateness of beats that waited for a CPU (other load on the machine) is in brackets in the "
        "tables.", "",
        "| workload | sqlcache: longest | sqlcache: beats over the limit | worst peer: longest |",
        "| --- | ---: | ---: | --- |",
    ]
    for workload in workloads:
        measured = [row for row in rows if row.workload == workload.name and row.stats]
        mine = [row.stats for row in measured if row.family == "sqlcache"]
        others = [row for row in measured if row.family != "sqlcache"]
        if not measured:
            continue
        worst = max(others, key=lambda row: row.stats.stall_ms, default=None)
        peer = f"{worst.stats.stall_ms:.2f} ms ({worst.peer})" if worst else "—"
        longest = f"{max(stats.stall_ms for stats in mine):.2f} ms" if mine else "—"
        over = f"{sum(s.beats_over_limit for s in mine)} of {sum(s.beats for s in mine):,}" if mine else "—"
        lines.append(f"| {workload.name} | {longest} | {over} | {peer} |")
    return lines + [""]


def markdown(meta: dict[str, Any], rows: Sequence[Row], outcomes: Sequence[Outcome], workloads: Sequence[Workload],
             notes: Sequence[str]) -> str:
    lines = [
        "## Results",
        "",
        f"Made by `{meta['command']}` on {meta['date']} ({meta['machine']}), scale `{meta['scale']}`, "
        f"in {meta['seconds']:.0f} s. Value: a {meta['value_bytes']}-byte JSON dict of 10 OHLCV candles. "
        f"Versions: {meta['versions']}.",
        "",
        "Median and p99 are of single operations; ops/s is operations over wall time (all callers). "
        "\"sqlcache faster by\" is this row's time per operation over sqlcache's (the median for one caller; "
        "wall time per operation for 64 callers and for the Zipf mix): above 1× sqlcache is faster.",
        "",
        "### Targets",
        "",
        *targets_table(outcomes),
    ]
    for workload in workloads:
        lines += workload_table(rows, workload)
    lines += stall_table(rows, workloads)
    if notes:
        lines += ["### Notes", "", *[f"- {note}" for note in notes], ""]
    return "\n".join(lines)


def to_json(meta: dict[str, Any], rows: Sequence[Row], outcomes: Sequence[Outcome]) -> str:
    return json.dumps(
        {
            "meta": meta,
            "targets": [dataclasses.asdict(outcome) for outcome in outcomes],
            "rows": [dataclasses.asdict(row) for row in rows],
        },
        indent=1,
        default=str,
    )


def chart(rows: Sequence[Row], workloads: Sequence[Workload], path: Path) -> str | None:
    """Draw one panel per workload (time per operation, log scale); None, or why it was skipped."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "chart skipped: matplotlib is not installed (pip install -e \".[bench]\")"
    panels = [wl for wl in workloads if any(row.workload == wl.name and row.stats for row in rows)]
    columns = 2
    height = [max(2.0, 0.28 * sum(r.workload == wl.name for r in rows) + 1.0) for wl in panels]
    figure, axes = plt.subplots(
        math.ceil(len(panels) / columns), columns, figsize=(16, sum(height[::columns]) + 1), squeeze=False
    )
    for axis, workload in zip(axes.flat, panels):
        _panel(axis, [row for row in rows if row.workload == workload.name and row.stats], workload.title)
    for axis in list(axes.flat)[len(panels):]:
        axis.set_visible(False)
    figure.suptitle("sqlcache and peers: time per operation (log scale; shorter is faster)")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return None


def _panel(axis: Any, rows: Sequence[Row], title: str) -> None:
    labels = [f"{row.peer} · {row.op}" for row in rows]
    values = [row.stats.cost_ns / 1e3 for row in rows]
    colours = ["tab:orange" if row.family == "sqlcache" else "tab:blue" for row in rows]
    positions = range(len(rows))
    axis.barh(positions, values, color=colours)
    axis.set_yticks(list(positions), labels, fontsize=7)
    axis.invert_yaxis()
    axis.set_xscale("log")
    axis.set_xlabel("µs per operation", fontsize=8)
    axis.set_title(title, fontsize=9)

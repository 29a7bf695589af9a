"""`python -m benchmarks [--quick | --smoke]`: run every workload on sqlcache and the peers.

Writes `<out>/latest.md`, `latest.json` and `latest.png` (default `benchmarks/results/`).
Peers that are not installed are skipped with a note; so is Redis when no `redis-server`
binary is on the PATH, and PostgreSQL when no server can be started (`pg_server`). Nothing here
asserts a time: the targets are reported, not enforced.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import importlib.util
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from . import data, measure, report, targets
from .context import SCALES, Context
from .peers import OnPostgres, RedisPeer
from .pg_server import PostgresCluster
from .redis_server import RedisServer
from .workloads import WORKLOADS

RESULTS = Path(__file__).resolve().parent / "results"
LIBRARIES = ("sqlcache", "aiosqlite", "cachetools", "orjson", "diskcache", "cashews", "aiocache", "redis", "asyncpg",
             "pgserver")
POSTGRES_WORKLOAD = "postgresql"
POSTGRES_FAMILIES = {"sqlcache", "asyncpg"}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", const="quick", dest="scale", help="a run under two minutes")
    size.add_argument("--smoke", action="store_const", const="smoke", dest="scale", help="a few seconds (CI)")
    parser.set_defaults(scale="full")
    parser.add_argument("--only", action="append", metavar="WORKLOAD",
                        choices=[w.name for w in WORKLOADS if w.run is not None], help="run only these workloads")
    parser.add_argument("--peers", action="append", metavar="FAMILY",
                        help="run only these peer families (sqlcache, diskcache, cachetools, cashews, aiocache, "
                             "redis, sqlite3, aiosqlite, asyncpg)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for latest.md/.json/.png")
    return parser.parse_args(argv)


def _versions() -> str:
    found = []
    for name in LIBRARIES:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return ", ".join(found)


def _machine() -> str:
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


async def _run_workloads(ctx: Context, names: set[str] | None) -> None:
    for workload in WORKLOADS:
        if workload.run is None or (names and workload.name not in names):
            continue
        started, cpu = time.monotonic(), time.process_time()
        print(f"[benchmarks] {workload.name} ...", file=sys.stderr, flush=True)
        try:
            await workload.run(ctx)
        finally:
            measure.thaw_heap()
        print(f"[benchmarks] {workload.name} done in {time.monotonic() - started:.1f} s "
              f"({time.process_time() - cpu:.1f} s of CPU in this process)", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> Path:
    """Run the selected workloads and write the results; returns the Markdown file."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sqlcache-bench-") as scratch:
        ctx = Context(SCALES[args.scale], Path(scratch), only=args.peers)
        wanted = importlib.util.find_spec("redis") is not None and (not args.peers or "redis" in args.peers)
        with RedisServer(Path(scratch) / "redis", enabled=wanted) as server, \
                PostgresCluster(enabled=_wants_postgres(args)) as cluster:
            RedisPeer.address = server.address
            OnPostgres.cluster = cluster if cluster.server is not None else None
            try:
                asyncio.run(_run_workloads(ctx, set(args.only or ())))
            finally:
                RedisPeer.address = OnPostgres.cluster = None
    meta = {
        "command": " ".join(["python -m benchmarks", *_argv(args)]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": _machine(),
        "scale": args.scale,
        "seconds": time.monotonic() - started,
        "value_bytes": data.sample_size(),
        "versions": _versions(),
    }
    outcomes = targets.evaluate(ctx.rows)
    notes = [*ctx.notes.values(), server.note, cluster.note]  # a skipped peer points at its server's note
    args.out.mkdir(parents=True, exist_ok=True)
    chart_note = report.chart(ctx.rows, WORKLOADS, args.out / "latest.png")
    if chart_note:
        notes.append(chart_note)
    markdown = report.markdown(meta, ctx.rows, outcomes, WORKLOADS, [note for note in notes if note])
    (args.out / "latest.md").write_text(markdown + "\n", encoding="utf-8")
    (args.out / "latest.json").write_text(report.to_json(meta, ctx.rows, outcomes) + "\n", encoding="utf-8")
    return args.out / "latest.md"


def _wants_postgres(args: argparse.Namespace) -> bool:
    """Whether this run has PostgreSQL rows to measure (the server takes a few seconds to start)."""
    workload = not args.only or POSTGRES_WORKLOAD in args.only
    families = not args.peers or bool(POSTGRES_FAMILIES & set(args.peers))
    return workload and families


def _argv(args: argparse.Namespace) -> list[str]:
    """The options of this run, spelled as on the command line (for the report's header)."""
    argv = [] if args.scale == "full" else [f"--{args.scale}"]
    argv += [f"--only={name}" for name in args.only or ()]
    argv += [f"--peers={family}" for family in args.peers or ()]
    return argv


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    path = run(args)
    print(path.read_text(encoding="utf-8").split("### Targets", 1)[1].split("###", 1)[0].strip())
    print(f"\nwritten: {path}, {path.with_suffix('.json')}, {path.with_suffix('.png')}")
    return 0

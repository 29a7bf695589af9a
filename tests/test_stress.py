"""The test that hunts: four real processes of random load on one cache directory, one killed with
SIGKILL and restarted midway, every operation logged, and `history.py` proving from the logs that
nothing stale was read and nothing acknowledged was lost (issue 10, DESIGN.md "Several processes").
The same again on one PostgreSQL database, the processes as four hosts with a directory each
(issue 12, DESIGN.md "Many hosts").

Phase 1 evicts and expires all the time (a tiny `disk_max_size`, 16 memory slots, TTLs of 0.5 s):
misses are legal, stale, foreign, torn and expired values are not, and the final disk must hold
no value a later op replaced. Phase 2 never evicts or expires: there a miss of an acknowledged
value, or an acknowledged set of the killed worker missing at the end, is a loss.

Default: about 10 + 3 s of load on SQLite and 5 + 3 s on PostgreSQL (CI). `python -m pytest
tests/test_stress.py --stress-minutes 5` runs phase 1 for 5 minutes (a kill every 30 s) and phase 2
for a minute, on each store.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

import stress_worker
from history import DiskEntry, Op, Violation, check_final_state, check_history, load_history, summarize, value_id
from pg_server import disk_rows
from sqlcache._postgres import from_db

WORKER = str(Path(__file__).with_name("stress_worker.py"))
PROCESSES = 4

pytestmark = pytest.mark.stress


# Seconds of load of phase 1 and phase 2 in a CI run, by store: PostgreSQL's run is shorter, to
# keep the suite's time (it runs the same workload, at about the same rate of ops).
CI_SECONDS = {"sqlite": (10.0, 3.0), "postgresql": (5.0, 3.0)}


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request) -> str | None:
    """The disk tier of the workers: None for one SQLite directory, else a PostgreSQL database's URL."""
    return None if request.param == "sqlite" else request.getfixturevalue("pg_url")


@pytest.fixture
def load_seconds(request, store: str | None) -> tuple[float, float]:
    """Seconds of load of phase 1 and phase 2."""
    minutes = request.config.getoption("--stress-minutes")
    if minutes is None:
        return CI_SECONDS["sqlite" if store is None else "postgresql"]
    return minutes * 60, max(3.0, min(minutes * 12, 60.0))


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def _start(directory: Path, url: str | None, history: Path, name: str, until: float, phase: int) -> subprocess.Popen:
    """A worker on the shared directory, or on PostgreSQL as a host with a directory of its own."""
    own = [str(directory)] if url is None else [str(directory / name)]
    args = ["run", *own, str(history), name, repr(until), "stress", str(phase), *([url] if url else [])]
    with open(history.with_suffix(".err"), "w") as stderr:
        return subprocess.Popen([sys.executable, WORKER, *args], env=_env(), stderr=stderr)


def run_load(tmp_path: Path, url: str | None, phase: int, seconds: float, kills: int) -> tuple[Path, list[Op], list[str]]:
    """Run the workers for `seconds`, SIGKILL one and start a replacement `kills` times, evenly
    spread; the cache directory, the merged history and the names of the killed workers."""
    directory = tmp_path / f"cache{phase}"
    logs = tmp_path / f"history{phase}"
    logs.mkdir()
    until = time.time() + 1.0 + seconds  # about a second to start the interpreters
    workers = {f"w{i}": _start(directory, url, logs / f"w{i}.jsonl", f"w{i}", until, phase) for i in range(PROCESSES)}
    killed = []
    for k in range(kills):
        time.sleep(max(0.0, until - seconds * (1 - (k + 1) / (kills + 1)) - time.time()))
        name = sorted(workers)[k % PROCESSES]
        _wait_for_an_acknowledged_set(logs / f"{name}.jsonl")
        victim = workers.pop(name)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        killed.append(name)
        fresh = f"{name}r{k}"
        workers[fresh] = _start(directory, url, logs / f"{fresh}.jsonl", fresh, until, phase)
    for name, worker in workers.items():
        code = worker.wait(timeout=seconds + 120)
        assert code == 0, f"worker {name} exited with {code}: {(logs / f'{name}.err').read_text()[-3000:]}"
    return directory, load_history(sorted(logs.glob("*.jsonl"))), killed


def _wait_for_an_acknowledged_set(history: Path, patience: float = 30.0) -> None:
    """On a loaded machine an interpreter can take seconds to start: kill a worker only once it
    has acknowledged a DISK/ALL set, so the kill always has something to lose."""
    deadline = time.time() + patience
    while time.time() < deadline:
        if history.exists() and any(op.kind == "set" and op.ok and op.level != "memory" for op in load_history([history])):
            return
        time.sleep(0.05)


def final_state(directory: Path, url: str | None, phase: int) -> tuple[list[DiskEntry], dict[str, int], dict, float]:
    """The `cache_entries` and `cache_tags` views (through sqlite3, or asyncpg), and what a fresh
    process reads."""
    now = time.time()
    where = {"disk_cache_dir": str(directory), **({"disk_cache_url": url} if url else {})}
    # Every disk entry with its value, tags and expiry; the tag index as the debugging view shows it.
    rows = asyncio.run(disk_rows(where, "SELECT key, value_json, tags, expires_at FROM cache_entries"))
    tags = asyncio.run(disk_rows(where, "SELECT tag, entries FROM cache_tags"))
    text = (lambda stored: stored) if url is None else from_db  # PostgreSQL's keys and tags: NUL escaped
    entries = [
        DiskEntry(text(key), *(value_id(json.loads(value)) if value is not None else (None, "<not JSON>")),
                  tuple(json.loads(tags)), _epoch(expires))
        for key, value, tags, expires in rows
    ]
    tag_index = {text(tag): count for tag, count in tags}
    own = directory if url is None else directory / "fresh"  # on PostgreSQL, a new host
    dumped = subprocess.run([sys.executable, WORKER, "dump", str(own), str(phase), *([url] if url else [])],
                            env=_env(), capture_output=True, text=True, timeout=60)
    assert dumped.returncode == 0, dumped.stderr[-3000:]
    views = {way: {key: tuple(seen) for key, seen in view.items()} for way, view in json.loads(dumped.stdout).items()}
    return entries, tag_index, views, now


def _epoch(iso: str | None) -> float | None:
    """Epoch seconds of the views' ISO-8601 UTC text (`2026-01-31T12:00:00.000Z`)."""
    return None if iso is None else datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def sqlcache_check(directory: Path, url: str | None) -> list[Violation]:
    where = ["--dir", str(directory)] if url is None else ["--url", url]
    checked = subprocess.run([sys.executable, "-m", "sqlcache", "check", *where], env=_env(),
                             capture_output=True, text=True, timeout=60)
    if checked.returncode == 0:
        return []
    return [Violation("sqlcache-check", f"exit {checked.returncode}: {(checked.stdout + checked.stderr)[-2000:]}")]


def hunt(tmp_path: Path, url: str | None, phase: int, seconds: float, kills: int) -> tuple[list[Op], list[str], list[Violation]]:
    directory, ops, killed = run_load(tmp_path, url, phase, seconds, kills)
    evicts = phase == 1
    violations = check_history(ops, sync_interval=stress_worker.SYNC_INTERVAL,
                               default_ttl=stress_worker.DEFAULT_TTL[phase], evicts=evicts)
    entries, tag_index, views, now = final_state(directory, url, phase)
    violations += check_final_state(ops, entries, now=now, evicts=evicts, tag_index=tag_index, views=views)
    violations += sqlcache_check(directory, url)
    kinds = Counter(op.kind for op in ops)
    reads = sum(1 for op in ops if op.kind in ("get", "get_or_set") and op.got is not None)
    print(f"phase {phase} on {'SQLite' if url is None else 'PostgreSQL'}: {len(ops)} ops {dict(kinds)}, "
          f"{reads} reads returned a value, {len(entries)} entries at the end, killed {killed}")
    print(summarize(violations, examples=2))
    return ops, killed, violations


def _sanity(ops: list[Op], killed: list[str], seconds: float) -> None:
    """The load really ran: enough of every kind of op, in every worker, the killed ones too."""
    kinds = Counter(op.kind for op in ops if op.ok)
    assert all(kinds[kind] >= seconds for kind in ("set", "get", "delete", "get_or_set", "load", "tag", "pattern"))
    assert sum(1 for op in ops if op.kind == "get" and op.got is not None) >= 10 * seconds
    for name in killed:
        assert any(op.proc == name and op.kind == "set" and op.ok and op.level != "memory" for op in ops)


def test_no_stale_torn_or_expired_read_under_eviction_kill_and_restart(tmp_path, store, load_seconds):
    seconds = load_seconds[0]
    ops, killed, violations = hunt(tmp_path, store, 1, seconds, kills=max(1, int(seconds // 30)))
    _sanity(ops, killed, seconds)
    if violations:
        pytest.fail(summarize(violations, examples=3), pytrace=False)


def test_nothing_acknowledged_is_lost_without_eviction(tmp_path, store, load_seconds):
    seconds = load_seconds[1]
    ops, killed, violations = hunt(tmp_path, store, 2, seconds, kills=1)
    _sanity(ops, killed, seconds)
    if violations:
        pytest.fail(summarize(violations, examples=3), pytrace=False)

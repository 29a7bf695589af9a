"""`sqlcache demo` runs to completion in a subprocess, and the commands it prints work."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shlex
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

from sqlcache import CacheManager
from test_cli import REPO, assert_clean_failure, cli_env, data_digests, digests, rows, sqlcache


def test_demo_runs_and_its_printed_commands_work(tmp_path: Path) -> None:
    started = time.monotonic()
    result = sqlcache("demo", "--dir", "out", "--duration", "2.5", "--agents", "5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 30
    out = result.stdout
    assert "market-data API on http://127.0.0.1:" in out
    assert re.search(r"^\s+1\.0s  cycles\s+\d+  hit rate", out, re.MULTILINE)  # progress lines
    assert "market event: invalidated tag 'BTC'" in out

    cycles = int(re.search(r"5 agents ran (\d+) cycles", out).group(1))
    saved, of, calls, by_agents, by_preloader = map(int, re.search(
        r"HTTP calls saved\s+(-?\d+) of (\d+): .* got (\d+) calls \((\d+) from agents, (\d+) from the preloader\)", out
    ).groups())
    assert of == cycles and saved == cycles - calls and calls == by_agents + by_preloader
    assert by_agents >= 5 and by_preloader >= 3  # every agent's first miss; each preload task once
    assert saved > cycles / 2
    for label in ("memory hit rate", "disk hit rate", "combined hit rate"):
        assert re.search(rf"{label}\s+\d+\.\d%", out)
    assert re.search(r"preload task market_data_luna_1m: \d+ runs, \d+ errors, last error: .*HTTP 404", out)

    commands = re.findall(r"^  (sqlcache .*|sqlite3 .*)$", out, re.MULTILINE)
    assert any(" stats" in command for command in commands) and any(" tasks" in command for command in commands)
    for command in commands:
        program, *args = shlex.split(command)
        if program == "sqlcache":
            ran = sqlcache(*args, cwd=tmp_path)
            assert ran.returncode == 0, (command, ran.stderr)
        else:  # the sqlite3 shell may not be installed: run its SQL with the stdlib
            path, sql = args
            with contextlib.closing(sqlite3.connect(tmp_path / path)) as connection:
                assert connection.execute(sql).fetchall(), command


def test_demo_refuses_a_directory_holding_another_cache(tmp_path: Path) -> None:
    asyncio.run(fill_entries(tmp_path / "mine", 50))
    before = digests(tmp_path / "mine")
    for where in ("mine", "."):  # a real cache; a directory with other things in it
        refused = sqlcache("demo", "--dir", where, "--duration", "0.3", cwd=tmp_path)
        assert_clean_failure(refused, 2, "nothing was changed")
        assert len(refused.stderr.splitlines()) == 1 and refused.stdout == ""
    assert digests(tmp_path / "mine") == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["mine"]


def test_demo_resets_only_its_own_idle_directory(tmp_path: Path) -> None:
    first = sqlcache("demo", "--dir", "out", "--duration", "0.3", "--agents", "1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    out = tmp_path / "out"
    assert stat.S_IMODE(out.stat().st_mode) == 0o700

    # Another process has the demo's cache open: the demo leaves it alone.
    holder = subprocess.Popen([sys.executable, "-c", HOLD_OPEN, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        before = data_digests(out)  # the holder's own reads may touch the -shm index
        busy = sqlcache("demo", "--dir", "out", "--duration", "0.3", cwd=tmp_path)
        assert_clean_failure(busy, 4, "open in another process")
        assert data_digests(out) == before
    finally:
        holder.send_signal(signal.SIGTERM)
        holder.wait(timeout=30)

    again = sqlcache("demo", "--dir", "out", "--duration", "0.3", "--agents", "1", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert rows(out / "sqlcache.db", "SELECT count(*) FROM entries WHERE key = ?", ("mine:1",)) == [(0,)]

    # A key the demo never writes means someone else uses the file now: refused.
    asyncio.run(fill_entries(out, 1))
    before = data_digests(out)  # reading the keys may touch the -shm index, never the data
    assert_clean_failure(sqlcache("demo", "--dir", "out", "--duration", "0.3", cwd=tmp_path), 2, "nothing was changed")
    assert data_digests(out) == before


def test_demo_says_a_task_fails_on_purpose_and_ctrl_c_still_summarises(tmp_path: Path) -> None:
    demo = subprocess.Popen([sys.executable, "-m", "sqlcache", "demo", "--dir", "out", "--duration", "60"],
                            cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        head = [demo.stdout.readline() for _ in range(3)]
        assert any("fails on purpose" in line for line in head), head
        while not re.match(r"^\s+1\.0s  cycles", demo.stdout.readline()):
            assert demo.poll() is None
        demo.send_signal(signal.SIGINT)
        rest, errors = demo.communicate(timeout=30)
    finally:
        demo.kill()
    assert demo.returncode == 130, errors
    assert "Traceback" not in errors
    assert re.search(r"^Interrupted after \d+\.\d s \(Ctrl-C\): \d+ agents ran \d+ cycles\.$", rest, re.MULTILINE)
    assert "Look inside the cache file it wrote:" in rest
    checked = sqlcache("--dir", "out", "check", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout


def test_the_default_demo_directory_is_ignored_by_git() -> None:
    from sqlcache._demo import DEFAULT_DIR

    assert f"{DEFAULT_DIR}/" in (REPO / ".gitignore").read_text().splitlines()


# A process with the cache open that writes nothing while it waits (no reads to record, no purge).
HOLD_OPEN = """
import asyncio, sys
from sqlcache import CacheManager

async def main():
    async with CacheManager({"disk_cache_dir": sys.argv[1], "purge_interval": 0}):
        print("open", flush=True)
        await asyncio.sleep(60)

asyncio.run(main())
"""


async def fill_entries(directory: Path, count: int) -> None:
    async with CacheManager({"disk_cache_dir": directory}) as cache:
        for i in range(1, count + 1):
            await cache.set(f"mine:{i}", {"n": i}, 3600, tags=["mine"])

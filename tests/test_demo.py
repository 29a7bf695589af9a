"""`sqlcache demo` runs to completion in a subprocess, and the commands it prints work."""

from __future__ import annotations

import contextlib
import re
import shlex
import sqlite3
import time
from pathlib import Path

from test_cli import sqlcache


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
